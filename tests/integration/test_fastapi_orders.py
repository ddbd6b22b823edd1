"""examples/fastapi_orders on real brokers and PostgreSQL (asyncpg), through httpx.

The app runs in-process (``httpx.ASGITransport``) inside its own lifespan, so the relay and
the consumer the lifespan starts are the ones under test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from examples.fastapi_orders.app import create_app
from fastapi import FastAPI
from sqlalchemy import Table, create_engine, func, select

pytestmark = [pytest.mark.broker, pytest.mark.database]


@pytest.fixture
def app(database_url: str, broker_url: str) -> Iterator[FastAPI]:
    prefix = f"fo{uuid.uuid4().hex[:8]}_"
    url = create_engine(database_url).url
    async_url = url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    made = create_app(database_url=async_url, broker_url=broker_url, prefix=prefix)
    engine = create_engine(database_url)
    made.state.schema.metadata.create_all(engine)
    yield made
    made.state.schema.metadata.drop_all(engine)
    engine.dispose()


async def shipped(client: httpx.AsyncClient, order_id: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/orders/{order_id}")
        assert response.status_code == 200, response.text
        if response.json()["shipped"]:
            return True
        await asyncio.sleep(0.1)
    return False


def test_an_order_is_stored_staged_published_and_shipped_once(
    app: FastAPI, database_url: str
) -> None:
    """POST /orders commits the order and its message together; the relay started by the
    lifespan publishes it, the lifespan's consumer books exactly one shipment per order; a
    refused request stores nothing and stages nothing."""
    schema = app.state.schema

    async def scenario() -> None:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://orders"
            ) as client,
        ):
            created = [
                await client.post("/orders", json={"customer": f"c{n}", "amount_cents": 100 + n})
                for n in range(5)
            ]
            assert [r.status_code for r in created] == [201] * 5, created[0].text
            refused = await client.post("/orders", json={"customer": "", "amount_cents": -1})
            assert refused.status_code == 422
            ids = [r.json()["id"] for r in created]
            for order_id in ids:
                assert await shipped(client, order_id), f"order {order_id} never shipped"
            assert (await client.get("/orders/999999")).status_code == 404
            assert (await client.get("/healthz")).json() == {"healthy": True}

    asyncio.run(scenario())
    engine = create_engine(database_url)
    with engine.connect() as connection:

        def count(table: Table) -> int:
            return int(connection.execute(select(func.count()).select_from(table)).scalar_one())

        assert count(schema.orders) == 5
        assert count(schema.shipments) == 5
        assert count(schema.inbox) == 5
        states = connection.execute(select(schema.outbox.records.c.state)).scalars().all()
    engine.dispose()
    assert sorted(states) == ["SENT"] * 5
