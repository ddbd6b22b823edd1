"""RetryPolicy, the copies txmq sends on and compensation ids: pure functions, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from txmq.consumer import Reject, RetryPolicy, attempt_of, compensation_id, inbox_key
from txmq.consumer.compensation import Compensation, compensation_event, compensation_topic
from txmq.errors import ConfigurationError, MessageDecodeError
from txmq.message import Message
from txmq.wire import dead_letter_copy, error_text, raw_dead_letter, replay_copy, retry_copy


def test_default_max_attempts_is_one_more_than_the_delays() -> None:
    policy = RetryPolicy(delays=(1, 5, 30))
    assert policy.max_attempts == 4
    assert [policy.is_final(RuntimeError(), n) for n in (1, 2, 3, 4)] == [False] * 3 + [True]
    assert [policy.delay(n) for n in (1, 2, 3)] == [1.0, 5.0, 30.0]


def test_last_delay_repeats_when_more_attempts_than_delays() -> None:
    policy = RetryPolicy(delays=(1, 2), max_attempts=5)
    assert [policy.stage(n) for n in (1, 2, 3, 4)] == [1, 2, 2, 2]
    assert policy.delay(4) == 2.0


def test_non_retryable_types_reject_and_decode_errors_are_final_at_once() -> None:
    policy = RetryPolicy(delays=(1,), retryable=(Exception,), non_retryable=(ValueError,))
    assert policy.is_final(ValueError(), 1)
    assert policy.is_final(Reject("no"), 1)
    assert policy.is_final(MessageDecodeError("bad"), 1)
    assert not policy.is_final(KeyError(), 1)


def test_errors_outside_retryable_are_final() -> None:
    assert RetryPolicy(delays=(1,), retryable=(TimeoutError,)).is_final(KeyError(), 1)


def test_best_effort_gives_up_after_n_attempts() -> None:
    policy = RetryPolicy.best_effort(attempts=3, delay=2)
    assert policy.delays == (2.0, 2.0)
    assert policy.max_attempts == 3
    assert RetryPolicy.best_effort(attempts=1).delays == ()
    assert RetryPolicy.no_retry().is_final(RuntimeError(), 1)


@pytest.mark.parametrize(
    "kwargs", [{"delays": (0,)}, {"delays": (), "max_attempts": 3}, {"max_attempts": -1}]
)
def test_bad_policies_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_retry_copy_keeps_the_id_and_carries_the_next_attempt_and_due_time() -> None:
    m = Message("orders.created", b"x", key="k", headers={"app": "1"})
    first = retry_copy(m, error_type="E", error_message="boom", attempt=1, delay=5, now=100.0)
    assert (first.id, first.topic, first.key, first.body) == (m.id, m.topic, "k", b"x")
    assert attempt_of(first) == 2
    assert first.headers["x-txmq-due-at"] == "105.000"
    assert first.headers["x-txmq-first-failure-at"] == "100.000"
    second = retry_copy(first, error_type="E", error_message="b", attempt=2, delay=5, now=110.0)
    assert second.headers["x-txmq-first-failure-at"] == "100.000"
    assert second.headers["x-txmq-last-failure-at"] == "110.000"
    assert second.headers["app"] == "1"


def test_dead_letter_copy_records_why_and_replay_gets_a_new_inbox_key() -> None:
    m = Message("orders.created", b"x", headers={"x-txmq-due-at": "1"})
    dead = dead_letter_copy(
        m, group="cart", error_type="ValueError", error_message="bad", attempt=3, now=5.0
    )
    assert dead.headers["x-txmq-error-type"] == "ValueError"
    assert dead.headers["x-txmq-topic"] == "orders.created"
    assert dead.headers["x-txmq-attempt"] == "3"
    assert "x-txmq-due-at" not in dead.headers
    replayed = replay_copy(dead)
    assert replayed.id == m.id
    assert inbox_key(m) == m.id
    assert inbox_key(replayed) == f"{m.id}#replay-1"
    assert inbox_key(replay_copy(replayed)) == f"{m.id}#replay-2"
    assert attempt_of(replayed) == 1
    assert "x-txmq-error-type" not in replayed.headers


def test_raw_dead_letter_keeps_body_and_headers_and_gets_a_fresh_id() -> None:
    wrapped = raw_dead_letter(
        topic="t",
        group="g",
        body=b"\xff\x00",
        headers={"x-txmq-id": "", "content-type": "weird"},
        reason="no id",
        error_type="MessageDecodeError",
        now=1.0,
    )
    assert wrapped.body == b"\xff\x00"
    assert wrapped.headers["content-type"] == "weird"
    assert wrapped.headers["x-txmq-raw-id"] == ""
    assert wrapped.id


def test_error_text_is_redacted_and_truncated() -> None:
    text = error_text(RuntimeError("cannot reach amqp://bob:hunter2@h/ " + "x" * 1000))
    assert "hunter2" not in text
    assert len(text) == 500


def test_compensation_event_has_a_deterministic_id_and_goes_to_the_producer_group() -> None:
    m = Message("transfers", b"{}", headers={"x-txmq-producer-group": "bank", "note": "n"})
    event = compensation_event(m, "credit", "ValueError", "no account")
    assert event is not None
    other = compensation_event(m, "other", "E", "")
    assert other is not None
    assert event.id == compensation_id(m.id) == other.id
    assert event.topic == compensation_topic("bank") == "bank.compensation"
    parsed = Compensation.from_message(event)
    assert (parsed.original_id, parsed.original_topic, parsed.body) == (m.id, "transfers", b"{}")
    assert parsed.headers == {"note": "n"}
    assert parsed.consumer_group == "credit"
    assert compensation_event(Message("t", b""), "g", "E", "") is None


def test_inbox_without_on_conflict_reads_a_unique_violation_as_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path for databases without ON CONFLICT (MySQL...), run on SQLite by pretending."""
    from sqlalchemy import MetaData, create_engine

    from txmq.consumer.inbox import Inbox
    from txmq.sql import dialect
    from txmq.sql.tables import make_inbox_table

    engine = create_engine(f"sqlite:///{tmp_path / 'inbox.db'}")
    table = make_inbox_table(MetaData())
    table.create(engine)
    inbox = Inbox(table, "g")
    # As if the dialect had no ON CONFLICT: the generic strategy.
    monkeypatch.setattr(dialect, "dialect_of", lambda _: dialect.SqlDialect("sqlite"))
    with engine.begin() as connection:
        assert inbox.claim(connection, "k1", "t")
        assert not inbox.claim(connection, "k1", "t")
        assert inbox.claim_many(connection, [("k1", "t"), ("k2", "t")]) == {"k2"}
    with engine.connect() as connection:
        assert set(inbox.lookup(connection, ["k1", "k2", "k3"])) == {"k1", "k2"}
