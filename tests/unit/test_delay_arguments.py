"""What ``deliver_at=`` / ``delay=`` accept (:func:`txmq.outbox.producer.delivery_time`), and that
a bad one is refused before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine
from sqlalchemy.orm import Session

import txmq
from txmq.outbox import Producer, make_outbox_tables
from txmq.outbox.producer import delivery_time

PARIS = timezone(timedelta(hours=1))


def test_neither_is_no_delay() -> None:
    assert delivery_time(None, None) is None


def test_an_aware_datetime_is_kept_as_utc() -> None:
    at = datetime(2030, 1, 1, 12, 0, tzinfo=PARIS)
    assert delivery_time(at, None) == at
    assert delivery_time(at, None).tzinfo is UTC  # type: ignore[union-attr]


@pytest.mark.parametrize("delay", [timedelta(seconds=5), 5, 5.0])
def test_a_delay_counts_from_now(delay: Any) -> None:
    before = datetime.now(UTC)
    due = delivery_time(None, delay)
    assert due is not None
    assert before + timedelta(seconds=5) <= due <= datetime.now(UTC) + timedelta(seconds=5)


@pytest.mark.parametrize(
    ("deliver_at", "delay", "says"),
    [
        (datetime(2030, 1, 1), None, "timezone-aware"),
        ("2030-01-01T00:00:00Z", None, "must be a datetime"),
        (None, -1, "from 0"),
        (None, timedelta(seconds=-1), "from 0"),
        (None, float("nan"), "from 0"),
        (None, float("inf"), "from 0"),
        (None, True, "timedelta or seconds"),
        (None, "5", "timedelta or seconds"),
        (datetime.now(UTC), 5, "not both"),
    ],
)
def test_a_bad_time_is_an_invalid_delay(deliver_at: Any, delay: Any, says: str) -> None:
    with pytest.raises(txmq.InvalidDelay, match=says) as raised:
        delivery_time(deliver_at, delay)
    assert isinstance(raised.value, txmq.InvalidMessage)


def test_stage_refuses_a_naive_datetime_and_writes_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    metadata = MetaData()
    tables = make_outbox_tables(metadata)
    metadata.create_all(engine)
    producer = Producer(group="g", engine=engine, tables=tables)
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"kept"))
        with pytest.raises(txmq.InvalidDelay):
            producer.stage(session, txmq.Message("t", b"x"), deliver_at=datetime(2030, 1, 1))
    assert producer.store.counts() == {"READY": 1}


def test_a_time_already_past_is_staged_ready(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    metadata = MetaData()
    tables = make_outbox_tables(metadata)
    metadata.create_all(engine)
    producer = Producer(group="g", engine=engine, tables=tables)
    with Session(engine) as session, session.begin():
        producer.stage(
            session, txmq.Message("t", b"x"), deliver_at=datetime(2000, 1, 1, tzinfo=UTC)
        )
        producer.stage(session, txmq.Message("t", b"y"), delay=0)
    assert producer.store.counts() == {"READY": 2}
