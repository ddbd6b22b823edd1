"""The fault schedule: which faults, in which order, with which parameters; a pure function
of the schedule's name, the seed and the broker, so the same seed replays the same run."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from txmq.errors import ConfigurationError

SCHEDULES = ("short", "long", "cluster")
CLUSTER = "cluster"
#: ``txmq demo --crash``: the worker and the consumer SIGKILLed midway (not a ``txmq chaos``
#: schedule).
CRASH = "crash"

# The single-node faults this slice injects.
PRODUCER_IN_EXECUTOR = "sigkill-producer-in-executor"
PRODUCER_AFTER_LOCAL_COMMIT = "sigkill-producer-after-local-commit"
RELAY = "sigkill-relay"
RELAY_AFTER_CONFIRM = "sigkill-relay-between-confirm-and-sent"
CONSUMER_BEFORE_DB_COMMIT = "sigkill-consumer-before-db-commit"
CONSUMER_AFTER_DB_COMMIT = "sigkill-consumer-after-db-commit"
BROKER_KILL = "broker-kill-9-restart"
BROKER_RESTART = "broker-clean-restart"
BROKER_PAUSE = "broker-sigstop-sigcont"
CONNECTION_RESET = "connection-reset"
DATABASE_RESTART = "database-restart"
DATABASE_PAUSE = "database-pause"
PARTITION_BROKER = "partition-broker"
PARTITION_DATABASE = "partition-database"
RELAYS_SHARING_ID = "kafka-relays-sharing-transactional-id"
TRANSACTION_TIMEOUT = "kafka-transaction-timeout"
SLOW_HANDLER = "handler-slower-than-heartbeat"
INJECTED = (
    PRODUCER_IN_EXECUTOR,
    PRODUCER_AFTER_LOCAL_COMMIT,
    RELAY,
    RELAY_AFTER_CONFIRM,
    CONSUMER_BEFORE_DB_COMMIT,
    CONSUMER_AFTER_DB_COMMIT,
    BROKER_KILL,
    BROKER_RESTART,
    BROKER_PAUSE,
    CONNECTION_RESET,
    DATABASE_RESTART,
    DATABASE_PAUSE,
    PARTITION_BROKER,
    PARTITION_DATABASE,
    RELAYS_SHARING_ID,
    TRANSACTION_TIMEOUT,
    SLOW_HANDLER,
)
# The faults of the cluster schedule, on a three-node cluster the run starts.
NODE_KILL = "cluster-node-kill-9-restart"
NODE_PARTITION = "cluster-node-partition"
ROLLING_RESTART = "cluster-rolling-restart"
CLUSTER_FAULTS = (NODE_KILL, NODE_PARTITION, ROLLING_RESTART)
#: How long one node is cut off from the other two.
NODE_PARTITION_SECONDS = 10.0
#: Nodes of the cluster the cluster schedule runs on.
CLUSTER_SIZE = 3
#: Faults on Kafka's own transactions; on another broker they are reported not run, for
#: this reason.
KAFKA_ONLY: dict[str, str] = {
    RELAYS_SHARING_ID: (
        "not applicable: RabbitMQ publisher confirms have no transactional.id to share or fence"
    ),
    TRANSACTION_TIMEOUT: (
        "not applicable: a RabbitMQ half message is a PREPARED record, not an open broker "
        "transaction that can time out"
    ),
}
#: Seconds a broker or database stays paused: longer than the services' heartbeat (the
#: runner sets RabbitMQ's heartbeat to 5 s; Kafka's session timeout is 10 s).
PAUSE_SECONDS = {"rabbitmq": 12.0, "kafka": 12.0, "database": 8.0}
PARTITION_SECONDS = (10.0, 30.0)
#: URL options of the consumer whose handler sleeps, by broker: on Kafka a poll interval
#: shorter than the sleep, so that the group evicts it (RabbitMQ's heartbeat is short already).
SLOW_HANDLER_BROKER_OPTIONS = {"kafka": "max.poll.interval.ms=10000"}
#: Seconds a second relay with the same Kafka transactional ids fights the first one.
TWIN_SECONDS = 8.0
#: ``transaction.timeout.ms`` of the bank whose half message transaction is left open, and
#: how long it stays stopped: past the timeout and the broker's check for timed-out
#: transactions (``transaction.abort.timed.out.transaction.cleanup.interval.ms``, 10 s).
TRANSACTION_TIMEOUT_MS = 5_000
TRANSACTION_STOP_SECONDS = 18.0
#: How long the slow handler sleeps: past RabbitMQ's heartbeat timeout (the services use
#: a 5 s heartbeat) and past Kafka's ``max.poll.interval.ms`` (the slow consumer gets 10 s).
SLOW_HANDLER_SECONDS = 15.0
#: The faults that last a fixed time (their ``nth``, where they have one, is seeded).
FIXED_SECONDS = {
    RELAYS_SHARING_ID: TWIN_SECONDS,
    TRANSACTION_TIMEOUT: TRANSACTION_STOP_SECONDS,
    SLOW_HANDLER: SLOW_HANDLER_SECONDS,
}


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """One fault of the schedule.

    Attributes:
        name: one of :data:`INJECTED`.
        settle: seconds of normal work before it is injected.
        nth: for a kill point, at which arrival the process kills itself; for a relay
            kill, how many tenths of a second after the fault starts; for a cluster fault,
            the node it hits (0-based; a rolling restart starts there).
        seconds: how long a pause, an outage or a partition lasts.
    """

    name: str
    settle: float
    nth: int = 1
    seconds: float = 0.0


@dataclass(frozen=True)
class Schedule:
    name: str
    seed: int
    system: str
    faults: tuple[PlannedFault, ...] = field(default_factory=tuple)


def plan(name: str, seed: int, system: str) -> Schedule:
    """The schedule ``name`` for a broker of ``system`` (``"rabbitmq"`` or ``"kafka"``).

    ``short`` injects every single-node fault once, in a seeded order (partitions of 10 s);
    ``long`` repeats them in seeded orders for about 30 minutes (partitions of 10 and 30 s);
    ``cluster`` injects each of :data:`CLUSTER_FAULTS` once, in a seeded order, on seeded
    nodes of a three-node cluster.

    Raises:
        ConfigurationError: an unknown schedule.
    """
    if name not in SCHEDULES:
        raise ConfigurationError(f"unknown schedule {name!r}: use one of {', '.join(SCHEDULES)}")
    rng = random.Random(f"{name}:{seed}:{system}")
    if name == CLUSTER:
        return Schedule(name=name, seed=seed, system=system, faults=_cluster_faults(rng))
    rounds = 1 if name == "short" else 12
    faults: list[PlannedFault] = []
    for number in range(rounds):
        order = [f for f in INJECTED if system == "kafka" or f not in KAFKA_ONLY]
        rng.shuffle(order)
        # Partitions last 10 s, and in every other round of the long schedule 30 s.
        partition = PARTITION_SECONDS[number % len(PARTITION_SECONDS)]
        faults += [_parameters(fault, rng, system, partition) for fault in order]
    return Schedule(name=name, seed=seed, system=system, faults=tuple(faults))


def crash(seed: int, system: str) -> Schedule:
    """What ``txmq demo --crash`` runs: the relay SIGKILLed between the broker's confirm and
    marking SENT, then the consumer between its database commit and the ack."""
    rng = random.Random(f"{CRASH}:{seed}:{system}")
    faults = tuple(
        PlannedFault(fault, round(rng.uniform(2.0, 4.0), 2), nth=rng.randint(1, 3))
        for fault in (RELAY_AFTER_CONFIRM, CONSUMER_AFTER_DB_COMMIT)
    )
    return Schedule(name=CRASH, seed=seed, system=system, faults=faults)


def _cluster_faults(rng: random.Random) -> tuple[PlannedFault, ...]:
    order = list(CLUSTER_FAULTS)
    rng.shuffle(order)
    faults = []
    for fault in order:
        # Longer than between single-node faults: the cluster settles its leaders first.
        settle = round(rng.uniform(3.0, 6.0), 2)
        node = rng.randrange(CLUSTER_SIZE)
        if fault == NODE_KILL:
            seconds = round(rng.uniform(1.0, 4.0), 2)  # how long the killed node stays down
        elif fault == NODE_PARTITION:
            seconds = NODE_PARTITION_SECONDS
        else:
            seconds = 0.0
        faults.append(PlannedFault(fault, settle, nth=node, seconds=seconds))
    return tuple(faults)


def _parameters(fault: str, rng: random.Random, system: str, partition: float) -> PlannedFault:
    settle = round(rng.uniform(1.0, 3.0), 2)
    if fault in (PARTITION_BROKER, PARTITION_DATABASE):
        return PlannedFault(fault, settle, seconds=partition)
    if fault in (BROKER_PAUSE, DATABASE_PAUSE):
        key = system if fault == BROKER_PAUSE else "database"
        return PlannedFault(fault, settle, seconds=PAUSE_SECONDS[key])
    if fault in FIXED_SECONDS:
        return PlannedFault(fault, settle, nth=rng.randint(1, 3), seconds=FIXED_SECONDS[fault])
    if fault in (BROKER_KILL, BROKER_RESTART, DATABASE_RESTART):
        return PlannedFault(fault, settle, seconds=round(rng.uniform(1.0, 4.0), 2))
    nth = rng.randint(2, 20) if fault == RELAY else rng.randint(1, 5)
    return PlannedFault(fault, settle, nth=nth)
