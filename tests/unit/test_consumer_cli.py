"""``txmq dlq`` against the in-memory broker: wiring, output, no secrets printed."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from txmq.adapters import Topology
from txmq.adapters.memory.adapter import InMemoryBroker
from txmq.cli import dlq as cli
from txmq.errors import BrokerUnavailable
from txmq.message import Message
from txmq.wire import dead_letter_copy

runner = CliRunner()


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> InMemoryBroker:
    broker = InMemoryBroker()
    broker.declare([Topology("g", "t")])
    monkeypatch.setattr("txmq.consumer.dlq.connect", lambda url: broker)
    return broker


def park(broker: InMemoryBroker, *messages: Message) -> None:
    with broker.publisher() as publisher:
        copies = [
            dead_letter_copy(m, group="g", error_type="E", error_message="why", attempt=2, now=0)
            for m in messages
        ]
        publisher.send_to_queue("g.t.dlq", copies)


ARGS = ["--group", "g", "--topic", "t", "--broker", "rabbitmq://u:hunter2@h/"]


def test_list_show_replay_purge(broker: InMemoryBroker) -> None:
    first, second = Message("t", b"one"), Message("t", b"two")
    park(broker, first, second)
    listed = runner.invoke(cli.dlq_app, ["list", *ARGS, "--json"])
    assert listed.exit_code == 0, listed.output
    assert first.id in listed.output
    assert '"attempts": 2' in listed.output
    shown = runner.invoke(cli.dlq_app, ["show", first.id, *ARGS])
    assert shown.exit_code == 0
    assert '"body": "one"' in shown.output
    replayed = runner.invoke(cli.dlq_app, ["replay", *ARGS, "--id", first.id])
    assert replayed.exit_code == 0, replayed.output
    assert [m.id for m in broker.messages("g.t")] == [first.id]
    assert runner.invoke(cli.dlq_app, ["replay", *ARGS]).exit_code == 2
    purged = runner.invoke(cli.dlq_app, ["purge", *ARGS, "--yes"])
    assert "purged 1" in purged.output
    assert broker.depth("g.t.dlq") == 0


def test_errors_never_print_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str) -> InMemoryBroker:
        raise BrokerUnavailable(f"cannot reach {url}")

    monkeypatch.setattr("txmq.consumer.dlq.connect", refuse)
    result = runner.invoke(cli.dlq_app, ["list", *ARGS])
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    assert "***" in result.output
