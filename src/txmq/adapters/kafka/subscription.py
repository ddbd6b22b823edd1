"""Consuming from Kafka with manual, per-message acknowledgement.

A Kafka group remembers one offset per partition, so acknowledging single messages is
built here: :class:`~txmq.adapters.kafka.offsets.OffsetTracker` works out, per
partition, the offset just past the longest run of finished messages, and that is what
gets committed. Nothing is committed automatically (``enable.auto.commit=false``), and
only committed transactions are read (``isolation.level=read_committed``), so half
messages and aborted relay batches are never delivered.

The subscription also keeps two Kafka details from its caller: a retry topic is read at
once, so a retry that is not due yet is given back and its topic paused until then
(:class:`~txmq.adapters.due_time.DueTimeGate`); and a group reads the topic itself, where
DLQ replays of every group arrive, so a replay addressed to another group
(``x-txmq-target-group``) is acknowledged without being handed out.

And it does not stay silent when librdkafka stops working for it: a member that has
messages to read and receives none, or that waits for its partitions longer than any
rebalance may take, raises :class:`~txmq.errors.BrokerUnavailable`, and the consumer
builds a new one (see :class:`~txmq.adapters.kafka.stall.StallWatch`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import Message as Record

from txmq.adapters.base import Subscription, Withheld
from txmq.adapters.due_time import DueTimeGate
from txmq.adapters.kafka.client import ClientEvents, KafkaContext, logger
from txmq.adapters.kafka.offsets import OffsetTracker, PartitionKey, Position
from txmq.adapters.kafka.stall import StallWatch
from txmq.adapters.kafka.wire import decode_record
from txmq.errors import BrokerUnavailable
from txmq.wire import HEADER_TARGET_GROUP, Delivery

#: librdkafka's ``OFFSET_INVALID``: no position (nothing fetched yet) or no committed offset.
_NO_OFFSET = -1001

#: Rebalancing: ``cooperative-sticky`` moves only the partitions that change owner, so a
#: consumer joining or leaving does not make every member drop its in-flight messages
#: and pauses; a 10 s session notices a dead consumer quickly without flapping on a
#: busy 2-core machine. All overridable by the URL's options.
_CONSUMER_DEFAULTS: dict[str, Any] = {
    "partition.assignment.strategy": "cooperative-sticky",
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 3_000,
    "enable.partition.eof": False,
}
#: What txmq's semantics rest on (see the module docstring).
CONSUMER_REQUIRED: dict[str, Any] = {
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # A new group starts at the beginning, so nothing published between declare() and
    # the group's first poll is skipped.
    "auto.offset.reset": "earliest",
}
#: Seconds between asynchronous offset commits: acknowledgements in between are coalesced.
COMMIT_INTERVAL = 0.1
#: Fetch budget per prefetched message, and the bounds of the whole fetch buffer.
_KBYTES_PER_PREFETCH = 16
_MIN_QUEUE_KBYTES, _MAX_QUEUE_KBYTES = 1024, 65_536
#: How long librdkafka waits before fetching again for a buffer that was full. Its default
#: (1 s) suits its own 100k-message buffers; a prefetch-sized one is emptied long before,
#: and the wait capped consumption at about 7k msg/s.
_REFILL_BACKOFF_MS = 10


def prefetch_config(prefetch: int) -> dict[str, Any]:
    """librdkafka's fetch buffer, sized from a RabbitMQ-style ``prefetch``.

    librdkafka fetches ahead into a local queue: it keeps fetching while a partition has
    fewer than ``queued.min.messages`` waiting and the queue holds less than
    ``queued.max.messages.kbytes``. ``prefetch`` sets the first and, at 16 KiB a message
    (1-64 MiB overall), the second. Unlike RabbitMQ's prefetch it does not bound the
    number of unacknowledged deliveries: that is up to how many the caller polls.
    """
    prefetch = max(1, prefetch)
    kbytes = min(_MAX_QUEUE_KBYTES, max(_MIN_QUEUE_KBYTES, prefetch * _KBYTES_PER_PREFETCH))
    return {
        "queued.min.messages": prefetch,
        "queued.max.messages.kbytes": kbytes,
        "fetch.queue.backoff.ms": _REFILL_BACKOFF_MS,
    }


def _fetch(consumer: Consumer, max_records: int, timeout: float) -> list[Record]:
    """Wait up to ``timeout`` for the first record, then take what else is already fetched.

    ``Consumer.consume`` alone would wait the whole timeout unless ``max_records`` arrive.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    if max_records <= 1:
        return [first]
    return [first, *consumer.consume(num_messages=max_records - 1, timeout=0)]


class KafkaSubscription(Subscription):
    """A consumer group member over Kafka topics, acknowledging message by message.

    * :meth:`ack` commits per partition the offset past the longest run of acknowledged
      messages: an unacknowledged message at offset ``k`` keeps the commit at ``k`` even
      when later ones are done, so it is redelivered if this consumer dies. Commits are
      asynchronous and coalesced (at most one per 0.1 s, sent by :meth:`ack` or
      :meth:`poll`); a failed one is sent again. A commit lost to a crash only means
      redelivery of finished messages, never that an unfinished one is skipped.
    * :meth:`release` seeks the partition back to the lowest released offset: that
      message and every later one of its partition are delivered again.
    * :meth:`pause` / :meth:`resume` stop and restart fetching from topics. Messages
      already returned by :meth:`poll` are not taken back by pausing: :meth:`release` them.
    * :meth:`poll` hands out neither a retry that is not due yet (it is released and its
      retry topic paused until due; the poll waits no longer than that) nor a DLQ replay
      addressed to another group (acknowledged); :meth:`withheld` counts both.
    * On a rebalance, and on :meth:`close`, what is finished is committed synchronously
      before partitions are given up; deliveries of revoked partitions can no longer be
      acknowledged (their next owner gets them again).
    * ``Delivery.redelivered`` is true for records this subscription delivered before
      (after :meth:`release`); Kafka does not say whether another member had them.
    * A wedged member is not left idling: :meth:`poll` raises
      :class:`~txmq.errors.BrokerUnavailable` when an assigned, unpaused partition has had
      committed messages past this member's position for the URL's ``stall_timeout``
      (60 s) while nothing came, or when a rebalance has left it without partitions for
      longer than ``max.poll.interval.ms`` plus ``session.timeout.ms`` plus that timeout.
      The consumer then closes it and subscribes again with a new librdkafka client.

    Build it with :meth:`txmq.adapters.kafka.KafkaAdapter.subscribe`.
    """

    settles_at_once = True  # ack() books offsets and commits asynchronously

    def __init__(
        self, context: KafkaContext, group: str, sources: Sequence[str], *, prefetch: int
    ) -> None:
        self.group = group
        self._context = context
        self._events = ClientEvents(context, f"consumer of group {group!r}")
        self._tracker = OffsetTracker()
        self._paused: set[str] = set()
        self._gate = DueTimeGate(group, sources)
        self._skipped = 0
        self._closed = False
        self._next_commit = 0.0  # time.monotonic() from which an asynchronous commit may go
        config = context.config(
            self._events,
            defaults={**_CONSUMER_DEFAULTS, **prefetch_config(prefetch)},
            required={**CONSUMER_REQUIRED, "group.id": group, "on_commit": self._on_commit},
        )
        self._cooperative = config["partition.assignment.strategy"] == "cooperative-sticky"
        stall_after = context.settings.stall_timeout
        rebalance_bound = _seconds(config, "max.poll.interval.ms", 300_000) + _seconds(
            config, "session.timeout.ms", 45_000
        )
        self._watch = StallWatch(
            stall_after=stall_after, join_bound=rebalance_bound + stall_after, now=time.monotonic()
        )
        self._consumer = context.build(Consumer, config, "consumer")
        self._consumer.subscribe(
            list(sources),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- Subscription protocol ----------------------------------------------------------

    def poll(self, timeout: float, max_messages: int = 100) -> list[Delivery]:
        """Return up to ``max_messages`` deliveries, waiting up to ``timeout`` s for the first.

        Raises:
            BrokerUnavailable: the consumer failed for good, or no broker can be reached
                (the subscription reconnects by itself and may be polled again).
        """
        consumer = self._open_consumer()
        timeout = self._gate.open(self, timeout)
        self._commit_soon(consumer)
        try:
            records = _fetch(consumer, max_messages, timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"Kafka consumer of group {self.group!r} failed: {self._context.describe(exc)}"
            ) from exc
        deliveries = [d for d in map(self._delivery, records) if d is not None]
        if self._events.fatal is not None:
            raise BrokerUnavailable(
                f"Kafka consumer of group {self.group!r} failed for good: "
                f"{self._context.describe(self._events.fatal)}"
            )
        if not deliveries and self._events.brokers_down:
            self._check_reachable(consumer, timeout)
        if records:
            self._watch.fetched(time.monotonic())
        else:
            self._check_progress(consumer)
        return self._others_dropped(self._gate.admit(self, deliveries))

    def ack(self, deliveries: Iterable[Delivery]) -> None:
        """Mark ``deliveries`` done; what that makes committable is committed asynchronously.

        Deliveries of partitions revoked since they were polled are ignored: the new owner
        of the partition gets them again.
        """
        consumer = self._open_consumer()
        for delivery in deliveries:
            if isinstance(delivery.token, Position):
                self._tracker.done(delivery.token)
        self._commit_soon(consumer)

    def release(self, deliveries: Iterable[Delivery]) -> None:
        """Deliver ``deliveries`` again: seek each partition back to its lowest one."""
        consumer = self._open_consumer()
        lowest: dict[PartitionKey, Position] = {}
        for delivery in deliveries:
            token = delivery.token
            if isinstance(token, Position):
                held = lowest.get(token.key)
                if held is None or token.offset < held.offset:
                    lowest[token.key] = token
        for position in lowest.values():
            if not self._tracker.release(position):
                continue
            try:
                consumer.seek(TopicPartition(position.topic, position.partition, position.offset))
            except KafkaException as exc:
                # The partition was revoked meanwhile: its next owner reads it again anyway.
                logger.debug(
                    "seek to %s[%d]@%d failed: %s",
                    position.topic,
                    position.partition,
                    position.offset,
                    self._context.describe(exc),
                )

    def pause(self, sources: Iterable[str]) -> None:
        """Stop fetching from topics ``sources``, also on partitions assigned later."""
        topics = set(sources)
        self._paused |= topics
        partitions = self._assigned(topics)
        if partitions:
            self._open_consumer().pause(partitions)

    def resume(self, sources: Iterable[str]) -> None:
        """Fetch from topics ``sources`` again."""
        topics = set(sources)
        self._paused -= topics
        partitions = self._assigned(topics)
        if partitions:
            self._open_consumer().resume(partitions)

    def withheld(self) -> Withheld:
        """Retries given back as not due, and other groups' replays acknowledged, since the
        last call."""
        skipped, self._skipped = self._skipped, 0
        return Withheld(held=self._gate.take_held(), skipped=skipped)

    def assignment(self) -> list[tuple[str, int]]:
        """The ``(topic, partition)`` pairs this member currently owns, sorted."""
        return sorted((tp.topic, tp.partition) for tp in self._open_consumer().assignment())

    def close(self) -> None:
        """Commit what is finished, leave the group and disconnect. Idempotent.

        Unacknowledged deliveries are delivered again to the group. The commit waits for
        the broker; without a reachable group coordinator it gives up after
        ``session.timeout.ms`` (10 s by default).
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._commit_now(self._consumer, self._tracker.unconfirmed())
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            logger.warning(
                "closing Kafka consumer of group %r: %s", self.group, self._context.describe(exc)
            )

    # -- internals ------------------------------------------------------------------------

    def _open_consumer(self) -> Consumer:
        if self._closed:
            raise BrokerUnavailable(f"the Kafka subscription of group {self.group!r} is closed")
        return self._consumer

    def _delivery(self, record: Record) -> Delivery | None:
        error = record.error()
        if error is not None:
            if error.fatal():
                self._events.fatal = error
            elif error.code() != KafkaError._PARTITION_EOF:
                logger.warning(
                    "Kafka consumer of group %r: %s", self.group, self._context.describe(error)
                )
            return None
        self._events.brokers_down = False
        topic, partition, offset = record.topic(), record.partition(), record.offset()
        if topic is None or partition is None or offset is None:
            return None
        position, redelivered = self._tracker.track(topic, partition, offset)
        return decode_record(
            source=topic,
            key=record.key(),
            value=record.value(),
            headers=record.headers(),
            token=position,
            redelivered=redelivered,
        )

    def _others_dropped(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Acknowledge the DLQ replays of other groups (they share the topic); return the rest."""
        ours: list[Delivery] = []
        theirs: list[Delivery] = []
        for delivery in deliveries:
            target = (
                None
                if delivery.message is None
                else delivery.message.headers.get(HEADER_TARGET_GROUP)
            )
            (ours if target is None or target == self.group else theirs).append(delivery)
        if theirs:
            self._skipped += len(theirs)
            self.ack(theirs)
        return ours

    def _check_reachable(self, consumer: Consumer, timeout: float) -> None:
        """After librdkafka said every broker is down: raise unless a broker answers now."""
        probe = min(self._context.connect_timeout, max(timeout, 1.0))
        try:
            consumer.list_topics(timeout=probe)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"Kafka at {self._context.url} cannot be reached: {self._context.describe(exc)}"
            ) from exc
        self._events.brokers_down = False

    def _check_progress(self, consumer: Consumer) -> None:
        """After a poll that fetched nothing: raise if this member is wedged (see
        :class:`~txmq.adapters.kafka.stall.StallWatch`)."""
        now = time.monotonic()
        waited = self._watch.waited_too_long(now)
        if waited is not None:
            raise BrokerUnavailable(
                f"Kafka consumer of group {self.group!r} has waited {waited:.0f} s for its "
                "partitions, longer than a rebalance may take; it is wedged, and a new "
                "consumer joins in its place"
            )
        if not self._watch.should_look(now):
            return
        stuck = self._watch.looked(now, self._lagging(consumer))
        if stuck:
            where = ", ".join(f"{t}[{p}] at offset {o}" for (t, p), o in sorted(stuck.items()))
            raise BrokerUnavailable(
                f"Kafka consumer of group {self.group!r} received nothing for "
                f"{self._watch.stall_after:.0f} s although committed messages wait past "
                f"its position on {where}; it is wedged, and a new consumer joins in its place"
            )

    def _lagging(self, consumer: Consumer) -> dict[PartitionKey, int]:
        """Owned, unpaused partitions with committed messages past this member's position
        (key -> position). Empty when the broker cannot tell right now."""
        partitions = [tp for tp in consumer.assignment() if tp.topic not in self._paused]
        if not partitions:
            return {}
        probe = min(self._context.connect_timeout, 5.0)
        lagging: dict[PartitionKey, int] = {}
        try:
            committed: dict[PartitionKey, int] | None = None
            for tp in consumer.position(partitions):
                key = (tp.topic, tp.partition)
                position = tp.offset
                if position < 0:  # nothing fetched yet: it starts from the committed offset
                    if committed is None:
                        answer = consumer.committed(partitions, timeout=probe)
                        committed = {(c.topic, c.partition): c.offset for c in answer}
                    position = committed.get(key, _NO_OFFSET)
                # With read_committed, the end offset is the last stable one: the messages
                # of a transaction still open do not count.
                bounds = consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=probe, cached=False
                )
                if bounds is None:
                    continue
                low, high = bounds
                if position < 0:  # no committed offset either: auto.offset.reset=earliest
                    position = low
                if position < high:
                    lagging[key] = position
        except KafkaException as exc:
            logger.debug(
                "Kafka consumer of group %r: positions not known now: %s",
                self.group,
                self._context.describe(exc),
            )
            return {}
        return lagging

    def _commit_soon(self, consumer: Consumer) -> None:
        """Send the new commit points asynchronously, unless one was sent very recently.

        Nothing waits for the broker: the result comes to :meth:`_on_commit` during a
        later poll. Coalescing keeps per-message acks from making a commit each.
        """
        now = time.monotonic()
        if now < self._next_commit:
            return
        points = self._tracker.commit_points()
        if not points:
            return
        self._next_commit = now + COMMIT_INTERVAL
        try:
            consumer.commit(offsets=_topic_partitions(points), asynchronous=True)
        except KafkaException as exc:
            logger.warning(
                "Kafka offset commit of group %r not sent (sent again later): %s",
                self.group,
                self._context.describe(exc),
            )
            return
        for key, offset in points.items():
            self._tracker.requested(key, offset)

    def _commit_now(self, consumer: Consumer, points: dict[PartitionKey, int]) -> None:
        """Commit ``points`` synchronously (partitions are being given up: last chance)."""
        if not points:
            return
        try:
            results = consumer.commit(offsets=_topic_partitions(points), asynchronous=False)
        except KafkaException as exc:
            logger.warning(
                "Kafka offset commit of group %r failed (the messages are delivered again): %s",
                self.group,
                self._context.describe(exc),
            )
            return
        for result in results or ():
            if result.error is None:
                self._tracker.confirmed((result.topic, result.partition), result.offset)
            else:
                self._log_commit_failure(result, result.error)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Result of an asynchronous commit (confluent-kafka's ``on_commit``)."""
        for result in partitions:
            key, failure = (result.topic, result.partition), result.error or error
            if failure is None:
                self._tracker.confirmed(key, result.offset)
            else:
                self._tracker.failed(key, result.offset)
                self._log_commit_failure(result, failure)

    def _log_commit_failure(self, result: TopicPartition, error: KafkaError) -> None:
        logger.warning(
            "Kafka offset commit of group %r for %s[%d] failed: %s",
            self.group,
            result.topic,
            result.partition,
            self._context.describe(error),
        )

    def _assigned(self, topics: set[str]) -> list[TopicPartition]:
        return [tp for tp in self._open_consumer().assignment() if tp.topic in topics]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._watch.assigned(time.monotonic())
        self._tracker.assign((tp.topic, tp.partition) for tp in partitions)
        # Assign here rather than letting confluent-kafka do it after this callback, so
        # partitions of paused topics can be paused before anything is fetched from them.
        if self._cooperative:
            consumer.incremental_assign(partitions)
        else:
            consumer.assign(partitions)
        paused = [tp for tp in partitions if tp.topic in self._paused]
        if paused:
            consumer.pause(paused)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._watch.rebalancing(time.monotonic())
        keys = [(tp.topic, tp.partition) for tp in partitions]
        if not self._closed:  # close() has just committed, or found it could not
            self._commit_now(consumer, self._tracker.unconfirmed(keys))
        self._tracker.revoke(keys)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: the group already gave them to someone else; a commit would fail.
        self._watch.rebalancing(time.monotonic())
        self._tracker.revoke((tp.topic, tp.partition) for tp in partitions)


def _seconds(config: dict[str, Any], option: str, default_ms: int) -> float:
    """A librdkafka ``*.ms`` option in seconds (URL options arrive as strings)."""
    return float(config.get(option, default_ms)) / 1000


def _topic_partitions(points: dict[PartitionKey, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, part, offset) for (topic, part), offset in points.items()]
