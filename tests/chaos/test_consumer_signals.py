"""A consumer process SIGKILLed around its DB commit, or SIGTERMed mid-stream: exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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

    def publish(self, count: int = 1) -> list[Message]:
        messages = [Message(self.config["topic"], b"payload") for _ in range(count)]
        with self.adapter.publisher() as publisher:
            assert all(o.ok for o in publisher.publish(messages))
        return messages

    def command(self, crash: str, expect: int, slow: float = 0, **more: int) -> list[str]:
        config = {**self.config, "crash": crash, "expect": expect, "slow": slow, **more}
        return [sys.executable, str(APP), json.dumps(config)]

    def run(
        self, crash: str, expect: int = 1, slow: float = 0, **more: int
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(crash, expect, slow, **more),
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
    (message,) = scenario.publish()
    killed = scenario.run("after-commit")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert scenario.applied_ids() == [message.id]

    stats = stats_of(scenario.run("none"))
    assert stats["duplicates"] == 1  # redelivered, found in the inbox, acknowledged
    assert stats["processed"] == 0
    assert scenario.applied_ids() == [message.id]


def test_a_crash_after_commits_redelivers_only_what_was_in_flight(scenario: Scenario) -> None:
    messages = scenario.publish(12)
    # Handlers slower than the Kafka offset committer's interval (0.1 s), so "in flight"
    # at the crash is the one message whose ack is cut off, whatever the broker.
    killed = scenario.run("after-commit", expect=12, slow=0.2, acks_before_crash=5)
    assert killed.returncode == -9, killed.stderr[-3000:]
    committed = len(scenario.applied_ids())
    # 5 acknowledged one by one, the sixth committed and cut off at its ack (acknowledged
    # once per poll, every message of the poll was committed before the first ack).
    assert committed == 6

    # Redeliveries come before the messages never delivered, so once those are processed
    # every redelivery has been seen.
    stats = stats_of(scenario.run("none", expect=12 - committed, fresh_only=1))
    assert sorted(scenario.applied_ids()) == sorted(m.id for m in messages)  # once each
    assert stats["processed"] == 12 - committed
    # The cut-off message comes again, and at most one more whose (asynchronous) Kafka
    # commit had not reached the broker; before acks were sent per message, every
    # message of the crashed poll came again.
    assert 1 <= stats["duplicates"] <= 2, stats


def test_killed_before_commit_is_applied_once_after_restart(scenario: Scenario) -> None:
    (message,) = scenario.publish()
    killed = scenario.run("before-commit")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert scenario.applied_ids() == []

    stats = stats_of(scenario.run("none"))
    assert stats["processed"] == 1
    assert scenario.applied_ids() == [message.id]


def test_sigterm_stops_gracefully_and_a_restart_finishes_the_rest_once(
    scenario: Scenario,
) -> None:
    messages = scenario.publish(40)
    # Slow handlers: the 35 messages after the fifth take 7 s, so the SIGTERM comes while
    # they are under way even when this thread is seconds late to see the fifth.
    process = subprocess.Popen(
        scenario.command("none", expect=0, slow=0.2),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(scenario.applied_ids()) < 5:
            assert time.monotonic() < deadline, "consumer made no progress"
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    first_run = json.loads(out.strip().splitlines()[-1])
    done = len(scenario.applied_ids())
    assert first_run["processed"] == done < 40  # stopped early, everything it did committed

    stats = stats_of(scenario.run("none", expect=40 - done))
    assert stats["processed"] == 40 - done
    assert sorted(scenario.applied_ids()) == sorted(m.id for m in messages)
