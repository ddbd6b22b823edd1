"""Logging as the command line sets it up: the library itself never configures logging.

txmq's loggers show INFO, the broker drivers' (pika, confluent_kafka) only WARNING. The
``json`` format prints one object per line with the structured fields a record carries in
``extra`` (see :data:`STRUCTURED_FIELDS`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from txmq.config import redact

#: The ``extra`` fields txmq's log calls attach and the JSON format prints.
STRUCTURED_FIELDS = ("message_id", "group", "topic", "state", "attempt")
#: Driver loggers kept at WARNING: at INFO they print a line per connection.
DRIVER_LOGGERS = ("pika", "confluent_kafka")
#: pika's loggers that report every failed connection attempt at ERROR, with a traceback:
#: txmq reports these failures itself (once per kind of error, redacted), so an outage or
#: a refused password does not print a screen per retry.
CONNECTION_ATTEMPT_LOGGERS = (
    "pika.adapters.blocking_connection",
    "pika.adapters.utils.connection_workflow",
    "pika.adapters.utils.io_services_utils",
    "pika.connection",
)


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the
    structured fields present, and ``exception`` (the formatted traceback) if any.
    Secrets in the message are redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in STRUCTURED_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message [field=value ...]``, secrets redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in STRUCTURED_FIELDS
            if record.__dict__.get(name) is not None
        )
        return redact(f"{text} [{fields}]" if fields else text)


def configure_logging(level: str = "INFO", fmt: LogFormat = LogFormat.TEXT) -> None:
    """Send every log record to stderr in ``fmt``, at ``level``; drivers at WARNING at least.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric))
    for name in CONNECTION_ATTEMPT_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
