"""One chaos run: start the rig, make transfers, inject the schedule's faults, drain, judge."""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, select

from txmq import DeadLetters, RecordState, connect, create_schema, redact
from txmq.adapters.registry import parse_broker_url
from txmq.chaos import faults as injectors
from txmq.chaos import schedule as schedules
from txmq.chaos.history import Operation, read_deliveries, read_duplicates, read_history
from txmq.chaos.invariants import Committed, Credit, FinalState, Invariants, check
from txmq.chaos.report import BrokerRun, FaultResult, Report
from txmq.chaos.rig import PrivateServer, Rig, Service, services
from txmq.chaos.scenario import ACCOUNTS, FROZEN, OPENING_BALANCE, BankTables, Scenario
from txmq.chaos.workload import POISON
from txmq.errors import ConfigurationError
from txmq.sql.tables import in_state
from txmq.testing.provision import cluster

Say = Callable[[str], object]

#: Transfers per second the bank aims at (a loaded 2-core machine makes fewer).
RATE = 15.0
#: After a fault is undone, how long until a new transfer must be credited.
RECOVERY_BOUND = 120.0
#: After the last fault, how long until everything committed is settled.
DRAIN_BOUND = 180.0
#: How long a service that cannot recover may go on saying it is ready.
READY_BOUND = 10.0
#: How long a private three-node cluster may take to start and form.
CLUSTER_START = 300.0
SYSTEMS = ("rabbitmq", "kafka")


def run(
    broker: str | None = None,
    database: str | None = None,
    *,
    schedule: str = "short",
    seed: int | None = None,
    json_path: str | Path | None = None,
    say: Say = print,
) -> int:
    """Run the chaos schedule on each broker; 0 when every invariant held, else 1.

    Args:
        broker: a broker URL (used as it is: faults that need to own the broker are not
            run), ``"rabbitmq"`` or ``"kafka"`` (a private one is started as processes), or
            None (a private RabbitMQ, then a private Kafka).
        database: a PostgreSQL URL (used as it is, with tables named after the run, dropped
            afterwards; the database faults are not run), or None (a private PostgreSQL).
        schedule: ``short`` (every single-node fault once), ``long`` (about 30 minutes) or
            ``cluster`` (a node killed, a node partitioned, a rolling restart, on a private
            three-node cluster on ``$TXMQ_CLUSTER_PORT_BASE``, or on the cluster a URL
            names, where those faults are then not run).
        seed: replays a run's schedule and workload; a random one when None (printed).
        json_path: where to write the JSON report.
        say: where the readable summary and progress go.

    Raises:
        ConfigurationError: an unknown schedule or broker URL scheme.
        ProvisionError: a private server or cluster could not be started (on the cluster
            schedule: its ports are taken, say).
    """
    planner = functools.partial(schedules.plan, schedule)
    report = run_report(broker, database, name=schedule, planner=planner, seed=seed, say=say)
    say(report.summary())
    if json_path is not None:
        report.write(Path(json_path))
    return 0 if report.passed else 1


def run_report(
    broker: str | None,
    database: str | None,
    *,
    name: str,
    planner: Callable[[int, str], schedules.Schedule],
    seed: int | None = None,
    say: Say = print,
) -> Report:
    """Run the schedule ``planner(seed, system)`` makes for each broker (as :func:`run`,
    short of the summary and the JSON file; :func:`txmq.chaos.schedule.crash` is what
    ``txmq demo --crash`` runs); the report.

    Raises:
        ConfigurationError: an unknown schedule or broker URL scheme.
    """
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    targets = [broker] if broker else list(SYSTEMS)
    plans = [(target, planner(seed, system_of(target))) for target in targets]
    # Where a private cluster would listen, checked before anything starts.
    ports = cluster.ClusterPorts.from_env() if name == schedules.CLUSTER else None
    say(f"txmq chaos: schedule {name}, seed {seed}")
    with exits_on_sigterm():
        runs = tuple(
            _run_one(target, database, plan, ports=ports, say=say) for target, plan in plans
        )
    return Report(schedule=name, seed=seed, runs=runs)


@contextlib.contextmanager
def exits_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit (status 143) in the main thread, as
    Ctrl-C raises KeyboardInterrupt: the run's ``finally`` blocks then stop the servers and
    clusters it started and delete its partition rules, which the default SIGTERM skips.
    Outside the main thread (no signal handlers there) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def system_of(target: str) -> str:
    """``rabbitmq`` or ``kafka`` for a broker name or URL (any scheme :func:`txmq.connect`
    takes for them).

    Raises:
        ConfigurationError: neither (InvalidURL for a URL no broker takes).
    """
    if target in SYSTEMS:
        return target
    system = parse_broker_url(target).system
    if system not in SYSTEMS:
        raise ConfigurationError(
            f"txmq chaos runs on rabbitmq or kafka, not {system}: {redact(target)}"
        )
    return system


def client_url(url: str, system: str) -> str:
    """The broker URL the services use: on RabbitMQ a 5 s heartbeat, so that a paused
    broker is noticed within the pause."""
    if system != "rabbitmq" or "heartbeat=" in url:
        return url
    return url + ("&" if "?" in url else "?") + "heartbeat=5"


class _Run:
    """The state of one run on one broker."""

    def __init__(self, scenario: Scenario, rig: Rig, engine: Engine, say: Say) -> None:
        self.scenario = scenario
        self.rig = rig
        self.engine = engine
        self.tables = BankTables(scenario)
        self.say = say
        #: Times nothing recovered within the bound while every service went on running and
        #: saying it was ready: a stall nobody was told about.
        self.silent_stalls = 0

    def idle(self, seconds: float) -> None:
        """Let the workload run for ``seconds``, starting again any service that died."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.rig.revive()
            time.sleep(0.2)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.rig.revive()
            if all(s.ready() is not False for s in self.rig.services.values()):
                return True
            time.sleep(0.2)
        return False

    def recovery(self, since: float, bound: float) -> float | None:
        """Seconds from ``since`` until a transfer made after it was credited (None: not
        within ``bound``; a silent stall too, counted, if no service exited or said it was
        not ready meanwhile)."""
        deadline = time.monotonic() + bound
        credits = self.tables.credits
        said_so = False
        asked = 0.0
        while time.monotonic() < deadline:
            said_so = bool(self.rig.revive()) or said_so
            if time.monotonic() - asked >= 1.0:
                asked = time.monotonic()
                said_so = said_so or any(
                    service.ready() is False for service in self.rig.services.values()
                )
            fresh = [
                op.message_id
                for op in read_history(self.scenario.history_path)
                if op.invoked_at >= since and _credits_payee(op)
            ]
            if fresh:
                query = select(credits.c.applied_at).where(credits.c.message_id.in_(fresh[:200]))
                try:
                    with self.engine.connect() as connection:
                        applied = connection.execute(query.limit(1)).scalar_one_or_none()
                except Exception:  # the database may still be coming back
                    applied = None
                if applied is not None:
                    return round(max(0.0, float(applied) - since), 2)
            time.sleep(0.25)
        if not said_so:
            self.silent_stalls += 1
            self.say(
                f"{self.rig.system}: a silent stall: nothing recovered within {bound:.0f} s, "
                "and every service went on running and saying it was ready"
            )
        return None

    def final_state(self) -> FinalState:
        tables = self.tables
        with self.engine.connect() as connection:
            committed = {
                row.message_id: Committed(
                    row.message_id, row.mode, row.payer, row.payee, int(row.amount)
                )
                for row in connection.execute(select(tables.transfers))
            }
            credits = [
                Credit(int(row.row), row.message_id, row.key, int(row.seq))
                for row in connection.execute(select(tables.credits))
            ]
            refunds = list(connection.execute(select(tables.refunds.c.original_id)).scalars())
            balances = {
                row.owner: int(row.balance) for row in connection.execute(select(tables.accounts))
            }
        return FinalState(
            committed=committed,
            credits=credits,
            refunds=refunds,
            deliveries=read_deliveries(Path(self.scenario.run_dir)),
            dead_letters=self.dead_letters(),
            opening=dict.fromkeys(ACCOUNTS, OPENING_BALANCE),
            balances=balances,
            inbox_duplicates=read_duplicates(Path(self.scenario.run_dir)),
        )

    def dead_letters(self) -> list[str]:
        with DeadLetters(
            self.scenario.broker_url,
            group=self.scenario.credit_group,
            topic=self.scenario.topic,
        ) as dlq:
            return [letter.message.id for letter in dlq.list(limit=100_000, timeout=10)]

    def backlog(self) -> int:
        """Outbox records still to publish or to decide (READY or PREPARED)."""
        records = self.tables.outbox.records
        pending = in_state(records, RecordState.READY, RecordState.PREPARED)
        query = select(func.count()).select_from(records).where(pending)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def drain(self, bound: float) -> bool:
        """Wait until the outbox is empty and every committed transfer is settled
        (credited, refunded or dead-lettered); whether that happened within ``bound``."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            self.rig.revive()
            try:
                state = self.final_state()
            except Exception:  # a server still coming back: look again
                time.sleep(1)
                continue
            if check([], state, transactional_broker=False).lost == 0 and not self.backlog():
                return True
            time.sleep(1)
        return False

    def inject(self, fault: schedules.PlannedFault) -> FaultResult:
        """Inject ``fault``, then measure the recovery from its undoing (none when what it
        hurt did not come back)."""
        injected = injectors.INJECTORS[fault.name](self.rig, fault)
        recovery = None
        if injected.unrecovered:
            self.say(f"{self.rig.system}: {fault.name} did not recover: {injected.unrecovered}")
        elif injected.undone_at is not None:
            recovery = self.recovery(injected.undone_at, RECOVERY_BOUND)
            if recovery is None:
                self.say(f"{self.rig.system}: no recovery within {RECOVERY_BOUND:.0f} s")
                for service in self.rig.services.values():  # what each said last, to go on
                    self.say(f"  {service.name} log: {service.last_line() or '(empty)'}")
        outage = None
        if injected.hurt_at is not None and injected.undone_at is not None:
            outage = self.longest_gap(injected.hurt_at, injected.undone_at)
        return FaultResult(
            fault.name,
            injected.ran,
            injected.reason,
            injected.count,
            recovery,
            injected.detail or injected.unrecovered,
            outage_s=outage,
        )

    def longest_gap(self, start: float, end: float) -> float | None:
        """The longest time from ``start`` to ``end`` (epoch seconds) in which no credit was
        applied (None: the database could not be asked)."""
        applied = self.tables.credits.c.applied_at
        query = select(applied).where(applied.between(start, end)).order_by(applied)
        try:
            with self.engine.connect() as connection:
                times = [float(at) for at in connection.execute(query).scalars()]
        except Exception:  # the database may be down; the run says so elsewhere
            return None
        return longest_gap(start, end, times)

    def finish(self) -> int:
        """Stop the transfers, let the backlog drain, check the services are ready; the
        stalls."""
        stalls = 0
        self.idle(2.0)
        bank = self.rig.services["bank"]
        bank.stop()
        bank.start(settle_only=True)  # check-backs and refunds go on
        if not self.drain(DRAIN_BOUND):
            stalls += 1
            self.say(f"{self.rig.system}: the backlog did not drain within {DRAIN_BOUND:.0f} s")
        if not self.wait_ready(READY_BOUND):
            stalls += 1
            self.say(f"{self.rig.system}: a service was not ready at the end")
        return stalls


def longest_gap(start: float, end: float, applied: list[float]) -> float:
    """The longest time from ``start`` to ``end`` with no time of ``applied`` (sorted,
    between the two) in it."""
    edges = [start, *applied, end]
    return round(max(later - earlier for earlier, later in itertools.pairwise(edges)), 2)


def _credits_payee(operation: Operation) -> bool:
    return operation.outcome == "ok" and operation.mode != POISON and operation.payee not in FROZEN


def _run_one(
    target: str,
    database: str | None,
    plan: schedules.Schedule,
    *,
    ports: cluster.ClusterPorts | None,
    say: Say,
) -> BrokerRun:
    started = time.monotonic()
    with ExitStack() as stack:
        chaos = _start(target, database, plan, ports=ports, stack=stack, say=say)
        stalls = 0
        if chaos.recovery(time.time(), RECOVERY_BOUND) is None:
            stalls += 1
            say(f"{plan.system}: nothing was credited within {RECOVERY_BOUND:.0f} s of starting")
        results: list[FaultResult] = []
        for fault in plan.faults:
            chaos.idle(fault.settle)
            say(f"{plan.system}: {fault.name}")
            result = chaos.inject(fault)
            if result.ran and result.recovery_s is None:
                stalls += 1
            results.append(result)
        stalls += chaos.finish()
        history = read_history(chaos.scenario.history_path)
        state = chaos.final_state()
        native = _native_transactions(chaos.scenario.broker_url)
        invariants = check(
            history,
            state,
            transactional_broker=native,
            stalls=stalls,
            silent_stalls=chaos.silent_stalls,
        )
        if plan.name not in (schedules.CRASH, schedules.CLUSTER):  # no claim about the others
            results += _not_run(plan.system)
        results.append(_poison(state))
        rig = chaos.rig
        return BrokerRun(
            broker=plan.system,
            broker_url=redact(chaos.scenario.broker_url),
            private_broker=rig.broker is not None or rig.cluster is not None,
            private_database=rig.database is not None,
            faults=tuple(results),
            invariants=invariants,
            counts=_counts(history, state, rig),
            unexpected_exits=[
                f"{e.service} exit {e.code}: {e.last_line}"
                for service in rig.services.values()
                for e in service.unexpected_exits
            ],
            seconds=time.monotonic() - started,
            run_dir=chaos.scenario.run_dir,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _start(
    target: str,
    database: str | None,
    plan: schedules.Schedule,
    *,
    ports: cluster.ClusterPorts | None,
    stack: ExitStack,
    say: Say,
) -> _Run:
    """Start the servers the run owns (on the cluster schedule, a three-node cluster on
    ``ports``), the tables and the three services."""
    system = plan.system
    run_dir = tempfile.mkdtemp(prefix=f"txmq-chaos-{system}-")
    say(f"{system}: starting (run directory {run_dir})")
    private = target in SYSTEMS
    broker_server, nodes = None, None
    if private and ports is not None:
        nodes = cluster.start(system, ports, timeout=CLUSTER_START)  # type: ignore[arg-type]
        stack.callback(cluster.stop, nodes)
    elif private:
        broker_server = PrivateServer(system)  # type: ignore[arg-type]
        stack.callback(broker_server.close)
    broker_url = nodes.url if nodes else broker_server.url if broker_server else target
    db_server = PrivateServer("postgres") if database is None else None
    if db_server is not None:
        stack.callback(db_server.close)
    scenario = Scenario(
        run=uuid.uuid4().hex[:8],
        broker_url=client_url(broker_url, system),
        database_url=db_server.url if db_server else str(database),
        run_dir=run_dir,
        rate=RATE,
        seed=plan.seed,
    )
    scenario_path = scenario.save()
    engine = create_engine(scenario.database_url, pool_pre_ping=True)
    stack.callback(engine.dispose)
    tables = BankTables(scenario)
    create_schema(engine, tables.outbox, tables.inbox)
    tables.metadata.create_all(engine)
    if db_server is None:
        stack.callback(tables.metadata.drop_all, engine)
    with engine.begin() as connection:
        connection.execute(
            tables.accounts.insert(),
            [{"owner": owner, "balance": OPENING_BALANCE} for owner in ACCOUNTS],
        )
    rig = Rig(system, broker_server, db_server, services(scenario, scenario_path), nodes)
    for name in ("consumer", "worker", "bank"):
        rig.services[name].start()
        stack.callback(rig.services[name].close)
        if name == "consumer":
            # Transfers start once the crediting group's queues exist, as in a deployment
            # that declares them first: on RabbitMQ, a message published while the group
            # declares them can overtake those held for it until then (they are re-routed
            # after the binding), and per-key order would not hold.
            _wait_started(rig.services[name], RECOVERY_BOUND, say)
    return _Run(scenario, rig, engine, say)


def _wait_started(service: Service, timeout: float, say: Say) -> None:
    """Wait until ``service`` says it started (its topology declared), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not service.log_has(f"{service.name} started", since=0):
        if time.monotonic() > deadline:
            say(f"{service.name} did not start within {timeout:.0f} s: {service.last_line()}")
            return
        service.revive_if_dead()
        time.sleep(0.2)


def _native_transactions(broker_url: str) -> bool:
    """Whether the broker has transactions of its own (Kafka): then aborted reads are
    counted, and the faults on its transactions apply."""
    adapter = connect(broker_url, check=False)
    try:
        return adapter.capabilities.native_transactions
    finally:
        adapter.close()


def _not_run(system: str) -> list[FaultResult]:
    """On another broker than Kafka, the faults on Kafka's own transactions (with why)."""
    if system == "kafka":
        return []
    return [FaultResult(name, False, reason) for name, reason in schedules.KAFKA_ONLY.items()]


def _poison(state: FinalState) -> FaultResult:
    poison = sum(1 for t in state.committed.values() if t.mode == POISON)
    return FaultResult(
        "poison-messages", True, count=poison, detail="part of the workload", recovers=False
    )


def _counts(history: list[Operation], state: FinalState, rig: Rig) -> dict[str, int]:
    outcomes = {outcome: 0 for outcome in ("ok", "failed", "unknown")}
    for op in history:
        outcomes[op.outcome] += 1
    return {
        "transfers": len(history),
        "ok": outcomes["ok"],
        "failed": outcomes["failed"],
        "unknown": outcomes["unknown"],
        "committed": len(state.committed),
        "credited": len({c.message_id for c in state.credits}),
        "refunded": len(set(state.refunds)),
        "poison": sum(1 for t in state.committed.values() if t.mode == POISON),
        "dead_letters": len(state.dead_letters),
        "process_starts": sum(s.starts for s in rig.services.values()),
    }


__all__ = ["Invariants", "run"]
