"""Three-node clusters from ``txmq brokers up --cluster 3``, on demand only (minutes, and
six broker processes): ``TXMQ_CLUSTER_TESTS=1 pytest tests/cluster``.

Each test starts its cluster on ``$TXMQ_CLUSTER_PORT_BASE`` (default 25600) and stops it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import txmq
from txmq import Message, Topology
from txmq.adapters.base import Publisher
from txmq.errors import BrokerError
from txmq.testing import wait_for
from txmq.testing.provision import cluster

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(params=cluster.CLUSTER_BROKERS)
def running(request: pytest.FixtureRequest) -> Iterator[cluster.Cluster]:
    started = cluster.start(request.param, cluster.ClusterPorts.from_env(), timeout=300)
    try:
        yield started
    finally:
        cluster.stop(started)


def _confirmed(publisher: Publisher, message: Message) -> bool:
    try:
        return publisher.publish([message])[0].ok
    except BrokerError:
        return False  # the connection was lost: the next call opens another


def _round_trip(url: str, topology: Topology, messages: list[Message]) -> list[Message]:
    """Publish ``messages`` through ``url`` one by one, each again until it is confirmed
    (as the relay does: a nack during a leader election leaves it to a later pass), and
    consume them back; duplicates of a message published twice are counted once."""
    broker = txmq.connect(url)
    try:
        with broker.publisher() as publisher:
            for message in messages:
                wait_for(
                    functools.partial(_confirmed, publisher, message),
                    timeout=90,
                    what=f"a confirm for {message.body!r}",
                )
        got: dict[str, Message] = {}
        with broker.subscribe(topology.group, broker.sources_for([topology])) as subscription:
            deadline = time.monotonic() + 120
            while len(got) < len(messages):
                assert time.monotonic() < deadline, f"got {len(got)} of {len(messages)}"
                batch = subscription.poll(0.5)
                subscription.ack(batch)
                for delivery in batch:
                    assert delivery.message is not None
                    got.setdefault(delivery.message.id, delivery.message)
        return list(got.values())
    finally:
        broker.close()


def test_a_cluster_keeps_serving_with_any_one_node_down(running: cluster.Cluster) -> None:
    """Replicated three times (quorum queue / RF 3, min ISR 2): with the first node killed,
    the URL fails over and every message published before and after comes back once.

    On RabbitMQ, a publisher channel that got a nack while the queue's leader moved went on
    nacking every publish (minutes, RabbitMQ 3.10); the publisher now replaces its channel
    after a nack."""
    topology = Topology(f"g-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}")
    broker = txmq.connect(running.url)
    broker.declare([topology])
    broker.close()
    before = [Message(topology.topic, f"before {n}".encode(), key="k") for n in range(5)]
    assert _round_trip(running.url, topology, before) == before
    cluster.stop_node(running, 0, kill=True)
    after = [Message(topology.topic, f"after {n}".encode(), key="k") for n in range(5)]
    assert _round_trip(running.url, topology, after) == after
    cluster.start_node(running, 0)
    assert cluster.members(running, via=0) == 3


def test_brokers_up_cluster_prints_every_node_and_down_stops_them(tmp_path: Path) -> None:
    env = os.environ | {"TXMQ_STATE_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "txmq.cli", "brokers"]
    up = subprocess.run(
        [*command, "up", "--cluster", "3", "--only", "rabbitmq", "--print-env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stderr
        ports = cluster.ClusterPorts.from_env()
        assert up.stdout.splitlines() == [
            f"TXMQ_TEST_RABBITMQ_URL='{cluster.cluster_url('rabbitmq', ports)}'"
        ]
        status = subprocess.run(
            [*command, "status"], env=env, capture_output=True, text=True, check=False
        )
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        down = subprocess.run(
            [*command, "down"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
    assert down.stdout.splitlines() == ["stopped rabbitmq (process)"]
    after = subprocess.run(
        [*command, "status"], env=env, capture_output=True, text=True, check=False
    )
    assert after.returncode == 1
    assert "no brokers started" in after.stdout
