"""What the processes of one chaos run share: names, URLs, the bank's tables, kill points.

The orchestrator writes a :class:`Scenario` to ``<run dir>/scenario.json``; the bank
(service A) and the crediting consumer (service B) are separate processes that read it from
the file named by ``TXMQ_CHAOS_SCENARIO``, so that each can be killed and started again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sqlalchemy import Column, Float, Integer, MetaData, String, Table

from txmq import ConfigurationError, OutboxTables, make_inbox_table, make_outbox_tables

ENV_SCENARIO = "TXMQ_CHAOS_SCENARIO"
#: ``<point>:<n>[:<action>]``: the n-th time the process reaches ``point`` it SIGKILLs itself
#: (action ``kill``, the default), SIGSTOPs itself (``stop``: whoever armed it continues
#: it), or sleeps there once (``sleep=<seconds>``; it then prints :data:`WOKE` on stderr).
ENV_KILL = "TXMQ_CHAOS_KILL"
#: URL query options this process adds to the scenario's broker URL (a fault's short
#: timeouts, for the one process it is aimed at).
ENV_BROKER_OPTIONS = "TXMQ_CHAOS_BROKER_OPTIONS"
#: What a process armed with a ``sleep`` action prints once it has slept.
WOKE = "txmq chaos: woke at"
#: Set: the bank makes no new transfers, but still answers check-backs and refunds (the drain).
ENV_NO_TRANSFERS = "TXMQ_CHAOS_NO_TRANSFERS"

#: Kill points of the bank (service A).
KILL_IN_EXECUTOR = "executor"
KILL_AFTER_LOCAL_COMMIT = "after-local-commit"
#: Kill points of the crediting consumer (service B).
KILL_BEFORE_DB_COMMIT = "before-db-commit"
KILL_AFTER_DB_COMMIT = "after-db-commit"
KILL_POINTS = (
    KILL_IN_EXECUTOR,
    KILL_AFTER_LOCAL_COMMIT,
    KILL_BEFORE_DB_COMMIT,
    KILL_AFTER_DB_COMMIT,
)

OPENING_BALANCE = 1_000_000
PAYERS = tuple(f"acct-{n}" for n in range(6))
#: Crediting these fails for good: dead-lettered, then compensated (the payer refunded).
FROZEN = ("frozen-0", "frozen-1")
ACCOUNTS = PAYERS + FROZEN


@dataclass(frozen=True, slots=True)
class Scenario:
    """One run's names and URLs (JSON in the run directory).

    Attributes:
        run: a short unique id; every table, group and topic name carries it.
        broker_url: the broker's URL, as the services use it.
        database_url: service A's and service B's database (one database, separate tables).
        run_dir: where histories, delivery logs and process logs go.
        rate: transfers per second the bank aims at.
        seed: the workload's seed (which transfer uses which mode, payer, payee, amount).
    """

    run: str
    broker_url: str
    database_url: str
    run_dir: str
    rate: float
    seed: int

    @property
    def prefix(self) -> str:
        return f"chaos_{self.run}_"

    @property
    def topic(self) -> str:
        return f"chaos-{self.run}.transfers"

    @property
    def outbox_group(self) -> str:
        """Outbox ``stage()`` and ``send_in_local_transaction``, relayed by ``txmq worker``."""
        return f"bank-{self.run}"

    @property
    def half_group(self) -> str:
        """``send_in_transaction``: relayed and checked back by the bank itself (its checker)."""
        return f"bank-half-{self.run}"

    @property
    def credit_group(self) -> str:
        return f"credit-{self.run}"

    @property
    def refund_group(self) -> str:
        return f"refund-{self.run}"

    @property
    def history_path(self) -> Path:
        return Path(self.run_dir) / "history.jsonl"

    def deliveries_path(self, pid: int) -> Path:
        return Path(self.run_dir) / f"deliveries-{pid}.jsonl"

    def duplicates_path(self, pid: int) -> Path:
        return Path(self.run_dir) / f"duplicates-{pid}.txt"

    def save(self) -> Path:
        path = Path(self.run_dir) / "scenario.json"
        path.write_text(json.dumps(asdict(self)))
        return path

    @classmethod
    def from_env(cls) -> Scenario:
        """The scenario named by ``TXMQ_CHAOS_SCENARIO``.

        Raises:
            ConfigurationError: the variable is not set or the file is unreadable.
        """
        path = os.environ.get(ENV_SCENARIO)
        if not path:
            raise ConfigurationError(f"{ENV_SCENARIO} must name a chaos scenario file")
        try:
            scenario = cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot read the chaos scenario {path}: {exc}") from exc
        options = os.environ.get(ENV_BROKER_OPTIONS)
        if not options:
            return scenario
        url = scenario.broker_url
        return replace(scenario, broker_url=url + ("&" if "?" in url else "?") + options)


class BankTables:
    """Service A's accounts and its record of transfers and refunds; service B's credits.

    ``transfers`` is written in the same local transaction as the debit: a row there is what
    "this transfer committed" means, whatever the history says the producer saw. ``credits``
    and ``refunds`` have no unique key on purpose: the inbox is what must keep a message from
    being applied twice, and the checker counts the rows.
    """

    def __init__(self, scenario: Scenario) -> None:
        self.metadata = MetaData()
        prefix = scenario.prefix
        self.accounts = Table(
            f"{prefix}accounts",
            self.metadata,
            Column("owner", String(40), primary_key=True),
            Column("balance", Integer, nullable=False),
        )
        self.transfers = Table(
            f"{prefix}transfers",
            self.metadata,
            Column("transfer_id", String(80), primary_key=True),
            Column("message_id", String(80), nullable=False, unique=True),
            Column("mode", String(40), nullable=False),
            Column("payer", String(40), nullable=False),
            Column("payee", String(40), nullable=False),
            Column("amount", Integer, nullable=False),
        )
        self.credits = Table(
            f"{prefix}credits",
            self.metadata,
            Column("row", Integer, primary_key=True, autoincrement=True),
            Column("message_id", String(80), nullable=False),
            Column("key", String(80)),
            Column("seq", Integer, nullable=False),
            Column("payee", String(40), nullable=False),
            Column("amount", Integer, nullable=False),
            Column("applied_at", Float, nullable=False),
        )
        self.refunds = Table(
            f"{prefix}refunds",
            self.metadata,
            Column("row", Integer, primary_key=True, autoincrement=True),
            Column("original_id", String(80), nullable=False),
            Column("payer", String(40), nullable=False),
            Column("amount", Integer, nullable=False),
            Column("applied_at", Float, nullable=False),
        )
        self.outbox: OutboxTables = make_outbox_tables(self.metadata, prefix=prefix)
        self.inbox = make_inbox_table(self.metadata, name=f"{prefix}inbox")


class KillPoint:
    """The ``TXMQ_CHAOS_KILL`` point of this process: on its n-th arrival, SIGKILL itself,
    SIGSTOP itself, or sleep (see :data:`ENV_KILL`); a stop or a sleep happens once."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self._left = 0
        self._action = "kill"
        self._sleep = 0.0
        if spec:
            point, _, rest = spec.partition(":")
            count, _, action = rest.partition(":")
            action = action or "kill"
            seconds = action.removeprefix("sleep=")
            valid = action in ("kill", "stop") or (
                action.startswith("sleep=") and seconds.replace(".", "", 1).isdigit()
            )
            if point not in KILL_POINTS or not count.isdigit() or int(count) < 1 or not valid:
                raise ConfigurationError(
                    f"{ENV_KILL}={spec!r}: use <point>:<n>[:kill|stop|sleep=<seconds>], n >= 1"
                )
            self.point, self._left = point, int(count)
            self._action = "sleep" if action.startswith("sleep=") else action
            self._sleep = float(seconds) if self._action == "sleep" else 0.0

    @classmethod
    def from_env(cls) -> KillPoint:
        return cls(os.environ.get(ENV_KILL))

    def reached(self, point: str) -> None:
        """Die here if this is the armed point and its count has come."""
        if point != self.point:
            return
        self._left -= 1
        if self._left > 0:
            return
        if self._action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        self.point = None  # a stop or a sleep happens once
        if self._action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            time.sleep(self._sleep)  # the slow step itself
            print(f"{WOKE} {point}", file=sys.stderr, flush=True)
