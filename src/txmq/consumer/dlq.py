"""Dead-letter queue administration: list, inspect, replay and purge a group's DLQ.

A DLQ is per ``(group, topic)``: ``<group>.<topic>.dlq``. Replaying a message sends it back
to that group only, as attempt 1 with the next replay generation (``x-txmq-replay``), which
gives it a new inbox key (``id#replay-n``): the inbox does not swallow it as a duplicate of
the failed original, but does deduplicate a replay that happens twice (a crash between
the republish and the DLQ acknowledgement repeats the same generation).

Where a replay goes is the adapter's answer (:meth:`Adapter.replay_destination`): on
RabbitMQ straight into the group's work queue; on Kafka, where a group reads the shared
topic, into the topic. Either way it carries ``x-txmq-target-group``, so that where other
groups read it too their subscriptions acknowledge it without handing it out.

A replayed or purged letter is listed no more, and replayed again only when asked
(``include_replayed``): RabbitMQ acknowledges it out of the queue; on Kafka, whose DLQ
topic is a log, a marker record after the letter in its partition settles it (see
:mod:`txmq.adapters.kafka.browser` for why a marker rather than a committed offset).

A message whose failure already sent a compensation event (``x-txmq-compensation-id``)
is not replayed unless forced: its effect was undone at the producer, and applying it now
would apply it after all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from txmq.adapters import (
    Adapter,
    PublishOutcome,
    QueueBrowser,
    connect,
    dead_letter_queue,
)
from txmq.errors import QueueNotFound
from txmq.lifecycle import Closing
from txmq.message import Message, validate_name
from txmq.tracing import publishing
from txmq.wire import (
    HEADER_COMPENSATION_ID,
    HEADER_ERROR_MESSAGE,
    HEADER_ERROR_TYPE,
    HEADER_FIRST_FAILURE,
    HEADER_LAST_FAILURE,
    HEADER_RAW,
    HEADER_TARGET_GROUP,
    Delivery,
    parse_attempt,
    parse_timestamp,
    replay_copy,
    replay_generation,
)

#: Replay copies published per round trip: the unit in which ``replay(progress=)`` advances.
REPLAY_CHUNK = 200


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
    """What :meth:`DeadLetters.replay` did.

    Attributes:
        replayed: ids sent back to the group (and removed from the DLQ).
        skipped_compensated: ids left in the DLQ because a compensation was sent for them.
        not_found: ids asked for that are not among the letters read (typo, already
            replayed or purged, or beyond ``limit``).
    """

    replayed: list[str]
    skipped_compensated: list[str]
    not_found: list[str] = field(default_factory=list)


class DeadLetters(Closing):
    """The DLQ of one consumer group for one topic.

    A replayed or purged letter is no longer listed, and is not replayed again unless
    asked (``include_replayed``), on both brokers: on RabbitMQ it has left the queue; on
    Kafka, where the DLQ topic is a log, replaying appends a marker record after the
    letter in its partition, and listing leaves settled letters out.

    Args:
        broker: an adapter (left open) or a broker URL (connected and closed here).
        group: the consumer group.
        topic: the logical topic.

    Every method raises :class:`~txmq.errors.QueueNotFound` when the DLQ does not exist
    (a mistyped group or topic: it is created when a consumer of the group starts) and
    :class:`~txmq.errors.BrokerUnavailable` when the broker cannot be reached.

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

    def list(
        self, *, limit: int = 100, timeout: float = 5.0, include_replayed: bool = False
    ) -> list[DeadLetter]:
        """Up to ``limit`` parked messages, oldest first; they stay in the DLQ.

        Args:
            limit: the most letters returned.
            timeout: the longest the reading may take (Kafka reads the DLQ topic to its end).
            include_replayed: Kafka: list replayed letters too (the log keeps them until
                :meth:`purge` or retention). RabbitMQ: no effect.
        """
        with self._browse(include_replayed) as browser:
            deliveries = browser.read(limit=limit, timeout=timeout)
        return [DeadLetter.from_message(d.message) for d in deliveries if d.message is not None]

    def show(
        self,
        message_id: str,
        *,
        limit: int = 1000,
        timeout: float = 5.0,
        include_replayed: bool = False,
    ) -> DeadLetter | None:
        """The parked message with id ``message_id`` among the first ``limit``, if any."""
        for letter in self.list(limit=limit, timeout=timeout, include_replayed=include_replayed):
            if letter.message.id == message_id:
                return letter
        return None

    def replay(
        self,
        message_ids: Collection[str] | None = None,
        *,
        force: bool = False,
        include_replayed: bool = False,
        limit: int = 1000,
        timeout: float = 30.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult:
        """Send parked messages back to the group and remove them from the DLQ.

        A letter is removed only once its copy is confirmed by the broker. Should the
        removal not happen (a crash in between), a later replay sends the same replay
        generation again, which the group's inbox applies at most once.

        Args:
            message_ids: which messages; all of them (up to ``limit``) when omitted.
            force: replay compensated messages too (their effect was undone at the
                producer); without it they stay in the DLQ and are reported as skipped.
            include_replayed: Kafka: replay letters that were replayed before, again
                (RabbitMQ: no effect, a replayed letter has left the queue).
            limit: the most letters read in one call.
            timeout: the longest the reading may take.
            progress: called with the copies confirmed so far and how many are sent, once
                the letters are read and after every :data:`REPLAY_CHUNK` copies.

        Returns:
            the ids replayed, the ids skipped because compensated, the ids not found.

        Raises:
            PublishError: a replay copy was not confirmed (its letter stays in the DLQ;
                the letters whose copies were confirmed are removed), or a removal was
                not confirmed (the letter stays; replaying it again sends the same
                generation, which the inbox applies at most once).
            QueueNotFound: the DLQ does not exist.
            BrokerUnavailable: the broker cannot be reached.
        """
        wanted = None if message_ids is None else set(message_ids)
        result = ReplayResult([], [])
        with self._browse(include_replayed) as browser:
            deliveries = browser.read(limit=limit, timeout=timeout)
            chosen = [d for d in deliveries if self._chosen(d, wanted, force, result)]
            if wanted is not None:
                present = {d.message.id for d in deliveries if d.message is not None}
                result.not_found.extend(sorted(wanted - present))
            if not chosen:
                return result
            copies = [self._copy(d) for d in chosen]
            outcomes: list[PublishOutcome] = []
            with self._adapter.publisher() as publisher:
                destination = self._adapter.replay_destination(self.group, self.topic)
                for start in range(0, len(copies), REPLAY_CHUNK):
                    if progress is not None:
                        progress(start, len(copies))
                    chunk = copies[start : start + REPLAY_CHUNK]
                    system = self._adapter.system
                    with publishing(chunk, system=system, operation="replay") as settled:
                        confirmed = publisher.send_to_queue(destination, chunk)
                        settled(confirmed)
                    outcomes += confirmed
            if progress is not None:
                progress(len(copies), len(copies))
            sent = [d for d, outcome in zip(chosen, outcomes, strict=True) if outcome.ok]
            browser.remove(sent)
            for outcome in outcomes:
                if outcome.error is not None:
                    raise outcome.error
        result.replayed.extend(c.id for c in copies)
        return result

    def _browse(self, include_replayed: bool) -> QueueBrowser:
        try:
            return self._adapter.browse(self.queue, include_settled=include_replayed)
        except QueueNotFound as exc:
            raise self._missing() from exc

    def _missing(self) -> QueueNotFound:
        return QueueNotFound(
            f"no dead-letter queue {self.queue!r} for group {self.group!r} and topic "
            f"{self.topic!r} (mistyped? it is created when a consumer of the group starts)"
        )

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

    def purge(self) -> int:
        """Delete every parked message (replayed ones included); return how many were listed.

        Raises:
            QueueNotFound: the DLQ does not exist.
            BrokerUnavailable: the broker cannot be reached.
        """
        try:
            return self._adapter.purge_queue(self.queue)
        except QueueNotFound as exc:
            raise self._missing() from exc

    def close(self) -> None:
        if self._owns:
            self._adapter.close()


__all__ = ["DeadLetter", "DeadLetters", "ReplayResult"]
