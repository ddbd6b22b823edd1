"""Publishing to Kafka: an idempotent producer, and a transactional one for the relay.

:class:`KafkaPublisher` reports each message's outcome from librdkafka's delivery reports.
:class:`KafkaTransactionalPublisher` makes each :meth:`~KafkaPublisher.publish` batch one
Kafka transaction (every outcome ok, or none), and also offers the transaction by hand
(:meth:`~KafkaTransactionalPublisher.begin`, ``produce``, ``commit``, ``abort``) for
half messages: records produced inside an open transaction are invisible to
``read_committed`` consumers until it commits, and gone for them if it aborts.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from txmq.adapters.base import Publisher, PublishOutcome, Transaction
from txmq.adapters.kafka.client import (
    ClientEvents,
    KafkaContext,
    error_of,
    is_refused,
    is_unreachable,
    logger,
    remaining,
)
from txmq.adapters.kafka.wire import encode_headers, encode_key
from txmq.errors import BrokerUnavailable, PublishError, PublishRefused
from txmq.message import Message, validate_name

#: Overridable by the URL's options.
_PRODUCER_DEFAULTS: dict[str, Any] = {
    # Java clients' partitioner: a key maps to the same partition whichever client wrote it.
    "partitioner": "murmur2_random",
    "linger.ms": 5,
}
#: What txmq's delivery guarantee rests on: no duplicates from retries, no loss on failover.
_PRODUCER_REQUIRED: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}
#: ``transaction.timeout.ms`` of a producer's half messages: the transaction stays open
#: while the application's local transaction runs.
HALF_MESSAGE_TRANSACTION_TIMEOUT_MS = 60_000
#: librdkafka options bounded by ``transaction.timeout.ms`` (plus the slack it allows).
_TIMEOUTS_WITHIN_A_TRANSACTION = (
    ("message.timeout.ms", 0),
    ("delivery.timeout.ms", 0),
    ("socket.timeout.ms", 100),
)
_QUEUE_FULL_WAIT = 0.05
#: Delivery report errors of messages taken back or timed out rather than refused.
_UNCONFIRMED_CODES = frozenset(
    {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT, KafkaError._MSG_TIMED_OUT}
)

Routed = Sequence[tuple[str, Message]]


class _Pending:
    """Outcome placeholder until a delivery report arrives."""


_PENDING = _Pending()


def _record_delivery(
    results: list[KafkaError | _Pending | None], index: int, error: KafkaError | None, _: Any
) -> None:
    results[index] = error


class KafkaPublisher(Publisher):
    """Publishes with an idempotent producer (``acks=all``); one outcome per message.

    Outcomes come from librdkafka's delivery reports. A message not confirmed within the
    batch timeout is reported failed (it may still arrive later: at-least-once, the
    message id makes the duplicate recognisable). After a fatal producer error the
    producer is replaced on the next publish.

    Build it with :meth:`txmq.adapters.kafka.KafkaAdapter.publisher`.
    """

    def __init__(self, context: KafkaContext) -> None:
        self._context = context
        self._events = ClientEvents(context, "producer")
        self._producer: Producer | None = None
        self._closed = False

    # -- Publisher protocol -------------------------------------------------------------

    def publish(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        """Publish ``messages`` to their topics; one outcome per message, same order.

        Raises:
            MessageTooLarge: a message exceeds ``max_body_bytes``; nothing was sent.
        """
        return self._send([(m.topic, m) for m in messages], timeout)

    def send_to_queue(
        self, queue: str, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[PublishOutcome]:
        """Publish ``messages`` into Kafka topic ``queue`` (a retry or dead-letter topic).

        The logical topic travels in ``x-txmq-topic``, so a consumer of ``queue`` still
        sees ``message.topic``.
        """
        validate_name(queue, "queue")
        return self._send([(queue, m) for m in messages], timeout)

    def connect(self) -> None:
        self._reach()

    def close(self) -> None:
        """Wait (up to the connect timeout) for messages in flight, then release. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            self._producer.flush(self._context.connect_timeout)
            self._discard()

    # -- internals ------------------------------------------------------------------------

    def _producer_config(self) -> dict[str, Any]:
        return self._context.config(
            self._events, defaults=_PRODUCER_DEFAULTS, required=_PRODUCER_REQUIRED
        )

    def _client(self) -> Producer:
        if self._closed:
            raise PublishError("this Kafka publisher is closed")
        if self._producer is None:
            self._events = ClientEvents(self._context, "producer")
            self._producer = self._context.build(Producer, self._producer_config(), "producer")
        return self._producer

    def _reach(self) -> None:
        """Make one metadata round trip, bounded by the connect timeout.

        Raises:
            BrokerUnavailable: no broker answered within the connect timeout.
        """
        try:
            self._client().list_topics(timeout=self._context.connect_timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"no Kafka broker at {self._context.url} answered within the connect timeout "
                f"({self._context.connect_timeout:g} s): {self._context.describe(exc)}"
            ) from exc

    def _discard(self) -> None:
        """Drop the producer without flushing: a new one is made on next use.

        ``Producer.close()`` would flush without a time limit and try to abort an open
        transaction; destroying the client after a purge does neither.
        """
        producer, self._producer = self._producer, None
        if producer is not None:
            # A producer that failed for good raises its fatal error again from here (poll
            # serves the purged messages' reports): it is dropped all the same, and the
            # caller reports the failure it is dropped for.
            with contextlib.suppress(KafkaException):
                producer.purge(in_queue=True, in_flight=True, blocking=False)
                producer.poll(0)
            del producer

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self._context.publish_timeout if timeout is None else timeout)

    def _check_sizes(self, routed: Routed) -> None:
        limit = self._context.settings.common.max_body_bytes
        for _, message in routed:
            message.check_size(limit)

    def _produce(
        self,
        producer: Producer,
        topic: str,
        message: Message,
        deadline: float,
        on_delivery: Any = None,
    ) -> None:
        """Hand one message to librdkafka, waiting (until ``deadline``) while its queue is full.

        Raises:
            PublishError: the queue stayed full until the deadline.
            KafkaException: librdkafka refused the message.
        """
        key, headers = encode_key(message), encode_headers(message)
        while True:
            try:
                producer.produce(topic, message.body, key, headers=headers, on_delivery=on_delivery)
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    raise PublishError(
                        f"message {message.id} not sent: the producer queue stayed full"
                    ) from None
                producer.poll(_QUEUE_FULL_WAIT)

    def _send(self, routed: Routed, timeout: float | None) -> list[PublishOutcome]:
        self._check_sizes(routed)
        if not routed:
            return []
        deadline = self._deadline(timeout)
        producer = self._client()
        results: list[KafkaError | _Pending | None] = [_PENDING] * len(routed)
        refused: dict[int, Exception] = {}
        for index, (topic, message) in enumerate(routed):
            try:
                self._produce(
                    producer,
                    topic,
                    message,
                    deadline,
                    functools.partial(_record_delivery, results, index),
                )
            except PublishError as exc:
                refused[index] = exc
            except KafkaException as exc:
                kind = PublishRefused if is_refused(error_of(exc)) else PublishError
                refused[index] = kind(
                    f"message {message.id} refused for {topic!r}: {self._context.describe(exc)}"
                )
        if producer.flush(remaining(deadline, floor=0)):
            # Not confirmed in time: take back what has not been sent yet rather than have
            # it go out unannounced later (what is in flight cannot be called back).
            producer.purge(in_queue=True, in_flight=False, blocking=True)
            producer.poll(0)
        if any(result is None for result in results):
            self._events.brokers_down = False
        if self._events.fatal is not None:
            self._discard()
        return [
            self._outcome(message, topic, results[i], refused.get(i))
            for i, (topic, message) in enumerate(routed)
        ]

    def _outcome(
        self,
        message: Message,
        topic: str,
        result: KafkaError | _Pending | None,
        refused: Exception | None,
    ) -> PublishOutcome:
        if refused is not None:
            return PublishOutcome(message.id, refused)
        if result is None:
            return PublishOutcome(message.id)
        if isinstance(result, _Pending) or result.code() in _UNCONFIRMED_CODES:
            reason = "not confirmed within the publish timeout"
            if self._events.brokers_down:
                reason += f"; no broker reachable at {self._context.url}"
        else:
            reason = self._context.describe(result)
            if is_refused(result):
                return PublishOutcome(
                    message.id,
                    PublishRefused(f"message {message.id} to {topic!r} refused: {reason}"),
                )
        return PublishOutcome(
            message.id, PublishError(f"message {message.id} to {topic!r} failed: {reason}")
        )


class _Fenced(PublishError):
    """The transaction failed because the producer failed for good (usually: fenced)."""


class _MessageRefused(PublishError):
    """Messages of the transaction were refused for good; the transaction was aborted."""

    def __init__(self, text: str, message_ids: Iterable[str]) -> None:
        super().__init__(text)
        self.message_ids = frozenset(message_ids)


class KafkaTransactionalPublisher(KafkaPublisher, Transaction):
    """A producer with a ``transactional.id``: each batch is one Kafka transaction.

    :meth:`publish` and :meth:`send_to_queue` run begin - produce all - commit: either
    every outcome is ok or every outcome failed. A producer fenced by a newer instance
    with the same ``transactional_id`` (or failed for good) is re-created and
    re-initialised, which in turn fences the other instance, and the batch is tried once
    more. A commit whose result librdkafka cannot establish in time is reported failed
    too; it may have been committed, and re-publishing it then yields a duplicate with
    the same message id.

    For half messages the transaction is also available by hand::

        publisher.begin()
        publisher.produce([message])   # invisible to read_committed consumers
        ...                            # run the local transaction
        publisher.commit()             # or publisher.abort()

    ``commit`` raises :class:`PublishError` when the transaction was *not* committed
    (aborted, fenced) and :class:`BrokerUnavailable` when its outcome is *unknown*; the
    caller must treat the latter as unknown (e.g. leave the half record for check-back).

    Build it with ``KafkaAdapter.publisher(identity=...)`` (a relay lane) or
    ``KafkaAdapter.transaction(identity)`` (a producer's half messages); the identity must
    be stable across restarts of the same instance and unique among live instances.
    """

    def __init__(
        self,
        context: KafkaContext,
        transactional_id: str,
        *,
        transaction_timeout_ms: int = HALF_MESSAGE_TRANSACTION_TIMEOUT_MS,
    ) -> None:
        super().__init__(context)
        self.transactional_id = transactional_id
        self.transaction_timeout_ms = transaction_timeout_ms
        self._initialised = False
        self._in_transaction = False

    # -- batches as transactions ----------------------------------------------------------

    def _send(self, routed: Routed, timeout: float | None) -> list[PublishOutcome]:
        self._check_sizes(routed)
        if self._in_transaction:
            raise PublishError("a transaction is open on this publisher: commit or abort it")
        if not routed:
            return []
        deadline = self._deadline(timeout)
        error: Exception
        for attempt in (1, 2):
            # Nothing is sent before this succeeds, so BrokerUnavailable from it propagates.
            self._ready(deadline)
            reports: list[KafkaError | _Pending | None] = [_PENDING] * len(routed)
            try:
                self._begin()
                self._produce_all(routed, deadline, reports)
                self._commit(deadline, routed, reports)
            except _MessageRefused as exc:
                refused = ", ".join(sorted(exc.message_ids))
                return [
                    PublishOutcome(
                        m.id,
                        PublishRefused(str(exc))
                        if m.id in exc.message_ids
                        else PublishError(
                            f"not sent: the transaction was aborted because {refused} was refused"
                        ),
                    )
                    for _, m in routed
                ]
            except _Fenced as exc:
                error = exc
                if attempt == 1 and time.monotonic() < deadline:
                    logger.warning(
                        "Kafka transactional producer %r: %s; re-initialised, sending the "
                        "batch once more",
                        self.transactional_id,
                        exc,
                    )
                    continue
            except PublishError as exc:
                error = exc
            except BrokerUnavailable as exc:
                error = PublishError(str(exc))
                error.__cause__ = exc
            else:
                return [PublishOutcome(m.id) for _, m in routed]
            break
        return [PublishOutcome(m.id, error) for _, m in routed]

    # -- the transaction by hand ----------------------------------------------------------

    def begin(self) -> None:
        """Open a transaction (initialising the producer first if needed).

        Raises:
            PublishError: a transaction is already open, or the producer failed.
            BrokerUnavailable: transactions could not be initialised within the publish
                timeout.
        """
        if self._in_transaction:
            raise PublishError("a transaction is already open on this publisher")
        self._ready(self._deadline(None))
        self._begin()

    def produce(self, messages: Sequence[Message]) -> None:
        """Produce ``messages`` inside the open transaction (not visible until commit).

        On failure the transaction is aborted before raising.

        Raises:
            MessageTooLarge: a message exceeds ``max_body_bytes``; nothing was produced
                (the transaction stays open).
            PublishError: no transaction is open, or producing failed (then aborted).
        """
        if not self._in_transaction:
            raise PublishError("no transaction is open: call begin() first")
        routed = [(m.topic, m) for m in messages]
        self._check_sizes(routed)
        self._produce_all(routed, self._deadline(None))

    def commit(self, timeout: float | None = None) -> None:
        """Commit the open transaction: its messages become visible, all together.

        Retriable failures are retried within ``timeout`` (default: the publish timeout).

        Raises:
            PublishError: the transaction was NOT committed (aborted, or the producer was
                fenced / failed for good; it is re-initialised on next use).
            BrokerUnavailable: the outcome is UNKNOWN: the transaction may or may not be
                committed. Treat it as unknown, not as failed.
        """
        if not self._in_transaction:
            raise PublishError("no transaction is open: call begin() first")
        self._commit(self._deadline(timeout))

    def abort(self, timeout: float | None = None) -> None:
        """Abort the open transaction, if any: its messages never become visible.

        Raises:
            BrokerUnavailable: the broker did not confirm the abort in time. The messages
                stay invisible all the same: the transaction is aborted when the
                producer re-initialises (next use) or when ``transaction.timeout.ms``
                expires.
        """
        if not self._in_transaction:
            return
        failure = self._abort_within(self._deadline(timeout))
        if failure is not None:
            raise BrokerUnavailable(
                f"Kafka did not confirm the abort of transaction {self.transactional_id!r}: "
                f"{failure}"
            )

    def connect(self) -> None:
        """Reach a broker within the connect timeout, then initialise transactions.

        Once a broker answers, initialising may take longer than the connect timeout (a
        new cluster elects a transaction coordinator and creates its log first): that
        is bounded by the publish timeout.

        Raises:
            BrokerUnavailable: no broker answered within the connect timeout, or
                transactions were not initialised within the publish timeout.
            PublishError: initialisation failed for good (e.g. not authorised).
        """
        if not self._initialised:
            self._reach()
        self._ready(self._deadline(None))

    def close(self) -> None:
        """Abort an open transaction (bounded by the connect timeout), then release."""
        if self._in_transaction and not self._closed:
            self._abort_within(time.monotonic() + self._context.connect_timeout)
        super().close()

    # -- internals ------------------------------------------------------------------------

    def _producer_config(self) -> dict[str, Any]:
        return self._context.config(
            self._events,
            defaults={**_PRODUCER_DEFAULTS, "transaction.timeout.ms": self._transaction_timeout()},
            required={**_PRODUCER_REQUIRED, "transactional.id": self.transactional_id},
        )

    def _transaction_timeout(self) -> int:
        """:attr:`transaction_timeout_ms`, raised where the URL's own delivery timeouts need
        more: librdkafka refuses a transactional producer whose ``message.timeout.ms`` or
        ``delivery.timeout.ms`` exceeds its ``transaction.timeout.ms``, or whose
        ``socket.timeout.ms`` exceeds it by over 100 ms."""
        options = self._context.settings.options
        needed = [self.transaction_timeout_ms]
        for option, slack in _TIMEOUTS_WITHIN_A_TRANSACTION:
            with contextlib.suppress(KeyError, ValueError):  # librdkafka reports a bad value
                needed.append(int(options[option]) - slack)
        return max(needed)

    def _discard(self) -> None:
        super()._discard()
        self._initialised = False
        self._in_transaction = False

    def _ready(self, deadline: float) -> Producer:
        """The producer, with transactions initialised (which fences older instances).

        Raises:
            BrokerUnavailable: not initialised by ``deadline``.
            PublishError: initialisation failed for good (e.g. not authorised).
        """
        producer = self._client()
        while not self._initialised:
            try:
                producer.init_transactions(remaining(deadline))
                self._initialised = True
            except KafkaException as exc:
                error = error_of(exc)
                retriable = error is not None and error.retriable()
                if retriable and time.monotonic() < deadline:
                    continue
                self._discard()
                text = (
                    f"cannot initialise Kafka transactions for {self.transactional_id!r} at "
                    f"{self._context.url}: {self._context.describe(exc)}"
                )
                if retriable or is_unreachable(error):
                    raise BrokerUnavailable(text) from exc
                raise PublishError(text) from exc
        return producer

    def _begin(self) -> None:
        producer = self._client()
        try:
            producer.begin_transaction()
        except KafkaException as exc:
            # Only a producer in a failed state refuses to begin.
            self._discard()
            raise _Fenced(
                f"cannot begin a Kafka transaction for {self.transactional_id!r}: "
                f"{self._context.describe(exc)}"
            ) from exc
        self._in_transaction = True

    def _produce_all(
        self,
        routed: Routed,
        deadline: float,
        reports: list[KafkaError | _Pending | None] | None = None,
    ) -> None:
        """Produce inside the open transaction; on failure abort it and raise PublishError.

        With ``reports``, each message's delivery report is recorded there (by index).
        """
        producer = self._client()
        for index, (topic, message) in enumerate(routed):
            on_delivery = (
                None if reports is None else functools.partial(_record_delivery, reports, index)
            )
            try:
                self._produce(producer, topic, message, deadline, on_delivery)
            except PublishError as exc:
                self._abort_within(deadline)
                raise PublishError(f"transaction aborted: {exc}") from exc
            except KafkaException as exc:
                error = error_of(exc)
                text = f"message {message.id} refused for {topic!r}: {self._context.describe(exc)}"
                if error is not None and error.fatal():
                    self._discard()
                    raise _Fenced(f"transaction not committed: {text}") from exc
                self._abort_within(deadline)
                if is_refused(error):
                    raise _MessageRefused(f"transaction aborted: {text}", [message.id]) from exc
                raise PublishError(f"transaction aborted: {text}") from exc

    def _commit(
        self,
        deadline: float,
        routed: Routed = (),
        reports: Sequence[KafkaError | _Pending | None] = (),
    ) -> None:
        """Commit the open transaction.

        When the broker refused messages of it for good and ``reports`` holds their delivery
        reports (see :meth:`_produce_all`), raises :class:`_MessageRefused` naming them.
        """
        producer = self._client()
        while True:
            try:
                producer.commit_transaction(remaining(deadline))
            except KafkaException as exc:
                error = error_of(exc)
                text = self._context.describe(exc)
                if error is not None and error.fatal():
                    self._discard()
                    raise _Fenced(
                        f"Kafka transaction of {self.transactional_id!r} not committed: the "
                        f"producer failed for good ({text}); it is re-initialised on next use"
                    ) from exc
                if error is not None and error.txn_requires_abort():
                    producer.poll(0)  # the delivery reports say which message was refused
                    refused = [
                        message.id
                        for (_, message), report in zip(routed, reports, strict=True)
                        if isinstance(report, KafkaError) and is_refused(report)
                    ]
                    self._abort_within(deadline)
                    # A produce request the broker refused leaves a gap in the idempotent
                    # sequence numbers, and librdkafka fails the next transaction too
                    # (OUT_OF_ORDER_SEQUENCE_NUMBER) before it recovers: start afresh.
                    self._discard()
                    if refused:
                        raise _MessageRefused(
                            f"Kafka transaction of {self.transactional_id!r} aborted: {text}",
                            refused,
                        ) from exc
                    raise PublishError(
                        f"Kafka transaction of {self.transactional_id!r} aborted: {text}"
                    ) from exc
                if error is not None and error.retriable() and time.monotonic() < deadline:
                    continue
                # Re-initialising settles the transaction on the broker (the coordinator
                # completes or aborts it), but which one it was stays unknown to us.
                self._discard()
                raise BrokerUnavailable(
                    f"outcome of Kafka transaction of {self.transactional_id!r} unknown (it "
                    f"may or may not be committed): {text}"
                ) from exc
            else:
                self._in_transaction = False
                producer.poll(0)
                return

    def _abort_within(self, deadline: float) -> str | None:
        """Abort the open transaction; return why it failed, or ``None``.

        A producer that cannot abort is discarded; its transaction is then aborted by the
        coordinator when the next producer with this id initialises, or when it times out.
        """
        producer = self._producer
        self._in_transaction = False
        if producer is None:
            return None
        while True:
            try:
                producer.abort_transaction(remaining(deadline))
                producer.poll(0)
                return None
            except KafkaException as exc:
                error = error_of(exc)
                if (
                    error is not None
                    and error.retriable()
                    and not error.fatal()
                    and time.monotonic() < deadline
                ):
                    continue
                self._discard()
                return self._context.describe(exc)
