"""A consumer process SIGKILLed around its DB commit: the message is applied exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consumer_app import RETRY, tables  # next to this file: pytest puts its folder on sys.path
from sqlalchemy import create_engine, select

import txmq
from txmq.adapters import Topology
from txmq.message import Message

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

APP = Path(__file__).parent / "consumer_app.py"


class Scenario:
    def __init__(self, broker_url: str, database_url: str) -> None:
        self.suffix = uuid.uuid4().hex[:10]
        self.config: dict[str, Any] = {
            "broker_url": broker_url,
            "database_url": database_url,
            "group": f"g{self.suffix}",
            "topic": f"t{self.suffix}.evt",
            "suffix": self.suffix,
        }
        self.metadata, _, self.applied = tables(self.suffix)
        self.engine = create_engine(database_url)
        self.metadata.create_all(self.engine)
        self.adapter = txmq.connect(broker_url)
        self.adapter.declare(
            [Topology(self.config["group"], self.config["topic"], retry_delays=RETRY.delays)]
        )

    def publish(self) -> Message:
        message = Message(self.config["topic"], b"payload")
        with self.adapter.publisher() as publisher:
            assert publisher.publish([message])[0].ok
        return message

    def run(self, crash: str, expect: int = 1) -> subprocess.CompletedProcess[str]:
        config = {**self.config, "crash": crash, "expect": expect}
        return subprocess.run(
            [sys.executable, str(APP), json.dumps(config)],
            capture_output=True,
            text=True,
            timeout=150,
            env={**os.environ},
            check=False,
        )

    def applied_ids(self) -> list[str]:
        with self.engine.connect() as c:
            return list(c.execute(select(self.applied.c.message_id)).scalars())

    def close(self) -> None:
        self.adapter.close()
        self.metadata.drop_all(self.engine)
        self.engine.dispose()


@pytest.fixture
def scenario(broker_url: str, database_url: str) -> Iterator[Scenario]:
    s = Scenario(broker_url, database_url)
    yield s
    s.close()


def stats_of(done: subprocess.CompletedProcess[str]) -> dict[str, int]:
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_killed_after_commit_before_ack_is_not_applied_again(scenario: Scenario) -> None:
    message = scenario.publish()
    killed = scenario.run("after-commit")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert scenario.applied_ids() == [message.id]

    stats = stats_of(scenario.run("none"))
    assert stats["duplicates"] == 1  # redelivered, found in the inbox, acknowledged
    assert stats["processed"] == 0
    assert scenario.applied_ids() == [message.id]


def test_killed_before_commit_is_applied_once_after_restart(scenario: Scenario) -> None:
    message = scenario.publish()
    killed = scenario.run("before-commit")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert scenario.applied_ids() == []

    stats = stats_of(scenario.run("none"))
    assert stats["processed"] == 1
    assert scenario.applied_ids() == [message.id]
