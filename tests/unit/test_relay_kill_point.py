"""The relay's chaos kill point (``TXMQ_CHAOS_KILL=relay-after-confirm:<n>``): armed only
through the environment, it SIGKILLs the relay's process after the broker confirmed a batch
and before the batch is marked SENT, so the batch stays READY and is published again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine

import txmq
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.outbox import Producer, Relay, make_outbox_tables
from txmq.outbox.relay import ENV_KILL, KILL_AFTER_CONFIRM
from txmq.states import RecordState

RELAY_ONE_BATCH = textwrap.dedent(
    """
    import sys
    from sqlalchemy import MetaData, create_engine
    from sqlalchemy.orm import Session
    import txmq
    from txmq.adapters.memory.adapter import InMemoryBroker
    from txmq.outbox import Producer, Relay, make_outbox_tables

    engine = create_engine(f"sqlite:///{sys.argv[1]}")
    metadata = MetaData()
    tables = make_outbox_tables(metadata)
    metadata.create_all(engine)
    producer = Producer(group="orders", engine=engine, tables=tables)
    with Session(engine) as session, session.begin():
        producer.stage(session, txmq.Message("t", b"one"), txmq.Message("t", b"two"))
    broker = InMemoryBroker()
    broker.declare([txmq.Topology("audit", "t")])
    Relay(broker, producer.store, groups=["orders"]).run_once()
    print("confirmed", len(broker.messages("audit.t")), flush=True)
    """
)


def _relay_one_batch(tmp_path: Path, kill: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_KILL}
    if kill is not None:
        env[ENV_KILL] = kill
    return subprocess.run(
        [sys.executable, "-c", RELAY_ONE_BATCH, str(tmp_path / "app.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _states(tmp_path: Path) -> list[RecordState]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        producer = Producer(group="orders", engine=engine, tables=make_outbox_tables(MetaData()))
        return [r.state for s in RecordState for r in producer.store.list(s)]
    finally:
        engine.dispose()


def test_armed_relay_dies_after_the_confirm_and_leaves_the_batch_ready(tmp_path: Path) -> None:
    done = _relay_one_batch(tmp_path, f"{KILL_AFTER_CONFIRM}:1")

    assert done.returncode == -signal.SIGKILL, done.stderr
    assert "confirmed" not in done.stdout
    assert _states(tmp_path) == [RecordState.READY, RecordState.READY]


def test_relay_not_armed_marks_the_batch_sent(tmp_path: Path) -> None:
    done = _relay_one_batch(tmp_path, "executor:1")  # another process's kill point

    assert done.returncode == 0, done.stderr
    assert "confirmed 2" in done.stdout
    assert _states(tmp_path) == [RecordState.SENT, RecordState.SENT]


@pytest.mark.parametrize("spec", [KILL_AFTER_CONFIRM, f"{KILL_AFTER_CONFIRM}:0"])
def test_a_malformed_relay_kill_point_is_refused(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_KILL, spec)
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    producer = Producer(group="orders", engine=engine, tables=make_outbox_tables(MetaData()))
    with pytest.raises(txmq.ConfigurationError, match=KILL_AFTER_CONFIRM):
        Relay(InMemoryBroker(), producer.store, groups=["orders"])
    engine.dispose()
