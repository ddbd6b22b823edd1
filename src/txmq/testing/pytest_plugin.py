"""The ``txmq`` pytest plugin: real brokers for tests, only when a test asks for one.

Session-scoped fixtures:

- ``rabbitmq_url`` / ``kafka_url``: broker URLs (``rabbitmq://...``, ``kafka://...``).
- ``database_url``: a PostgreSQL SQLAlchemy URL (``postgresql+psycopg://...``).
- ``mysql_url``: a MariaDB (or MySQL) SQLAlchemy URL (``mysql+pymysql://...``).
- ``broker_url``: parametrized over both brokers, ids ``rabbitmq`` and ``kafka``; a test
  parametrized with ``memory`` (the contract suites) gets a ``memory://`` broker instead.

Function-scoped fixtures, each test getting its own:

- ``txmq_database``: the URL of a new PostgreSQL database on ``database_url``'s server,
  with txmq's tables (outbox, marker, inbox, NOTIFY trigger); dropped after the test.
- ``txmq_engine``: an SQLAlchemy ``Engine`` on ``txmq_database``, disposed after the test.
- ``txmq_mysql_database`` / ``txmq_mysql_engine``: the same on ``mysql_url``'s server.
- ``txmq_sqlite_engine``: an ``Engine`` on a SQLite file in ``tmp_path``, tables created.
- ``txmq_memory_url``: ``memory://<unique name>``, an empty in-process broker for
  ``txmq.connect`` (or ``--broker``), forgotten after the test.
- ``txmq_unique``: ``txmq_unique("orders")`` returns a new valid topic/group name such as
  ``orders-1f3a9c2e7b4d``, so tests sharing a broker never meet.

Each broker is resolved once per session, in this order (``--txmq-brokers=auto``):

1. ``TXMQ_TEST_RABBITMQ_URL`` / ``TXMQ_TEST_KAFKA_URL`` / ``TXMQ_TEST_DATABASE_URL`` /
   ``TXMQ_TEST_MYSQL_URL``;
2. a broker ``txmq brokers up`` started and that still runs;
3. a container started through testcontainers for this session;
4. processes started for this session.

What the plugin starts it stops at the end of the session, on ports chosen free so that
sessions never collide. ``--txmq-brokers=env|container|process`` (or ``$TXMQ_TEST_BROKERS``)
restricts resolution to that one way. A broker that cannot be had skips the test with the
reason, or fails it when ``TXMQ_REQUIRE_BROKERS=1`` (CI sets it).

The report header says, per broker, where it will come from (``$TXMQ_TEST_*_URL``, a
``txmq brokers up`` state file, or a container/process started when a test asks), and the
terminal summary says which brokers the session used and where each came from. Passwords
in the URLs shown are replaced by ``***``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from txmq.testing.provision import Broker, RequestedMode, Running

MODE_OPTION = "--txmq-brokers"
MODE_ENV = "TXMQ_TEST_BROKERS"
REQUIRE_ENV = "TXMQ_REQUIRE_BROKERS"
_MODES = ("auto", "container", "process", "env")

log = logging.getLogger("txmq.provision")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("txmq", "txmq test brokers")
    group.addoption(
        MODE_OPTION,
        choices=_MODES,
        default=None,
        help=(
            "how the rabbitmq_url/kafka_url/database_url fixtures find brokers: auto "
            "(env vars, then containers, then processes), container, process or env "
            f"(default: ${MODE_ENV} or auto)"
        ),
    )


def _mode(config: pytest.Config) -> RequestedMode:
    chosen = config.getoption(MODE_OPTION) or os.environ.get(MODE_ENV) or "auto"
    if chosen not in _MODES:
        raise pytest.UsageError(f"{MODE_ENV} must be one of {', '.join(_MODES)}, not {chosen!r}")
    return cast("RequestedMode", chosen)


def _required() -> bool:
    from txmq.testing.provision.common import truthy

    return truthy(os.environ.get(REQUIRE_ENV))


def _described(record: Running) -> str:
    """How ``record``'s broker runs: its container or its process groups."""
    if record.mode == "container":
        return f"container {(record.container_id or '?')[:12]}"
    return f"process group(s) {', '.join(map(str, record.pgids)) or '?'}"


def _planned_source(broker: Broker, mode: RequestedMode) -> str:
    """Where :meth:`BrokerSupply.url` will look for ``broker`` first, without starting or
    probing anything (the header is printed for every session, brokers needed or not)."""
    from txmq.config import redact
    from txmq.testing import provision
    from txmq.testing.provision import state

    variable = provision.URL_ENV[broker]
    if mode in ("auto", "env") and os.environ.get(variable):
        return f"{redact(os.environ[variable])} (from ${variable})"
    if mode == "env":
        return f"none ({variable} is not set)"
    if mode == "auto":
        try:
            record = state.load().get(broker)
        except provision.ProvisionError as exc:
            return f"unknown: {redact(str(exc))}"
        if record is not None:
            return (
                f"{redact(record.url)} (from `txmq brokers up`: {_described(record)}, "
                f"state file {state.state_path()}; reused if it still runs)"
            )
    how = "a container or processes" if mode == "auto" else f"a {mode}"
    return f"{how} started for this session when a test asks"


def pytest_report_header(config: pytest.Config) -> list[str]:
    from txmq.testing import provision

    mode = _mode(config)
    required = "failing" if _required() else "skipping"
    return [f"txmq brokers: {mode} ({required} tests whose broker is missing)"] + [
        f"  {broker}: {_planned_source(broker, mode)}" for broker in provision.BROKERS
    ]


class BrokerSupply:
    """Resolves each broker once per session and stops, at the end, what it started."""

    def __init__(self, mode: RequestedMode, *, required: bool) -> None:
        self._mode = mode
        self._required = required
        self._urls: dict[Broker, str] = {}
        self._failures: dict[Broker, str] = {}
        self._started: list[Running] = []
        #: Where each resolved broker came from, for the terminal summary.
        self.sources: dict[Broker, str] = {}

    def url(self, broker: Broker) -> str:
        """The broker's URL, or skip/fail the asking test with the reason it is missing."""
        if broker not in self._urls and broker not in self._failures:
            try:
                self._urls[broker] = self._resolve(broker)
            except Exception as exc:  # any reason is reported to the test
                from txmq.config import redact

                self._failures[broker] = f"no {broker} for tests: {redact(str(exc))}"
        if broker in self._failures:
            if self._required:
                pytest.fail(f"{self._failures[broker]} ({REQUIRE_ENV} is set)", pytrace=False)
            pytest.skip(self._failures[broker])
        return self._urls[broker]

    def _resolve(self, broker: Broker) -> str:
        from txmq.testing import provision
        from txmq.testing.provision import state
        from txmq.testing.provision.common import ProvisionError

        variable = provision.URL_ENV[broker]
        if self._mode in ("auto", "env") and os.environ.get(variable):
            self.sources[broker] = f"${variable}"
            return os.environ[variable]
        if self._mode == "env":
            raise ProvisionError(f"{variable} is not set (--txmq-brokers=env)")
        if self._mode == "auto":
            for record, running in provision.status():
                if record.broker == broker and running:
                    self.sources[broker] = (
                        f"`txmq brokers up`: {_described(record)}, state file {state.state_path()}"
                    )
                    return record.url
        record = provision.start(broker, self._mode, provision.Ports.free(), owner=os.getpid())
        self._started.append(record)
        self.sources[broker] = f"started for this session: {_described(record)}"
        return record.url

    def used(self) -> list[str]:
        """One line per broker the session used: its URL (redacted) and where it came from."""
        from txmq.config import redact

        return [
            f"{broker}: {redact(self._urls[broker])} ({self.sources[broker]})"
            for broker in self._urls
        ]

    def close(self) -> None:
        from txmq.testing import provision

        while self._started:
            record = self._started.pop()
            try:
                provision.stop(record)
            except Exception:
                log.exception("could not stop the test %s (%s)", record.broker, record.mode)


_SUPPLY = pytest.StashKey[BrokerSupply]()


@pytest.fixture(scope="session")
def txmq_brokers(request: pytest.FixtureRequest) -> Iterator[BrokerSupply]:
    """The session's :class:`BrokerSupply`; use the URL fixtures instead."""
    supply = BrokerSupply(_mode(request.config), required=_required())
    request.config.stash[_SUPPLY] = supply
    yield supply
    supply.close()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    supply = config.stash.get(_SUPPLY, None)
    if supply is not None and supply.used():
        terminalreporter.write_sep("-", "txmq brokers used")
        for line in supply.used():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def rabbitmq_url(txmq_brokers: BrokerSupply) -> str:
    """URL of a RabbitMQ for this session, e.g. ``rabbitmq://guest:guest@127.0.0.1:21672/``."""
    return txmq_brokers.url("rabbitmq")


@pytest.fixture(scope="session")
def kafka_url(txmq_brokers: BrokerSupply) -> str:
    """URL of a Kafka for this session, e.g. ``kafka://127.0.0.1:21092``."""
    return txmq_brokers.url("kafka")


@pytest.fixture(scope="session")
def database_url(txmq_brokers: BrokerSupply) -> str:
    """SQLAlchemy URL of a PostgreSQL for this session (``postgresql+psycopg://...``)."""
    return txmq_brokers.url("postgres")


@pytest.fixture(scope="session")
def mysql_url(txmq_brokers: BrokerSupply) -> str:
    """SQLAlchemy URL of a MariaDB (or MySQL) for this session (``mysql+pymysql://...``)."""
    return txmq_brokers.url("mariadb")


@pytest.fixture(scope="session", params=["rabbitmq", "kafka"])
def broker_url(request: pytest.FixtureRequest, txmq_brokers: BrokerSupply) -> Iterator[str]:
    """Each broker in turn (test ids ``[rabbitmq]`` and ``[kafka]``).

    Parametrized with ``"memory"`` too (the contract suites of :mod:`txmq.testing.contract`
    are), it gives a ``memory://`` broker of the session's own, which needs no server.
    """
    if request.param == "memory":
        with _memory_broker("session") as url:
            yield url
    else:
        yield txmq_brokers.url(cast("Broker", request.param))


@pytest.fixture
def txmq_database(database_url: str) -> Iterator[str]:
    """URL of a new PostgreSQL database with txmq's tables, dropped after the test."""
    from txmq.testing.databases import fresh_postgres_database

    with fresh_postgres_database(database_url) as url:
        yield url


@pytest.fixture
def txmq_engine(txmq_database: str) -> Iterator[Engine]:
    """An ``Engine`` on :func:`txmq_database`'s fresh database, disposed after the test."""
    from sqlalchemy import create_engine

    engine = create_engine(txmq_database)
    yield engine
    engine.dispose()


@pytest.fixture
def txmq_mysql_database(mysql_url: str) -> Iterator[str]:
    """URL of a new MariaDB/MySQL database with txmq's tables, dropped after the test."""
    from txmq.testing.databases import fresh_mariadb_database

    with fresh_mariadb_database(mysql_url) as url:
        yield url


@pytest.fixture
def txmq_mysql_engine(txmq_mysql_database: str) -> Iterator[Engine]:
    """An ``Engine`` on :func:`txmq_mysql_database`'s fresh database, disposed after the test."""
    from sqlalchemy import create_engine

    engine = create_engine(txmq_mysql_database)
    yield engine
    engine.dispose()


@pytest.fixture
def txmq_sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """An ``Engine`` on ``tmp_path/txmq.db`` with txmq's tables, disposed after the test."""
    from txmq.testing.databases import sqlite_engine

    engine = sqlite_engine(tmp_path / "txmq.db")
    yield engine
    engine.dispose()


@pytest.fixture
def txmq_unique() -> Callable[[str], str]:
    """``txmq_unique(prefix)``: a topic or group name no other test uses, ``<prefix>-<hex>``.

    Raises (when called):
        InvalidMessage: the name would not be a valid topic/group name.
    """
    from txmq.message import validate_name

    def unique(prefix: str = "txmq") -> str:
        return validate_name(f"{prefix}-{uuid.uuid4().hex[:12]}", "name")

    return unique


@contextlib.contextmanager
def _memory_broker(prefix: str) -> Iterator[str]:
    """``memory://<prefix>-<hex>``, a new in-process broker, forgotten afterwards."""
    from txmq.adapters.memory.adapter import forget_memory_broker

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}"
    forget_memory_broker(name)


@pytest.fixture
def txmq_memory_url() -> Iterator[str]:
    """``memory://<unique>``: an empty in-process broker for this test only."""
    with _memory_broker("test") as url:
        yield url


_BROKER_FIXTURES = frozenset(
    {"rabbitmq_url", "kafka_url", "database_url", "mysql_url", "broker_url"}
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """With ``TXMQ_REQUIRE_BROKERS=1``, a skipped test that uses a broker fixture fails:
    CI must run every broker test, whatever skipped it."""
    report: pytest.TestReport = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and _BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and _required()
    ):
        report.outcome = "failed"
        report.longrepr = f"a broker test was skipped while {REQUIRE_ENV} is set: {report.longrepr}"
    return report
