"""An order service on FastAPI and txmq.aio.

``POST /orders`` writes the order row and stages its ``orders.created`` message in ONE
``AsyncSession`` transaction: the message exists if and only if the order does. The
lifespan starts the relay (which publishes staged messages) and an ``AsyncConsumer`` whose
``async def`` handler books a shipment, in one transaction with its inbox row.

Run it (PostgreSQL and RabbitMQ or Kafka running; ``pip install 'txmq[all]' fastapi uvicorn``)::

    export DATABASE_URL=postgresql+asyncpg://postgres:postgres@127.0.0.1:5432/postgres
    export TXMQ_BROKER_URL=rabbitmq://guest:guest@127.0.0.1:5672/
    python -m examples.fastapi_orders.app --create-tables
    uvicorn examples.fastapi_orders.app:app

    curl -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"customer": "ada", "amount_cents": 1250}'
    curl localhost:8000/orders/1

With ``relay=False`` the web process only stages; run the relay and check-back as their
own process instead (the synchronous driver on the same database)::

    txmq worker --group orders --database postgresql+psycopg://postgres:postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import txmq
from txmq.aio import AsyncConsumer, AsyncProducer


@dataclass(frozen=True)
class Schema:
    """The service's tables and txmq's, all named with ``prefix``."""

    metadata: MetaData
    orders: Table
    shipments: Table
    outbox: txmq.OutboxTables
    inbox: Table


def make_schema(prefix: str = "") -> Schema:
    metadata = MetaData()
    orders = Table(
        f"{prefix}orders",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("customer", String(80), nullable=False),
        Column("amount_cents", Integer, nullable=False),
    )
    shipments = Table(
        f"{prefix}shipments",
        metadata,
        Column("order_id", Integer, primary_key=True),
        Column("customer", String(80), nullable=False),
    )
    # txmq's own tables under the prefix `txmq worker` uses by default (--prefix txmq_).
    outbox = txmq.make_outbox_tables(metadata, prefix=f"{prefix}txmq_")
    inbox = txmq.make_inbox_table(metadata, f"{prefix}txmq_inbox")
    return Schema(metadata, orders, shipments, outbox, inbox)


class OrderIn(BaseModel):
    customer: str = Field(min_length=1, max_length=80)
    amount_cents: int = Field(gt=0)


class OrderOut(BaseModel):
    id: int
    customer: str
    amount_cents: int
    shipped: bool


def create_app(
    *,
    database_url: str,
    broker_url: str | None = None,
    prefix: str = "",
    relay: bool = True,
) -> FastAPI:
    """The service on ``database_url`` (an asyncio URL: ``postgresql+asyncpg://...``) and
    ``broker_url`` (``$TXMQ_BROKER_URL`` when omitted). ``prefix`` names the tables, the
    topic (``<prefix>orders.created``) and the groups, so several instances can share a
    database and a broker. ``relay=False``: publishing is left to ``txmq worker``."""
    schema = make_schema(prefix)
    topic = f"{prefix}orders.created"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url)
        # open(): connecting to the broker happens in a thread, not on the event loop.
        producer = await AsyncProducer.open(
            group=f"{prefix}orders", engine=engine, broker=broker_url, tables=schema.outbox
        )
        consumer = AsyncConsumer(
            broker=broker_url, engine=engine, group=f"{prefix}shipping", inbox=schema.inbox
        )

        @consumer.handler(topic)
        async def ship(message: txmq.Message, session: AsyncSession) -> None:
            order = json.loads(message.body)
            await session.execute(
                insert(schema.shipments).values(order_id=order["id"], customer=order["customer"])
            )

        await consumer.start()
        if relay:
            await producer.start()
        app.state.engine, app.state.producer, app.state.consumer = engine, producer, consumer
        try:
            yield
        finally:
            await consumer.stop()
            await producer.close()
            await engine.dispose()

    app = FastAPI(title="orders", lifespan=lifespan)
    app.state.schema = schema

    @app.post("/orders", status_code=201)
    async def create_order(order: OrderIn) -> OrderOut:
        engine: AsyncEngine = app.state.engine
        producer: AsyncProducer = app.state.producer
        async with AsyncSession(engine) as session, session.begin():
            result = await session.execute(
                insert(schema.orders)
                .values(customer=order.customer, amount_cents=order.amount_cents)
                .returning(schema.orders.c.id)
            )
            order_id = result.scalar_one()
            body = {"id": order_id, "customer": order.customer, "amount": order.amount_cents}
            await producer.stage(
                session, txmq.Message(topic, json.dumps(body).encode(), key=order.customer)
            )
        return OrderOut(id=order_id, shipped=False, **order.model_dump())

    @app.get("/orders/{order_id}")
    async def read_order(order_id: int) -> OrderOut:
        engine: AsyncEngine = app.state.engine
        query = (
            select(schema.orders, schema.shipments.c.order_id.is_not(None).label("shipped"))
            .outerjoin(schema.shipments, schema.shipments.c.order_id == schema.orders.c.id)
            .where(schema.orders.c.id == order_id)
        )
        async with engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        if row is None:
            raise HTTPException(404, f"no order {order_id}")
        return OrderOut(**row)

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        producer: AsyncProducer = app.state.producer
        consumer: AsyncConsumer = app.state.consumer
        healthy = consumer.healthy() and (not relay or producer.healthy())
        if not healthy:
            raise HTTPException(503, "a txmq loop is down")
        return {"healthy": True}

    return app


def _from_environment() -> FastAPI | None:
    url = os.environ.get("DATABASE_URL")
    return None if url is None else create_app(database_url=url)


app = _from_environment()  # what `uvicorn examples.fastapi_orders.app:app` serves

if __name__ == "__main__" and "--create-tables" in sys.argv:
    # The async URL's database through the synchronous driver, once, before serving.
    url = create_async_engine(os.environ["DATABASE_URL"]).url
    make_schema().metadata.create_all(create_engine(url.set(drivername="postgresql+psycopg")))
