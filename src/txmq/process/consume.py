"""``txmq consume module:consumer``: a :class:`~txmq.consumer.Consumer` from user code, as a
process."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from sqlalchemy import select

from txmq.config import describe
from txmq.consumer.group import smallest_batch
from txmq.consumer.runner import Consumer
from txmq.errors import ConfigurationError
from txmq.process.probes import Check
from txmq.sql.schema import missing_tables_raise_schema_missing
from txmq.supervision import Health


def load_consumer(target: str) -> Consumer:
    """Import ``package.module:name``; ``name`` is a Consumer or a zero-argument factory
    returning one. The current directory is importable, as with ``python -m``.

    Raises:
        ConfigurationError: malformed target, the module or name cannot be found or
            imported, the factory raised, or it is not a Consumer (the original error is
            the cause).
    """
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(
            f"consumer {target!r} must be given as package.module:name (e.g. app.events:consumer)"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no {attribute!r}") from None
    if not isinstance(value, Consumer) and callable(value):
        try:
            value = value()
        except Exception as exc:
            raise ConfigurationError(f"{target}() raised {describe(exc)}") from exc
    if not isinstance(value, Consumer):
        raise ConfigurationError(
            f"{target} is a {type(value).__name__}, not a txmq Consumer "
            "(or a function without arguments returning one)"
        )
    return value


def override(consumer: Consumer, *, concurrency: int | None, prefetch: int | None) -> None:
    """Apply the command line's ``--concurrency`` and ``--prefetch`` over the code's.

    Raises:
        ConfigurationError: a value below 1, or a prefetch below the batch size.
    """
    if concurrency is not None:
        if concurrency < 1:
            raise ConfigurationError("--concurrency must be at least 1")
        consumer.concurrency = concurrency
    if prefetch is not None:
        if prefetch < 1 or prefetch < smallest_batch(consumer.batch_size):
            raise ConfigurationError(
                f"--prefetch must be at least 1 and at least the batch size ({consumer.batch_size})"
            )
        consumer.prefetch = prefetch


class ConsumerService:
    """Runs a :class:`Consumer` for :func:`~txmq.process.service.run_service`."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def start(self) -> None:
        """Check the inbox table, then declare the topology and start the workers.

        Raises:
            SchemaMissing: the inbox table does not exist.
            BrokerUnavailable: the broker cannot be reached or refused the credentials.
        """
        self._check_inbox()
        self.consumer.start()

    def stop(self) -> None:
        self.consumer.stop()

    def health(self) -> Health:
        return self.consumer.health()

    def _check_inbox(self) -> None:
        with missing_tables_raise_schema_missing(), self.consumer.engine.connect() as connection:
            connection.execute(select(self.consumer.inbox_table).limit(0)).close()

    def _ping_broker(self) -> None:
        self.consumer.adapter().ping()

    def readiness_checks(self) -> Sequence[tuple[str, Check]]:
        return [("database", self._check_inbox), ("broker", self._ping_broker)]
