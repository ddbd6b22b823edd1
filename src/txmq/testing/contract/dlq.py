"""DLQ tooling contract on every adapter (``broker_url``): what is listed, what is replayed.

Letters are parked straight into each test's own DLQ (as a consumer would park them), so
every test sees exactly its letters. Where a replay went is read back from the group's
destination: the work queue on RabbitMQ and memory, the topic on Kafka.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

import txmq
from txmq.adapters import Adapter, Topology
from txmq.cli import dlq as cli
from txmq.consumer import DeadLetters
from txmq.errors import QueueNotFound
from txmq.message import Message
from txmq.testing.contract.apis import Api
from txmq.testing.contract.features import Features, requires
from txmq.wire import dead_letter_copy

pytestmark = [pytest.mark.broker, pytest.mark.slow]

runner = CliRunner()


@dataclass
class Parked:
    """One test's broker, group, topic and the letters parked in their DLQ."""

    adapter: Adapter
    url: str
    topology: Topology
    features: Features

    @property
    def group(self) -> str:
        return self.topology.group

    @property
    def topic(self) -> str:
        return self.topology.topic

    def park(self, count: int) -> list[Message]:
        """Park ``count`` letters, one at a time, each stamped at a later millisecond."""
        originals = [Message(self.topic, b"%d" % i, key=f"k{i}") for i in range(count)]
        with self.adapter.publisher() as publisher:
            for index, original in enumerate(originals):
                copy = dead_letter_copy(
                    original,
                    group=self.group,
                    error_type="builtins.RuntimeError",
                    error_message="bug",
                    attempt=3,
                    now=1_700_000_000 + index,
                )
                stamped = time.time()
                [outcome] = publisher.send_to_queue(self.topology.dead_letter_queue, [copy])
                assert outcome.ok, outcome.error
                # Kafka orders letters of different partitions by record timestamp (ms).
                while time.time() < stamped + 0.002:
                    pass
        return originals

    def dead_letters(self, api: Api | None = None) -> Any:
        """The group's :class:`DeadLetters` on ``api`` (the synchronous one by default)."""
        if api is None:
            return DeadLetters(self.adapter, group=self.group, topic=self.topic)
        return api.dead_letters(self.adapter, group=self.group, topic=self.topic)

    def listed(self, **kwargs: bool) -> list[str]:
        with self.dead_letters() as dlq:
            return [letter.message.id for letter in dlq.list(timeout=15, **kwargs)]

    def sent_back(self) -> list[str]:
        """Ids of the replay copies that reached the group, in any order, with repeats."""
        replays_to_work_queue = self.features.replays_to_work_queue
        destination = self.topology.work_queue if replays_to_work_queue else self.topic
        deliveries = self.adapter.read_queue(destination, limit=1000, timeout=15)
        return sorted(d.message.id for d in deliveries if d.message is not None)

    def options(self) -> list[str]:
        return ["--group", self.group, "--topic", self.topic, "--broker", self.url]

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = runner.invoke(cli.dlq_app, [*args, *self.options()])
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def parked(broker_url: str, txmq_features: Features) -> Iterator[Parked]:
    suffix = uuid.uuid4().hex[:10]
    adapter = txmq.connect(broker_url)
    topology = Topology(f"g{suffix}", f"t{suffix}.evt")
    adapter.declare([topology])
    try:
        yield Parked(adapter, broker_url, topology, txmq_features)
    finally:
        adapter.close()


def ids(messages: list[Message]) -> list[str]:
    return [m.id for m in messages]


def test_a_replayed_letter_is_listed_no_more(parked: Parked, api: Api) -> None:
    a, b, c = parked.park(3)
    assert parked.listed() == ids([a, b, c])  # oldest first, on both brokers
    with parked.dead_letters(api) as dlq:
        result = dlq.replay([b.id], timeout=15)
    assert result.replayed == [b.id]
    assert parked.listed() == ids([a, c])
    assert parked.sent_back() == [b.id]


def test_selective_replay_then_replay_all_sends_each_letter_once(parked: Parked, api: Api) -> None:
    letters = parked.park(4)
    with parked.dead_letters(api) as dlq:
        assert dlq.replay([letters[2].id], timeout=15).replayed == [letters[2].id]
        everything = dlq.replay(timeout=15)
        again = dlq.replay(timeout=15)
    assert everything.replayed == ids([letters[0], letters[1], letters[3]])
    assert again.replayed == []
    assert parked.listed() == []
    assert parked.sent_back() == sorted(ids(letters))  # each exactly once


def test_replayed_letters_are_replayed_again_only_when_asked(parked: Parked, api: Api) -> None:
    a, b = parked.park(2)
    with parked.dead_letters(api) as dlq:
        dlq.replay([a.id], timeout=15)
        asked = dlq.replay([a.id], include_replayed=True, timeout=15)
    if parked.features.dead_letters_stay_after_replay:
        # The log keeps a replayed letter; asked for, it is listed and sent again.
        assert parked.listed(include_replayed=True) == ids([a, b])
        assert asked.replayed == [a.id]
        assert parked.sent_back() == sorted([a.id, a.id])
    else:
        # A replayed letter has left the queue: there is nothing to include.
        assert parked.listed(include_replayed=True) == [b.id]
        assert asked.not_found == [a.id]
        assert parked.sent_back() == [a.id]
    assert parked.listed() == [b.id]


def test_purged_letters_are_listed_no_more(parked: Parked, api: Api) -> None:
    a, *_ = parked.park(3)
    with parked.dead_letters(api) as dlq:
        dlq.replay([a.id], timeout=15)
        assert dlq.purge() == 2  # the letters still listed, on both brokers
        assert dlq.list(timeout=15, include_replayed=True) == []
        assert dlq.replay(timeout=15).replayed == []
        assert dlq.purge() == 0
    assert parked.sent_back() == [a.id]


def test_a_missing_dlq_is_a_typed_error(broker_url: str, api: Api) -> None:
    adapter = txmq.connect(broker_url)
    group, topic = f"nobody{uuid.uuid4().hex[:10]}", "orders.created"
    try:
        with api.dead_letters(adapter, group=group, topic=topic) as dlq:
            for call in (
                lambda: dlq.list(timeout=5),
                lambda: dlq.show("some-id", timeout=5),
                lambda: dlq.replay(timeout=5),
                dlq.purge,
            ):
                with pytest.raises(QueueNotFound, match=f"no dead-letter queue '{group}"):
                    call()
        # Asking did not create it.
        with pytest.raises(QueueNotFound):
            adapter.read_queue(f"{group}.{topic}.dlq", limit=1, timeout=5)
    finally:
        adapter.close()


def test_cli_replay_by_id_then_all_and_the_listings(parked: Parked) -> None:
    a, b, c = parked.park(3)
    code, out, err = parked.cli("list")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ids([a, b, c])
    assert lines[0] == (
        f"{a.id}  attempts=3  last=2023-11-14T22:13:20+00:00  builtins.RuntimeError: bug"
    )
    assert err.strip() == f"3 message(s) in {parked.topology.dead_letter_queue}"
    code, out, _ = parked.cli("list", "--json")
    assert code == 0
    first = json.loads(out.splitlines()[0])
    assert list(first) == [
        "id",
        "topic",
        "key",
        "error_type",
        "error_message",
        "attempts",
        "first_failure_at",
        "last_failure_at",
        "replay_generation",
        "compensation_id",
        "raw",
        "size",
    ]
    assert first["id"] == a.id
    assert first["topic"] == parked.topic
    assert first["key"] == "k0"

    code, out, err = parked.cli("replay", "--id", b.id)
    assert (code, out) == (0, f"replayed {b.id}\n"), err
    code, out, err = parked.cli("list")
    assert [line.split("  ")[0] for line in out.splitlines()] == ids([a, c])
    code, out, err = parked.cli("replay", "--all")
    assert (code, out) == (0, f"replayed {a.id}\nreplayed {c.id}\n"), err
    code, out, err = parked.cli("replay", "--id", b.id)
    assert code == 1
    assert out == ""
    assert f"not found {b.id}" in err
    code, out, err = parked.cli("list")
    assert (code, out) == (0, "")
    assert parked.sent_back() == sorted(ids([a, b, c]))


def test_cli_purge_then_list(parked: Parked) -> None:
    parked.park(2)
    code, out, err = parked.cli("purge", "--yes")
    assert (code, out) == (0, f"purged 2 message(s) from {parked.topology.dead_letter_queue}\n")
    code, out, err = parked.cli("list")
    assert (code, out) == (0, "")
    assert err.strip() == f"0 message(s) in {parked.topology.dead_letter_queue}"


@pytest.mark.parametrize("command", [["list"], ["show", "some-id"], ["replay", "--all"]])
def test_cli_on_a_missing_dlq_prints_one_line_and_fails(
    broker_url: str, command: list[str]
) -> None:
    group = f"nobody{uuid.uuid4().hex[:10]}"
    result = runner.invoke(
        cli.dlq_app, [*command, "--group", group, "--topic", "t.evt", "--broker", broker_url]
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: no dead-letter queue '{group}.t.evt.dlq'")


def test_replay_reports_its_progress_chunk_by_chunk(
    parked: Parked, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("txmq.consumer.dlq.REPLAY_CHUNK", 2)
    letters = parked.park(5)
    reported: list[tuple[int, int]] = []
    with parked.dead_letters(api) as dlq:
        result = dlq.replay(timeout=15, progress=lambda done, total: reported.append((done, total)))
    assert result.replayed == ids(letters)
    assert reported == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert parked.sent_back() == sorted(ids(letters))  # each exactly once


def test_cli_show_json_is_the_same_object_on_one_line(parked: Parked) -> None:
    [letter] = parked.park(1)
    code, indented, err = parked.cli("show", letter.id)
    assert code == 0, err
    code, out, err = parked.cli("show", letter.id, "--json")
    assert code == 0, err
    [line] = out.splitlines()
    assert json.loads(line) == json.loads(indented)
    assert json.loads(line)["id"] == letter.id


def test_cli_an_empty_json_listing_says_so_on_stderr(parked: Parked) -> None:
    code, out, err = parked.cli("list", "--json")
    assert (code, out) == (0, "")
    assert err.strip() == f"0 message(s) in {parked.topology.dead_letter_queue}"


@requires("across_processes")  # the command runs in a process of its own
def test_cli_replay_draws_its_progress_on_a_terminal_only(parked: Parked) -> None:
    """stderr on a pseudo-terminal gets the bar; stdout, a pipe, only the replayed ids."""
    import os
    import pty
    import select
    import subprocess
    import sys

    letters = parked.park(3)
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "txmq.cli", "dlq", "replay", "--all", *parked.options()],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
        )
        os.close(terminal)
        drawn = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            readable, _, _ = select.select([controller], [], [], deadline - time.monotonic())
            try:
                chunk = os.read(controller, 4096) if readable else b""
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            drawn += chunk
        out, _ = process.communicate(timeout=60)
    finally:
        os.close(controller)
    assert process.returncode == 0, drawn
    assert out == "".join(f"replayed {m.id}\n" for m in letters)
    assert f"replaying {parked.topology.dead_letter_queue}".encode() in drawn
    assert b"3 replayed" in drawn
