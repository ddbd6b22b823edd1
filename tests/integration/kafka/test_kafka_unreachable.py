"""An unreachable Kafka shows within the URL's connect_timeout, not its publish_timeout."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

import txmq

CONNECT_TIMEOUT = 2.0
#: Generously above CONNECT_TIMEOUT (a busy machine), well under the 30 s publish_timeout.
BOUND = 15.0


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_relay_connect_on_an_unreachable_kafka_is_bounded_by_connect_timeout(
    tmp_path: Path,
) -> None:
    url = f"kafka://127.0.0.1:{closed_port()}?connect_timeout={CONNECT_TIMEOUT}"
    broker = txmq.connect(url, check=False)
    assert broker.settings.common.publish_timeout == 30.0
    engine = create_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    txmq.create_schema(engine)
    relay = txmq.Producer(group="orders", engine=engine, broker=broker).relay()
    started = time.monotonic()
    try:
        with pytest.raises(txmq.BrokerUnavailable):
            relay.connect()
        assert time.monotonic() - started < BOUND
    finally:
        relay.stop()
        broker.close()
        engine.dispose()
