"""``memory://name`` URLs -> :class:`MemorySettings` for the in-process broker."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl

from txmq.config import CommonSettings, pop_common, redact
from txmq.errors import InvalidURL

SCHEMES = frozenset({"memory"})
_NAME = re.compile(r"[A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """Which in-process broker to use.

    Every adapter connected with the same ``name`` in one process shares one broker;
    ``memory://`` is the broker named ``""``. Built by :func:`txmq.parse_broker_url`.
    """

    name: str = ""
    retry_mode: Literal["ttl", "consume"] = "ttl"
    unroutable: Literal["hold", "return"] = "hold"
    common: CommonSettings = field(default_factory=CommonSettings)

    system: Literal["memory"] = "memory"

    def redacted_url(self) -> str:
        return f"memory://{self.name}"


def parse_url(url: str, scheme: str) -> MemorySettings:
    """Settings from a ``memory://name?unroutable=hold`` URL.

    Raises:
        InvalidURL: a name with other characters than letters, digits, ``._-``, or an
            unknown option.
    """
    rest = url.split("://", 1)[1]
    name, _, query_text = rest.partition("?")
    name = name.rstrip("/")
    if not _NAME.fullmatch(name):
        raise InvalidURL(
            f"a memory broker's name has only letters, digits, '.', '_' and '-': {redact(url)}"
        )
    query = dict(parse_qsl(query_text, keep_blank_values=True))
    common = pop_common(query, url)
    retry_mode = query.pop("retry_mode", "ttl")
    unroutable = query.pop("unroutable", "hold")
    if query:
        raise InvalidURL(f"unknown option(s) {sorted(query)} in broker URL {redact(url)}")
    if retry_mode not in ("ttl", "consume"):
        raise InvalidURL(f"retry_mode must be ttl or consume, not {retry_mode!r}")
    if unroutable not in ("hold", "return"):
        raise InvalidURL(f"unroutable must be hold or return, not {unroutable!r}")
    return MemorySettings(
        name=name,
        retry_mode=retry_mode,  # type: ignore[arg-type]  # checked above
        unroutable=unroutable,  # type: ignore[arg-type]  # checked above
        common=common,
    )
