"""Dead-letter queue administration: list, inspect, replay and purge a group's DLQ.

A DLQ is per ``(group, topic)``: ``<group>.<topic>.dlq``. Replaying a message sends it back
to that group only, as attempt 1 with the next replay generation (``x-txmq-replay``), which
gives it a new inbox key (``id#replay-n``): the inbox does not swallow it as a duplicate of
the failed original, but does deduplicate a replay that happens twice (a crash between
the republish and the DLQ acknowledgement repeats the same generation).

Where a replay goes: on RabbitMQ straight into the group's work queue; on Kafka, where a
group reads the shared topic, into the topic with ``x-txmq-target-group`` set, so that
the other groups acknowledge it without processing it.

A message whose failure already sent a compensation event (``x-txmq-compensation-id``)
is not replayed unless forced: its effect was undone at the producer, and applying it now
would apply it after all.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from txmq.adapters import Adapter, Delivery, Topology, connect, dead_letter_queue, work_queue
from txmq.adapters.base import Closing
from txmq.consumer.envelopes import replay_copy
from txmq.consumer.headers import (
    HEADER_COMPENSATION_ID,
    HEADER_RAW,
    HEADER_TARGET_GROUP,
    parse_attempt,
    parse_timestamp,
    replay_generation,
)
from txmq.message import (
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FIRST_FAILURE,
    HEADER_LAST_FAILURE,
    Message,
    validate_name,
)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a DLQ and why it is there.

    Attributes:
        message: the message as parked (same id as the original, except for undecodable
            messages, which got a fresh id; ``raw`` is then True).
        error_type: type of the final error, e.g. ``"ValueError"``.
        error_message: its text (truncated, redacted).
        attempts: how many attempts were made.
        first_failure_at: epoch seconds of the first failure.
        last_failure_at: epoch seconds of the last failure.
        replay_generation: how often it was replayed before failing again.
        compensation_id: the id of the compensation event sent for it, if any.
        raw: True for an undecodable message wrapped as it arrived.
    """

    message: Message
    error_type: str
    error_message: str
    attempts: int
    first_failure_at: float | None
    last_failure_at: float | None
    replay_generation: int
    compensation_id: str | None
    raw: bool

    @classmethod
    def from_message(cls, message: Message) -> DeadLetter:
        h = message.headers
        return cls(
            message=message,
            error_type=h.get(HEADER_ERROR_TYPE, ""),
            error_message=h.get(HEADER_ERROR_MESSAGE, ""),
            attempts=parse_attempt(h),
            first_failure_at=parse_timestamp(h.get(HEADER_FIRST_FAILURE)),
            last_failure_at=parse_timestamp(h.get(HEADER_LAST_FAILURE)),
            replay_generation=replay_generation(h),
            compensation_id=h.get(HEADER_COMPENSATION_ID),
            raw=h.get(HEADER_RAW) == "1",
        )


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What :meth:`DeadLetters.replay` did: ids replayed, ids left because compensated."""

    replayed: list[str]
    skipped_compensated: list[str]


class DeadLetters(Closing):
    """The DLQ of one consumer group for one topic.

    Args:
        broker: an adapter (left open) or a broker URL (connected and closed here).
        group: the consumer group.
        topic: the logical topic.

    Example:
        >>> with DeadLetters("rabbitmq://guest:guest@127.0.0.1/", group="cart",
        ...                  topic="orders.created") as dlq:  # doctest: +SKIP
        ...     for letter in dlq.list():
        ...         print(letter.message.id, letter.error_type, letter.error_message)
        ...     dlq.replay([letter.message.id])
    """

    def __init__(self, broker: Adapter | str | None, *, group: str, topic: str) -> None:
        self.group = validate_name(group, "group")
        self.topic = validate_name(topic, "topic")
        self.queue = dead_letter_queue(group, topic)
        if isinstance(broker, Adapter):
            self._adapter, self._owns = broker, False
        else:
            self._adapter, self._owns = connect(broker), True

    def list(self, *, limit: int = 100, timeout: float = 5.0) -> list[DeadLetter]:
        """Up to ``limit`` parked messages, oldest first; they stay in the DLQ.

        On Kafka the DLQ is a log: replayed messages stay listed (what was replayed is
        recorded by the ``<group>.dlq-admin`` consumer group's committed offset) until
        :meth:`purge` or the topic's retention removes them.
        """
        deliveries = self._adapter.read_queue(self.queue, limit=limit, timeout=timeout)
        return [DeadLetter.from_message(d.message) for d in deliveries if d.message is not None]

    def show(
        self, message_id: str, *, limit: int = 1000, timeout: float = 5.0
    ) -> DeadLetter | None:
        """The parked message with id ``message_id`` among the first ``limit``, if any."""
        for letter in self.list(limit=limit, timeout=timeout):
            if letter.message.id == message_id:
                return letter
        return None

    def replay(
        self,
        message_ids: Collection[str] | None = None,
        *,
        force: bool = False,
        limit: int = 1000,
        timeout: float = 30.0,
        idle: float = 5.0,
    ) -> ReplayResult:
        """Send parked messages back to the group and remove them from the DLQ.

        Args:
            message_ids: which messages; all of them (up to ``limit``) when omitted.
            force: replay compensated messages too (their effect was undone at the producer).
            limit: the most messages handled in one call.
            timeout: the longest the whole call may take.
            idle: stop after this many seconds without a message (on Kafka, where the DLQ
                keeps replayed records, this is how the call knows it has caught up).

        Returns:
            the ids replayed and the ids skipped because compensated.

        Raises:
            PublishError: a replay copy was not confirmed (the DLQ message stays).
            BrokerUnavailable: the broker cannot be reached.
        """
        expected = len(self._adapter.read_queue(self.queue, limit=limit, timeout=timeout))
        result = ReplayResult([], [])
        if expected == 0:
            return result
        wanted = None if message_ids is None else set(message_ids)
        destination = self._destination()
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        seen = 0
        with (
            self._adapter.subscribe(f"{self.group}.dlq-admin", [self.queue], prefetch=limit) as sub,
            self._adapter.publisher() as publisher,
        ):
            # Deliveries left alone stay unacknowledged until the subscription closes, so
            # RabbitMQ does not hand them straight back to this loop.
            while seen < min(expected, limit):
                now = time.monotonic()
                if now >= deadline or now - quiet_since >= idle:
                    break
                deliveries = sub.poll(min(1.0, deadline - now), limit - seen)
                if deliveries:
                    quiet_since = time.monotonic()
                seen += len(deliveries)
                chosen = [d for d in deliveries if self._chosen(d, wanted, force, result)]
                copies = [self._copy(d) for d in chosen]
                for outcome in publisher.send_to_queue(destination, copies):
                    if outcome.error is not None:
                        raise outcome.error
                sub.ack(chosen)
                result.replayed.extend(c.id for c in copies)
        return result

    def _chosen(
        self, delivery: Delivery, wanted: set[str] | None, force: bool, result: ReplayResult
    ) -> bool:
        message = delivery.message
        if message is None or (wanted is not None and message.id not in wanted):
            return False
        if message.headers.get(HEADER_COMPENSATION_ID) and not force:
            result.skipped_compensated.append(message.id)
            return False
        return True

    def _copy(self, delivery: Delivery) -> Message:
        assert delivery.message is not None  # checked by _chosen
        copy = replay_copy(delivery.message)
        return copy.with_headers(**{HEADER_TARGET_GROUP: self.group})

    def _destination(self) -> str:
        """The group's own work queue where it has one (RabbitMQ); else the topic (Kafka)."""
        own = work_queue(self.group, self.topic)
        sources = self._adapter.sources_for([Topology(self.group, self.topic)])
        return own if own in sources else self.topic

    def purge(self) -> int:
        """Delete every parked message; return how many (-1 if the broker does not say)."""
        return self._adapter.purge_queue(self.queue)

    def close(self) -> None:
        if self._owns:
            self._adapter.close()


__all__ = ["DeadLetter", "DeadLetters", "ReplayResult"]
