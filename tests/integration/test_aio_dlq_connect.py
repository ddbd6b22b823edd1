"""AsyncDeadLetters on a broker URL connects once, however many of its calls come first at
the same time: a second connection would never be closed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import txmq

pytestmark = pytest.mark.broker


def test_concurrent_first_calls_share_one_connection(
    broker_url: str, unique: Callable[[str], str]
) -> None:
    from txmq.aio import AsyncDeadLetters

    topology = txmq.Topology(unique("billing"), unique("invoices").replace("-", "_"))
    adapter = txmq.connect(broker_url)
    adapter.declare([topology])
    opened: list[txmq.Adapter] = []
    connect = txmq.adapters.connect

    def counted_connect(*args: Any, **kwargs: Any) -> Any:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    async def scenario() -> None:
        async with AsyncDeadLetters(broker_url, group=topology.group, topic=topology.topic) as dlq:
            # Generous: on Kafka the three reads run one after the other, each of about
            # half a second on a loaded machine.
            listed = await asyncio.gather(*(dlq.list(timeout=30) for _ in range(3)))
        assert listed == [[], [], []]

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("txmq.consumer.dlq.connect", counted_connect)
            asyncio.run(scenario())
    finally:
        adapter.close()
        for extra in opened[1:]:
            extra.close()
    assert len(opened) == 1
