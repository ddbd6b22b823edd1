"""The Kafka adapter (confluent-kafka): topics, consumer groups and transactions as txmq uses them.

Mapping (DESIGN.md section 5): a txmq topic is a Kafka topic and a consumer group a Kafka
group; the message key is the record key; retry stage ``n`` of group ``g`` on topic ``t``
is topic ``g.t.retry.n`` and the dead-letter queue topic ``g.t.dlq``. Producers are
idempotent with ``acks=all``; the relay's producer is transactional (one Kafka
transaction per batch). Consumers read committed records only and commit offsets by hand,
message by message (see :class:`KafkaSubscription`).

Needs ``pip install 'txmq[kafka]'``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from txmq.errors import MissingDependency

try:
    from confluent_kafka import (
        ConsumerGroupTopicPartitions,
        KafkaError,
        KafkaException,
        TopicPartition,
    )
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._config import ConfigResource
    from confluent_kafka.admin._listoffsets import OffsetSpec
    from confluent_kafka.admin._resource import ResourceType
    from confluent_kafka.cimpl import NewTopic
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise MissingDependency(
        "the Kafka adapter needs confluent-kafka: pip install 'txmq[kafka]'"
    ) from exc

from txmq.adapters.base import Adapter, Capabilities, Topology, validate_identity
from txmq.adapters.kafka.browser import KafkaBrowser
from txmq.adapters.kafka.client import (
    ClientEvents,
    KafkaContext,
    error_of,
    is_unreachable,
    logger,
)
from txmq.adapters.kafka.publisher import KafkaPublisher, KafkaTransactionalPublisher
from txmq.adapters.kafka.settings import KafkaSettings
from txmq.adapters.kafka.subscription import KafkaSubscription
from txmq.errors import BrokerUnavailable, ConfigurationError, QueueNotFound, TopologyError
from txmq.message import validate_name

if TYPE_CHECKING:
    from confluent_kafka.admin._metadata import ClusterMetadata

__all__ = [
    "KafkaAdapter",
    "KafkaPublisher",
    "KafkaSubscription",
    "KafkaTransactionalPublisher",
]

#: How often to look again while waiting for a broker or for new topics.
_RECHECK_INTERVAL = 0.1
#: What a partition answers in the moment after it was created, before its leader is known.
_NO_LEADER_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})
#: What a record adds to its body and headers on the wire (record and batch framing, key,
#: txmq's id / topic / key headers), kept free below the broker's and producer's limits.
_RECORD_OVERHEAD = 2048
#: librdkafka's own default for ``message.max.bytes`` (the producer refuses larger messages).
_PRODUCER_MESSAGE_MAX_BYTES = 1_000_000
#: Seconds before asking again for the broker's limit after the broker could not be asked.
_LIMIT_RETRY = 30.0
#: Longest single metadata request while pinging, so an early authentication failure
#: reported by the error callback ends the wait.
_PING_STEP = 0.5

#: A topic's (earliest, latest) offsets, as ((partition, offset), ...) pairs.
_Offsets = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]


class KafkaAdapter(Adapter):
    """Kafka, as txmq uses it. Build it with ``txmq.connect("kafka://host:9092")``.

    Args:
        settings: the parsed ``kafka://`` URL; its options (``security.protocol``,
            ``sasl.*``, ``ssl.*``, any librdkafka property) are passed to every client.

    Example:
        >>> broker = txmq.connect("kafka://127.0.0.1:9092")  # doctest: +SKIP
        >>> broker.declare([Topology("billing", "orders.created", retry_delays=(5, 60))])
    """

    system = "kafka"
    #: Transactions; retry topics read at once and withheld until due by the subscription;
    #: a group reads the topic itself, so a replay goes there for the other groups to drop.
    capabilities = Capabilities(
        native_transactions=True,
        retry_delays="due_time",
        replays_to="topic",
        competing_consumers=False,
    )
    settings: KafkaSettings

    def __init__(self, settings: KafkaSettings) -> None:
        if settings.system != "kafka":
            raise ConfigurationError(f"KafkaAdapter needs Kafka settings, not {settings!r}")
        super().__init__(settings)
        self._context = KafkaContext(settings)
        self._admin_client: AdminClient | None = None
        self._admin_events = ClientEvents(self._context, "admin client")
        self._lock = threading.Lock()
        # queue_depth's last count per topic, with the (earliest, latest) offsets it was for.
        self._depths: dict[str, tuple[_Offsets, int]] = {}
        self._limit_lock = threading.Lock()
        self._limit: int | None = None
        self._limit_asked = -_LIMIT_RETRY

    # -- limits -------------------------------------------------------------------------

    def publish_limit(self) -> int:
        """``max_body_bytes``, lowered to the broker's ``message.max.bytes`` and the
        producer's (librdkafka's ``message.max.bytes``, 1,000,000 unless the URL sets it),
        less what framing adds to a record.

        The broker is asked once (``describe_configs``); a topic's own
        ``max.message.bytes`` is not looked at: the relay reports such a refusal.
        """
        with self._limit_lock:
            if self._limit is not None:
                return self._limit
            if time.monotonic() - self._limit_asked < _LIMIT_RETRY:
                return self.max_body_bytes
            self._limit_asked = time.monotonic()
            try:
                broker_limit = self._broker_message_max_bytes()
            except (BrokerUnavailable, KafkaException, concurrent.futures.TimeoutError) as exc:
                logger.info("could not learn Kafka's message.max.bytes (%s); will ask again", exc)
                return self.max_body_bytes
            producer_limit = int(
                self.settings.options.get("message.max.bytes", _PRODUCER_MESSAGE_MAX_BYTES)
            )
            self._limit = min(
                self.max_body_bytes, min(broker_limit, producer_limit) - _RECORD_OVERHEAD
            )
            return self._limit

    def _broker_message_max_bytes(self) -> int:
        admin = self._admin()
        timeout = self._context.connect_timeout
        brokers = self._metadata(admin, timeout).brokers
        if not brokers:
            raise BrokerUnavailable(f"Kafka at {self._context.url} named no broker")
        resource = ConfigResource(ResourceType.BROKER, str(min(brokers)))
        futures = admin.describe_configs([resource], request_timeout=timeout)
        configs = futures[resource].result(timeout=timeout + 1.0)
        return int(configs["message.max.bytes"].value)

    # -- connection ---------------------------------------------------------------------

    def ping(self) -> None:
        """Fetch the cluster's metadata once, within the connect timeout.

        librdkafka retries connecting forever in the background; this stops waiting at
        the connect timeout, or earlier on a failure that will not heal (authentication).

        Raises:
            BrokerUnavailable: no broker answered in time (the URL in the message is redacted).
        """
        events = ClientEvents(self._context, "ping", down_level=logging.DEBUG)
        admin = self._new_admin(events)
        deadline = time.monotonic() + self._context.connect_timeout
        failure = "no answer"
        while True:
            step = min(_PING_STEP, deadline - time.monotonic())
            try:
                admin.list_topics(timeout=max(step, 0.001))
                return
            except KafkaException as exc:
                failure = self._context.describe(exc)
            admin.poll(0)
            if events.last is not None and events.last.code() in (
                KafkaError._AUTHENTICATION,
                KafkaError.SASL_AUTHENTICATION_FAILED,
            ):
                failure = self._context.describe(events.last)
                break
            if time.monotonic() >= deadline:
                if events.last is not None:
                    failure = self._context.describe(events.last)
                break
        raise BrokerUnavailable(
            f"cannot reach Kafka at {self._context.url} within "
            f"{self._context.connect_timeout:g} s: {failure}"
        )

    # -- topology -----------------------------------------------------------------------

    def declare(self, topologies: Iterable[Topology]) -> None:
        """Create each topology's topic, retry topics and dead-letter topic, then wait for them.

        Topics get ``partitions`` / ``replication_factor`` from the URL; topics that
        exist are left as they are. Returns once the broker's metadata shows every topic
        with a leader for each partition, so a consumer subscribing next misses nothing.
        Bounded by the publish timeout.

        Raises:
            TopologyError: a topic cannot be created (bad replication factor, policy, ...)
                or did not become usable in time.
            BrokerUnavailable: the broker cannot be reached.
        """
        names = list(
            dict.fromkeys(
                name
                for t in topologies
                for name in (t.topic, *t.retry_queues(), t.dead_letter_queue)
            )
        )
        if not names:
            return
        deadline = time.monotonic() + self._context.publish_timeout
        admin = self._admin()
        request_timeout = self._context.publish_timeout
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=self.settings.partitions,
                    replication_factor=self.settings.replication_factor,
                )
                for name in names
            ],
            request_timeout=request_timeout,
            operation_timeout=request_timeout,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
            except concurrent.futures.TimeoutError:
                raise BrokerUnavailable(
                    f"Kafka at {self._context.url} did not create topic {name!r} in time"
                ) from None
            except KafkaException as exc:
                error = error_of(exc)
                if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                text = (
                    f"cannot create Kafka topic {name!r} at {self._context.url}: "
                    f"{self._context.describe(exc)}"
                )
                if is_unreachable(error):
                    raise BrokerUnavailable(text) from exc
                raise TopologyError(text) from exc
        self._wait_usable(admin, names, deadline)

    def sources_for(self, topologies: Iterable[Topology]) -> list[str]:
        """The topics a consumer of ``topologies`` reads: each topic and its retry topics."""
        return list(
            dict.fromkeys(name for t in topologies for name in (t.topic, *t.retry_queues()))
        )

    # -- clients ------------------------------------------------------------------------

    def publisher(self, *, identity: str | None = None) -> KafkaPublisher:
        """Open a publisher; with an ``identity`` each batch is one Kafka transaction, with
        ``transactional.id = txmq-<identity>``.

        Its ``transaction.timeout.ms`` is the publish timeout (the URL's
        ``transaction.timeout.ms`` overrides it): a batch is given that long to be
        confirmed anyway. A relay lane killed between produce and commit leaves its
        transaction open, and read_committed readers of its partitions see nothing behind
        it until the broker aborts it; a relay that takes over has a transactional.id of
        its own (unless it reuses the dead relay's ``instance_id``) and cannot fence it. So
        the publish timeout, plus up to the broker's
        ``transaction.abort.timed.out.transaction.cleanup.interval.ms`` (10 s by default),
        bounds that stall.

        The producer connects lazily, at the first publish.

        Raises:
            ConfigurationError: ``identity`` is empty.
        """
        if identity is None:
            return KafkaPublisher(self._context)
        return KafkaTransactionalPublisher(
            self._context,
            _transactional_id(identity),
            # librdkafka takes no less than a second.
            transaction_timeout_ms=max(1_000, round(self._context.publish_timeout * 1000)),
        )

    def transaction(self, identity: str) -> KafkaTransactionalPublisher:
        """A transactional producer with ``transactional.id = txmq-<identity>``, for half
        messages (see :class:`KafkaTransactionalPublisher`); it connects at first use. Its
        ``transaction.timeout.ms`` is 60 s (the URL's overrides it): the transaction stays
        open while the local transaction runs.

        Raises:
            ConfigurationError: ``identity`` is empty.
        """
        return KafkaTransactionalPublisher(self._context, _transactional_id(identity))

    def subscribe(
        self, group: str, sources: Sequence[str], *, prefetch: int = 100
    ) -> KafkaSubscription:
        """Join consumer group ``group`` reading topics ``sources``.

        Declare the topics first (:meth:`declare`). A new group starts at the earliest
        offset. ``prefetch`` bounds librdkafka's local fetch buffer: it fetches ahead while
        a partition has fewer than ``prefetch`` records waiting and the buffer holds less
        than ``prefetch`` x 16 KiB (1-64 MiB). How many deliveries are out unacknowledged
        is up to the caller (``max_messages`` per :meth:`KafkaSubscription.poll`).
        """
        validate_name(group, "group")
        if not sources:
            raise ConfigurationError("subscribe needs at least one source topic")
        for source in sources:
            validate_name(source, "source")
        return KafkaSubscription(self._context, group, sources, prefetch=prefetch)

    # -- inspection ---------------------------------------------------------------------

    def browse(self, queue: str, *, include_settled: bool = False) -> KafkaBrowser:
        """Open topic ``queue`` for inspection (see :class:`KafkaBrowser`).

        Nothing is committed and no group is joined, so the records stay for every group.

        Raises:
            QueueNotFound: the topic does not exist (it is not created by asking).
            BrokerUnavailable: the broker cannot be reached.
        """
        validate_name(queue, "queue")
        return KafkaBrowser(self._context, queue, include_settled=include_settled)

    def purge_queue(self, queue: str) -> int:
        """Delete every record of topic ``queue``; return how many letters were still listed.

        Records removed before (settled by a marker) and the markers are deleted as well
        but not counted.

        Raises:
            QueueNotFound: the topic does not exist.
            BrokerUnavailable: the broker cannot be reached.
            TopologyError: the broker refused to delete the records.
        """
        validate_name(queue, "queue")
        admin = self._admin()
        metadata = self._metadata(admin, self._context.connect_timeout)
        described = metadata.topics.get(queue)
        if described is None or described.error is not None:
            raise QueueNotFound(f"Kafka at {self._context.url} has no topic {queue!r}")
        partitions = [TopicPartition(queue, p) for p in described.partitions]
        # OffsetSpec's class methods have no type annotations.
        earliest = self._offsets(admin, partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        latest = self._offsets(admin, partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        doomed = [
            TopicPartition(queue, p, latest[p]) for p in latest if latest[p] > earliest.get(p, 0)
        ]
        if not doomed:
            return 0
        timeout = self._context.publish_timeout
        with self.browse(queue) as browser:
            listed = browser.letters_below(latest, timeout)
        futures = admin.delete_records(doomed, request_timeout=timeout, operation_timeout=timeout)
        for future in futures.values():
            self._result(future, f"delete the records of {queue!r}", timeout)
        return listed

    def queue_depth(self, queue: str) -> int:
        """The letters of topic ``queue`` not settled by a marker (replayed or purged); 0
        when the topic does not exist.

        Kafka keeps no such count: it is found by reading the topic from its start (as
        ``txmq dlq list`` does), and remembered with the topic's offsets, so that it is
        read again only when the topic has changed (a new letter, a marker, a purge). Each
        call otherwise costs a metadata and two offset requests.

        Raises:
            BrokerUnavailable: the broker cannot be reached, or the topic could not be read
                to its end within ``publish_timeout``.
            TopologyError: the broker refused to list the offsets.
        """
        validate_name(queue, "queue")
        bounds = self._bounds(self._admin(), queue)
        if bounds is None:
            return 0
        _, earliest, latest = bounds
        if all(latest[p] <= earliest.get(p, 0) for p in latest):
            return 0
        offsets = (tuple(sorted(earliest.items())), tuple(sorted(latest.items())))
        with self._lock:
            known = self._depths.get(queue)
        if known is not None and known[0] == offsets:
            return known[1]
        with self.browse(queue) as browser:
            depth = browser.letters_below(latest, self._context.publish_timeout)
        with self._lock:
            self._depths[queue] = (offsets, depth)
        return depth

    def consumer_lag(self, group: str, topic: str) -> int:
        """Records of ``topic`` after the offsets ``group`` committed, summed over the
        partitions (from the start of a partition where it committed none, as a consumer
        would begin there); its retry topics are not counted. A metadata request, two
        offset requests and one for the group's offsets.

        Raises:
            BrokerUnavailable: the broker cannot be reached.
            TopologyError: the broker refused to list the offsets.
        """
        validate_name(group, "group")
        validate_name(topic, "topic")
        admin = self._admin()
        bounds = self._bounds(admin, topic)
        if bounds is None:
            return 0
        partitions, earliest, latest = bounds
        timeout = self._context.connect_timeout
        request = ConsumerGroupTopicPartitions(group, partitions)
        futures = admin.list_consumer_group_offsets([request], request_timeout=timeout)
        answer = self._result(futures[group], f"list the offsets of group {group!r}", timeout)
        committed = {tp.partition: tp.offset for tp in answer.topic_partitions if tp.offset >= 0}
        return sum(
            max(0, end - max(committed.get(p, 0), earliest.get(p, 0))) for p, end in latest.items()
        )

    def close(self) -> None:
        """Release the shared admin client. Idempotent."""
        with self._lock:
            self._admin_client = None

    # -- internals ------------------------------------------------------------------------

    def _new_admin(self, events: ClientEvents) -> AdminClient:
        # Topics are created by declare() only, never as a side effect of asking about one.
        config = self._context.config(events, required={"allow.auto.create.topics": False})
        return self._context.build(AdminClient, config, "admin client")

    def _admin(self) -> AdminClient:
        with self._lock:
            if self._admin_client is None:
                self._admin_client = self._new_admin(self._admin_events)
            return self._admin_client

    def _metadata(self, admin: AdminClient, timeout: float) -> ClusterMetadata:
        try:
            return admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self._context.url}: {self._context.describe(exc)}"
            ) from exc

    def _wait_usable(self, admin: AdminClient, names: list[str], deadline: float) -> None:
        """Wait until the metadata shows every topic in ``names`` with a leader everywhere."""
        while True:
            metadata = self._metadata(admin, max(0.001, deadline - time.monotonic()))
            missing = [name for name in names if not _usable(metadata, name)]
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise TopologyError(
                    f"Kafka topics {missing} were created but have no leader yet "
                    f"({self._context.publish_timeout:g} s)"
                )
            time.sleep(_RECHECK_INTERVAL)

    def _bounds(
        self, admin: AdminClient, topic: str
    ) -> tuple[list[TopicPartition], dict[int, int], dict[int, int]] | None:
        """The partitions of ``topic`` with their earliest and latest offsets; None when there
        is no such topic."""
        metadata = self._metadata(admin, self._context.connect_timeout)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            return None
        partitions = [TopicPartition(topic, p) for p in described.partitions]
        earliest = self._offsets(admin, partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
        latest = self._offsets(admin, partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]
        return partitions, earliest, latest

    def _offsets(
        self, admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec
    ) -> dict[int, int]:
        timeout = self._context.connect_timeout
        deadline = time.monotonic() + self._context.publish_timeout
        while True:
            futures = admin.list_offsets({tp: spec for tp in partitions}, request_timeout=timeout)
            try:
                return {
                    tp.partition: self._result(future, "list offsets", timeout).offset
                    for tp, future in futures.items()
                }
            except TopologyError as exc:
                # A partition just created has no leader for a moment (NOT_LEADER_FOR_PARTITION,
                # LEADER_NOT_AVAILABLE): Kafka says to ask again.
                error = error_of(exc.__cause__) if exc.__cause__ is not None else None
                again = error is not None and (error.retriable() or error.code() in _NO_LEADER_YET)
                if not again or time.monotonic() >= deadline:
                    raise
            time.sleep(_RECHECK_INTERVAL)

    def _result(self, future: concurrent.futures.Future[Any], what: str, timeout: float) -> Any:
        try:
            return future.result(timeout=timeout + 1.0)
        except concurrent.futures.TimeoutError:
            raise BrokerUnavailable(
                f"Kafka at {self._context.url} did not answer ({what})"
            ) from None
        except KafkaException as exc:
            error = error_of(exc)
            text = f"Kafka could not {what}: {self._context.describe(exc)}"
            if is_unreachable(error):
                raise BrokerUnavailable(text) from exc
            raise TopologyError(text) from exc


def _transactional_id(identity: str) -> str:
    """The ``transactional.id`` of a publisher's identity. Keep it as it is: a relay or
    producer of an earlier release with the same identity is fenced only by the same id."""
    return f"txmq-{validate_identity(identity)}"


def _usable(metadata: ClusterMetadata, name: str) -> bool:
    described = metadata.topics.get(name)
    return (
        described is not None
        and described.error is None
        and bool(described.partitions)
        and all(p.leader >= 0 and p.error is None for p in described.partitions.values())
    )
