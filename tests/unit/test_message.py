"""Copies with more headers, and messages built from decoded fields: checked as the
constructor checks, and still immutable."""

from __future__ import annotations

import pytest

from txmq import InvalidMessage, Message
from txmq.message import build_message


def test_with_headers_merges_and_keeps_the_rest() -> None:
    original = Message("orders.created", b"{}", key="k", headers={"a": "1", "b": "2"})
    copy = original.with_headers(b="3", c="4")
    assert dict(copy.headers) == {"a": "1", "b": "3", "c": "4"}
    assert (copy.topic, copy.body, copy.key, copy.id) == (
        original.topic,
        original.body,
        original.key,
        original.id,
    )
    assert dict(original.headers) == {"a": "1", "b": "2"}
    with pytest.raises(TypeError):
        copy.headers["a"] = "x"  # type: ignore[index]


def test_with_headers_refuses_a_value_that_is_not_text() -> None:
    with pytest.raises(InvalidMessage, match="str to str"):
        Message("t", b"").with_headers(n=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"topic": "no spaces"}, "invalid topic"),
        ({"body": "text"}, "body must be bytes"),
        ({"key": ""}, "key must be"),
        ({"id": "x" * 65}, "id must be"),
        ({"headers": {"n": 1}}, "str to str"),
    ],
)
def test_a_built_message_is_checked_as_the_constructor_checks(
    fields: dict[str, object], complaint: str
) -> None:
    valid: dict[str, object] = {"topic": "t", "body": b"", "key": None, "headers": {}, "id": "i"}
    with pytest.raises(InvalidMessage, match=complaint):
        build_message(**{**valid, **fields})  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match=complaint):
        Message(**{**valid, **fields})  # type: ignore[arg-type]
