"""What every librdkafka client of the Kafka adapter shares: configuration, logging, errors.

librdkafka reports trouble three ways: exceptions from calls, an error callback, and log
lines. By default the log lines go to stderr, including a "Connection refused" every
reconnect back-off for as long as a broker is down; here they go to Python logging
(``txmq.adapters.kafka.librdkafka``), transport noise at DEBUG. Every text that leaves this
module (log record or exception) has the URL's secrets replaced by ``***``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

from txmq.adapters.kafka.settings import KafkaSettings
from txmq.config import SECRET_OPTIONS, redact
from txmq.errors import ConfigurationError

logger = logging.getLogger("txmq.adapters.kafka")
librdkafka_logger = logging.getLogger("txmq.adapters.kafka.librdkafka")
# A library does not configure logging, but neither should librdkafka's chatter reach
# stderr through logging's last-resort handler when the application configured nothing.
librdkafka_logger.addHandler(logging.NullHandler())

#: Error codes meaning "the broker (or its coordinator) cannot be reached right now".
UNREACHABLE_CODES = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._AUTHENTICATION,
        KafkaError._RESOLVE,
        KafkaError._SSL,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
        KafkaError._MSG_TIMED_OUT,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_COORDINATOR,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.SASL_AUTHENTICATION_FAILED,
    }
)

#: Error codes of a message the broker (or librdkafka, checking the broker's rules) refuses
#: for good: sending it again fails the same way.
REFUSED_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.TOPIC_EXCEPTION,  # an invalid topic name
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
    }
)

#: librdkafka log facilities of connection attempts and failures: DEBUG, not WARNING.
_TRANSPORT_FACILITIES = frozenset({"FAIL", "CONNECT", "BROKERFAIL", "DISCONNECT", "REQTMOUT"})
#: Asynchronous errors that repeat on every reconnect attempt while a broker is down.
_TRANSPORT_CODES = frozenset({KafkaError._TRANSPORT, KafkaError._RESOLVE})


def _is_secret(option: str) -> bool:
    return option in SECRET_OPTIONS or "password" in option or "secret" in option


C = TypeVar("C")


class KafkaContext:
    """Settings of one adapter plus what its clients need: config, scrubbing, error text.

    Args:
        settings: the parsed ``kafka://`` URL.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._secrets = tuple(
            value for option, value in settings.options.items() if _is_secret(option) and value
        )

    @property
    def url(self) -> str:
        """The broker URL with its secrets replaced by ``***``."""
        return self.settings.redacted_url()

    @property
    def connect_timeout(self) -> float:
        return self.settings.common.connect_timeout

    @property
    def publish_timeout(self) -> float:
        return self.settings.common.publish_timeout

    def scrub(self, text: str) -> str:
        """``text`` without any secret of the URL in it."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact(text)

    def describe(self, error: BaseException | KafkaError) -> str:
        """A one-line, secret-free description of a librdkafka error."""
        kafka_error = error if isinstance(error, KafkaError) else error_of(error)
        if kafka_error is not None:
            return self.scrub(f"{kafka_error.name()}: {kafka_error.str()}")
        return self.scrub(f"{type(error).__name__}: {error}")

    def build(self, client: Callable[[dict[str, Any]], C], config: dict[str, Any], role: str) -> C:
        """``client(config)``, a configuration librdkafka rejects raising
        :class:`ConfigurationError`.

        Without the original exception: librdkafka may quote the offending value, which
        could be a secret.
        """
        try:
            return client(config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"librdkafka rejected the {role} configuration for {self.url}: {self.describe(exc)}"
            ) from None

    def config(
        self,
        events: ClientEvents,
        *,
        defaults: Mapping[str, Any] | None = None,
        required: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """librdkafka configuration: ``defaults``, then the URL's options, then ``required``.

        The URL's options (``security.protocol``, ``sasl.*``, ``ssl.*``, tuning) override
        txmq's defaults but not what txmq's semantics depend on (``required``).
        """
        return {
            "bootstrap.servers": ",".join(self.settings.bootstrap_servers),
            "client.id": "txmq",
            **(defaults or {}),
            **self.settings.options,
            **(required or {}),
            "error_cb": events.on_error,
            "logger": LibrdkafkaLog(self.scrub),
        }


class ClientEvents:
    """The asynchronous errors one librdkafka client reported (its ``error_cb``).

    "No broker reachable" is logged at ``down_level``: WARNING for long-lived clients,
    lower for those whose caller raises about it anyway.

    Callbacks run inside the client's ``poll``/``consume``/``flush`` calls, on the thread
    that makes them, so no locking is needed.
    """

    def __init__(
        self, context: KafkaContext, client: str, *, down_level: int = logging.WARNING
    ) -> None:
        self._context = context
        self._client = client
        self._down_level = down_level
        self.fatal: KafkaError | None = None
        self.last: KafkaError | None = None
        self.brokers_down = False

    def on_error(self, error: KafkaError) -> None:
        self.last = error
        code = error.code()
        text = self._context.describe(error)
        if error.fatal():
            self.fatal = error
            logger.error("Kafka %s failed for good: %s", self._client, text)
        elif code == KafkaError._ALL_BROKERS_DOWN:
            self.brokers_down = True
            logger.log(
                self._down_level,
                "Kafka %s: no broker reachable at %s",
                self._client,
                self._context.url,
            )
        elif code in _TRANSPORT_CODES:
            logger.debug("Kafka %s: %s", self._client, text)
        else:
            logger.warning("Kafka %s: %s", self._client, text)


class LibrdkafkaLog:
    """The ``logger`` confluent-kafka forwards librdkafka's log lines to.

    confluent-kafka calls ``log(level, "%s [%s] %s", facility, client_name, line)``.
    """

    def __init__(self, scrub: Callable[[str], str]) -> None:
        self._scrub = scrub

    def log(self, level: int, msg: str, *args: Any) -> None:
        facility = args[0] if args else ""
        if level >= logging.WARNING and facility not in _TRANSPORT_FACILITIES:
            level = logging.WARNING
        else:
            level = logging.DEBUG
        if librdkafka_logger.isEnabledFor(level):
            librdkafka_logger.log(level, "%s", self._scrub(msg % args))


def error_of(exc: BaseException) -> KafkaError | None:
    """The :class:`KafkaError` a :class:`KafkaException` carries, if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_refused(error: KafkaError | None) -> bool:
    return error is not None and error.code() in REFUSED_CODES


def is_unreachable(error: KafkaError | None) -> bool:
    return error is not None and error.code() in UNREACHABLE_CODES


def remaining(deadline: float, floor: float = 0.001) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), at least ``floor``."""
    return max(floor, deadline - time.monotonic())
