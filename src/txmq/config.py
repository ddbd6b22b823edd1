"""What every broker's settings share, secrets kept out of text, and the environment.

Each broker parses its own URLs (``txmq.adapters.<broker>.settings``); the registry in
:mod:`txmq.adapters.registry` picks the parser by scheme. Settings never show a secret in
their ``repr`` or in ``redacted_url()``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Protocol

from txmq.errors import ConfigurationError, InvalidURL
from txmq.message import DEFAULT_MAX_BODY_BYTES

ENV_BROKER_URL = "TXMQ_BROKER_URL"
ENV_DATABASE_URL = "TXMQ_DATABASE_URL"


#: Query options whose values are secrets and must never be printed.
SECRET_OPTIONS = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
)
#: What a secret is replaced with.
REDACTED = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@]*:)[^@/?#]*@")


def redact(text: str) -> str:
    """Replace every URL password and secret query option in ``text`` by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{REDACTED}@", text)
    for option in SECRET_OPTIONS:
        text = re.sub(rf"({re.escape(option)}=)[^&\s]*", rf"\g<1>{REDACTED}", text)
    return text


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, with secrets redacted."""
    lines = redact(str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


@dataclass(frozen=True, slots=True)
class CommonSettings:
    """Settings every adapter understands (query options without a broker prefix).

    Attributes:
        connect_timeout: seconds to wait for a connection before :class:`BrokerUnavailable`.
        publish_timeout: seconds to wait for the broker to confirm a publish batch.
        max_body_bytes: largest message (body + headers) accepted for publishing.
    """

    connect_timeout: float = 5.0
    publish_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


class BrokerSettings(Protocol):
    """What txmq needs of any broker's settings (each broker's own dataclass has more)."""

    @property
    def system(self) -> str:
        """The registered broker name (``"rabbitmq"``, ``"kafka"``, ``"memory"``)."""
        ...

    @property
    def common(self) -> CommonSettings: ...

    def redacted_url(self) -> str:
        """The URL with every secret replaced by ``***``."""
        ...


def pop_common(query: dict[str, str], url: str) -> CommonSettings:
    """Take the options every broker understands out of a URL's ``query``.

    Raises:
        InvalidURL: one of them is not a number.
    """
    try:
        return CommonSettings(
            connect_timeout=float(query.pop("connect_timeout", 5.0)),
            publish_timeout=float(query.pop("publish_timeout", 30.0)),
            max_body_bytes=int(query.pop("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
        )
    except ValueError as exc:
        raise InvalidURL(f"bad number in broker URL {redact(url)}: {exc}") from None


def host_port(netloc_part: str, default_port: int, url: str) -> tuple[str, int]:
    """Split ``host[:port]`` of ``url``.

    Raises:
        InvalidURL: no host, or a port that is not one.
    """
    host, _, port_text = (
        netloc_part.rpartition(":") if ":" in netloc_part else (netloc_part, "", "")
    )
    if not host:
        raise InvalidURL(f"missing host in broker URL {redact(url)}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidURL(f"bad port {port_text!r} in broker URL {redact(url)}")
    return host, int(port_text)


def database_url(url: str | None = None) -> str:
    """Return ``url`` or ``$TXMQ_DATABASE_URL``; raise :class:`ConfigurationError` if neither."""
    url = url or os.environ.get(ENV_DATABASE_URL)
    if not url:
        raise ConfigurationError(f"no database URL given and {ENV_DATABASE_URL} is not set")
    return url


__all__ = [
    "ENV_BROKER_URL",
    "ENV_DATABASE_URL",
    "REDACTED",
    "SECRET_OPTIONS",
    "BrokerSettings",
    "CommonSettings",
    "database_url",
    "describe",
    "host_port",
    "pop_common",
    "redact",
]
