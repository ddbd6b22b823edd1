"""Reading a Kafka topic for administration (a DLQ), and removing records from it.

A log cannot delete one record, so removing a dead letter (once it is replayed) appends a
*settlement marker* to the letter's own partition: an empty record whose header
``x-txmq-settles`` holds the letter's offset. A reader leaves out every letter that a
marker of its partition settles, and the markers themselves.

Why markers in the letter's partition rather than a committed offset or a side topic: a
selective replay leaves letters behind, which one offset per partition cannot describe; a
group's committed offsets expire when the group is idle (``offsets.retention.minutes``);
and a side topic has its own retention. A marker sits after its letter in the same
partition, so purging (delete-records up to the end) and retention (oldest segments
first) delete the letter no later than its marker: a settled letter never comes back.
The cost is that a reader reads the whole topic, which for a DLQ is small.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka import Message as Record

from txmq.adapters.base import QueueBrowser
from txmq.adapters.kafka.client import ClientEvents, KafkaContext
from txmq.adapters.kafka.subscription import CONSUMER_REQUIRED
from txmq.adapters.kafka.wire import decode_record
from txmq.errors import BrokerUnavailable, PublishError, QueueNotFound
from txmq.wire import HEADER_SETTLES, Delivery


@dataclass(frozen=True, slots=True)
class RecordPosition:
    """The ``token`` of a browsed Kafka record."""

    partition: int
    offset: int


@dataclass(slots=True)
class _Partition:
    letters: list[tuple[int, int, Delivery]]  # (timestamp ms, offset, delivery), by offset
    settled: set[int]


def _settles(record: Record) -> int | None:
    """The offset a settlement marker settles; ``None`` for any other record."""
    headers = record.headers() or []
    for name, value in headers.items() if isinstance(headers, dict) else headers:
        if name == HEADER_SETTLES and value is not None:
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            try:
                return int(text)
            except ValueError:
                return None
    return None


class KafkaBrowser(QueueBrowser):
    """See :class:`~txmq.adapters.base.QueueBrowser`; built by ``KafkaAdapter.browse``.

    Reads with a throwaway consumer (random group id, never joined: partitions are
    assigned directly, nothing is committed), ``read_committed``.

    Raises (when opened):
        QueueNotFound: the topic does not exist.
        BrokerUnavailable: the broker cannot be reached.
    """

    def __init__(self, context: KafkaContext, topic: str, *, include_settled: bool) -> None:
        self._context = context
        self._topic = topic
        self._include_settled = include_settled
        self._producer: Producer | None = None
        events = ClientEvents(context, f"reader of {topic!r}")
        config = context.config(
            events,
            # An empty partition reports its end after one fetch wait: keep that short.
            defaults={"fetch.wait.max.ms": 100},
            required={
                **CONSUMER_REQUIRED,
                "group.id": f"txmq-read-{uuid.uuid4().hex}",
                "enable.partition.eof": True,
            },
        )
        self._consumer = context.build(Consumer, config, "consumer")
        try:
            metadata = self._consumer.list_topics(topic, timeout=context.connect_timeout)
        except KafkaException as exc:
            self._consumer.close()
            raise BrokerUnavailable(
                f"cannot read {topic!r} from Kafka at {context.url}: {context.describe(exc)}"
            ) from exc
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            self._consumer.close()
            raise QueueNotFound(f"Kafka at {context.url} has no topic {topic!r}")
        self._partitions = sorted(described.partitions)

    def read(self, *, limit: int, timeout: float) -> list[Delivery]:
        """Read the topic to its end; the first ``limit`` letters by time (record timestamp),
        each partition in offset order."""
        partitions = self._read_all(timeout)
        runs = [
            [
                (timestamp, partition, offset, delivery)
                for timestamp, offset, delivery in state.letters
                if self._include_settled or offset not in state.settled
            ]
            for partition, state in sorted(partitions.items())
        ]
        merged = heapq.merge(*runs, key=lambda entry: (entry[0], entry[1]))
        return [delivery for *_, delivery in itertools.islice(merged, max(0, limit))]

    def remove(self, deliveries: Iterable[Delivery]) -> None:
        """Append a settlement marker for each delivery, confirmed by the broker.

        Raises:
            PublishError: a marker was not confirmed (that letter stays listed).
        """
        positions = sorted(
            {d.token for d in deliveries if isinstance(d.token, RecordPosition)},
            key=lambda p: (p.partition, p.offset),
        )
        if not positions:
            return
        producer = self._marker_producer()
        results: dict[RecordPosition, KafkaError | str | None] = {}

        def delivered(position: RecordPosition, error: KafkaError | None, _: Any) -> None:
            results[position] = error

        for position in positions:
            results[position] = "not confirmed in time"
            producer.produce(
                self._topic,
                b"",
                None,
                partition=position.partition,
                headers=[(HEADER_SETTLES, str(position.offset).encode())],
                on_delivery=functools.partial(delivered, position),
            )
        producer.flush(self._context.publish_timeout)
        failed = {p: e for p, e in results.items() if e is not None}
        if failed:
            position, error = next(iter(failed.items()))
            reason = error if isinstance(error, str) else self._context.describe(error)
            raise PublishError(
                f"{len(failed)} of {len(positions)} removal(s) from {self._topic!r} not "
                f"confirmed (those records stay), e.g. offset {position.offset} of partition "
                f"{position.partition}: {reason}"
            )

    def letters_below(self, ends: dict[int, int], timeout: float) -> int:
        """How many unsettled letters lie below ``ends`` (end offset per partition)."""
        return sum(
            1
            for partition, state in self._read_all(timeout).items()
            for _, offset, _ in state.letters
            if offset < ends.get(partition, 0) and offset not in state.settled
        )

    def close(self) -> None:
        """Disconnect (markers in flight were flushed by :meth:`remove`). Idempotent."""
        self._consumer.close()
        self._producer = None

    # -- internals ------------------------------------------------------------------------

    def _read_all(self, timeout: float) -> dict[int, _Partition]:
        """Every record of every partition, from its start to its end at the time of reading.

        Raises:
            BrokerUnavailable: some partition was not read to its end within ``timeout``.
        """
        consumer = self._consumer
        consumer.assign(
            [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in self._partitions]
        )
        states = {p: _Partition([], set()) for p in self._partitions}
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(at_end) < len(self._partitions):
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise BrokerUnavailable(
                    f"could not read Kafka topic {self._topic!r} to its end within {timeout:g} s "
                    f"({len(at_end)} of {len(self._partitions)} partitions done)"
                )
            for record in consumer.consume(num_messages=500, timeout=min(wait, 0.5)):
                self._take(record, states, at_end)
        return states

    def _take(self, record: Record, states: dict[int, _Partition], at_end: set[int]) -> None:
        partition, offset, error = record.partition(), record.offset(), record.error()
        if partition is None or partition not in states:
            return
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                at_end.add(partition)
            return
        at_end.discard(partition)
        if offset is None:
            return
        settled = _settles(record)
        if settled is not None:
            states[partition].settled.add(settled)
            return
        delivery = decode_record(
            source=self._topic,
            key=record.key(),
            value=record.value(),
            headers=record.headers(),
            token=RecordPosition(partition, offset),
            redelivered=False,
        )
        states[partition].letters.append((record.timestamp()[1], offset, delivery))

    def _marker_producer(self) -> Producer:
        if self._producer is None:
            events = ClientEvents(self._context, "producer")
            config = self._context.config(
                events, required={"enable.idempotence": True, "acks": "all"}
            )
            self._producer = self._context.build(Producer, config, "producer")
        return self._producer


__all__ = ["KafkaBrowser", "RecordPosition"]
