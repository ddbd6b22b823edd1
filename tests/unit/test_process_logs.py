"""The command line's logging: JSON lines with the structured fields, drivers quiet."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from txmq.process.logs import LogFormat, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("pika").level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("pika").setLevel(saved[2])


def test_json_format_prints_the_structured_fields_of_extra(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", LogFormat.JSON)
    logging.getLogger("txmq.relay").warning(
        "publish of %s failed: %s",
        *("m-1", "to rabbitmq://u:s3cret@h/ refused"),
        extra={
            "message_id": "m-1",
            "group": "orders",
            "topic": "t.a",
            "state": "READY",
            "attempt": 2,
        },
    )
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "txmq.relay"
    assert entry["message_id"] == "m-1"
    assert entry["group"] == "orders"
    assert entry["topic"] == "t.a"
    assert entry["state"] == "READY"
    assert entry["attempt"] == 2
    assert "s3cret" not in line
    assert entry["time"].endswith("+00:00")


def test_txmq_shows_info_and_the_drivers_only_warnings(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", LogFormat.TEXT)
    logging.getLogger("txmq.worker").info("txmq info", extra={"group": "g"})
    logging.getLogger("pika.channel").info("pika info")
    logging.getLogger("confluent_kafka").info("kafka info")
    logging.getLogger("pika.channel").warning("pika warning")
    err = capsys.readouterr().err
    assert "txmq info [group=g]" in err
    assert "pika info" not in err
    assert "kafka info" not in err
    assert "pika warning" in err


def test_an_unknown_log_level_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD", LogFormat.TEXT)
