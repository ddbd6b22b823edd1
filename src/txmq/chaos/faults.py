"""The fault injectors: each one hurts the rig, undoes it, and says when it was undone.

An injector that cannot act here (a broker given by URL, a tool this machine lacks, a kill
point the process never reached) says why instead; the report shows it as not run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from txmq.chaos import schedule
from txmq.chaos.partition import (
    dropped_packets,
    listing,
    node_rules,
    rules_in_place,
)
from txmq.chaos.rig import PrivateServer, Rig
from txmq.chaos.scenario import (
    KILL_AFTER_DB_COMMIT,
    KILL_AFTER_LOCAL_COMMIT,
    KILL_BEFORE_DB_COMMIT,
    KILL_IN_EXECUTOR,
    WOKE,
)
from txmq.chaos.schedule import PlannedFault
from txmq.errors import ConfigurationError
from txmq.outbox.relay import KILL_AFTER_CONFIRM
from txmq.testing.provision import cluster
from txmq.testing.provision.common import ProvisionError

#: How long an armed process may take to reach its kill point.
KILL_POINT_TIMEOUT = 90.0


@dataclass(frozen=True, slots=True)
class Injected:
    """What an injector did: ``undone_at`` (epoch seconds) when it ran, else ``reason``;
    ``unrecovered`` says why what it hurt did not come back (the run then fails);
    ``hurt_at``, where set (the cluster faults), when it started hurting."""

    count: int = 0
    undone_at: float | None = None
    reason: str = ""
    detail: str = ""
    unrecovered: str = ""
    hurt_at: float | None = None

    @property
    def ran(self) -> bool:
        return self.undone_at is not None


def _kill_point(service: str, point: str) -> Callable[[Rig, PlannedFault], Injected]:
    def inject(rig: Rig, fault: PlannedFault) -> Injected:
        process = rig.services[service]
        process.stop()
        process.start(kill=f"{point}:{fault.nth}")
        code = process.wait_exit(KILL_POINT_TIMEOUT)
        if code is None:
            process.stop()
            process.start()
            return Injected(reason=f"{service} did not reach {point} within {KILL_POINT_TIMEOUT} s")
        process.start()
        if code != -9:
            return Injected(reason=f"{service} exited {code} before reaching {point}")
        return Injected(count=1, undone_at=time.time(), detail=f"at arrival {fault.nth}")

    return inject


def _kill_relay(rig: Rig, fault: PlannedFault) -> Injected:
    worker = rig.services["worker"]
    time.sleep(fault.nth / 10)  # a seeded moment while it relays
    worker.sigkill()
    worker.start()
    return Injected(count=1, undone_at=time.time(), detail=f"{fault.nth / 10:.1f} s in")


def _twin_relay(rig: Rig, fault: PlannedFault) -> Injected:
    """A second ``txmq worker`` with the first one's instance id (so the same Kafka
    transactional ids) for ``fault.seconds``: each fences the other's transactions."""
    twin = rig.services["worker"].twin("worker-twin")
    twin.start()
    try:
        time.sleep(fault.seconds)  # the fight itself
        if not twin.running():
            return Injected(reason=f"the second relay exited at once: {twin.last_line()}")
    finally:
        code = twin.stop()
        twin.close()
    return Injected(
        count=1, undone_at=time.time(), detail=f"{fault.seconds:.0f} s, the twin exited {code}"
    )


def _transaction_timeout(rig: Rig, fault: PlannedFault) -> Injected:
    """The bank, with a short ``transaction.timeout.ms``, stops itself in the executor of
    a half message (its Kafka transaction open) for longer than that: the broker aborts the
    transaction. It is then continued, and started again with the usual timeout."""
    bank = rig.services["bank"]
    bank.stop()
    bank.start(
        kill=f"{KILL_IN_EXECUTOR}:{fault.nth}:stop",
        broker_options=f"transaction.timeout.ms={schedule.TRANSACTION_TIMEOUT_MS}",
    )
    if not bank.wait_stopped(KILL_POINT_TIMEOUT):
        bank.stop()
        bank.start()
        return Injected(
            reason=f"the bank did not stop in its executor within {KILL_POINT_TIMEOUT} s"
        )
    try:
        time.sleep(fault.seconds)  # the open transaction times out meanwhile
    finally:
        bank.resume()
    bank.stop()  # it finishes the transfer it was making first
    bank.start()
    return Injected(
        count=1,
        undone_at=time.time(),
        detail=(
            f"stopped {fault.seconds:.0f} s in executor {fault.nth}, "
            f"transaction.timeout.ms={schedule.TRANSACTION_TIMEOUT_MS}"
        ),
    )


def _slow_handler(rig: Rig, fault: PlannedFault) -> Injected:
    """The consumer's handler sleeps once, inside its transaction, for longer than the
    RabbitMQ heartbeat timeout and Kafka's ``max.poll.interval.ms``."""
    consumer = rig.services["consumer"]
    consumer.stop()
    since = consumer.log_size()
    options = schedule.SLOW_HANDLER_BROKER_OPTIONS.get(rig.system, "")
    consumer.start(
        kill=f"{KILL_BEFORE_DB_COMMIT}:{fault.nth}:sleep={fault.seconds}", broker_options=options
    )
    deadline = time.monotonic() + KILL_POINT_TIMEOUT + fault.seconds
    while not consumer.log_has(WOKE, since=since):
        if not consumer.running() or time.monotonic() > deadline:
            consumer.stop()
            consumer.start()
            return Injected(reason=f"the consumer's handler did not sleep: {consumer.last_line()}")
        time.sleep(0.2)
    return Injected(
        count=1,
        undone_at=time.time(),
        detail=f"slept {fault.seconds:.0f} s in delivery {fault.nth}"
        + (f" ({options})" if options else " (heartbeat 5 s)"),
    )


def _server_fault(
    which: str, act: Callable[[PrivateServer, PlannedFault], str]
) -> Callable[[Rig, PlannedFault], Injected]:
    def inject(rig: Rig, fault: PlannedFault) -> Injected:
        server = rig.broker if which == "broker" else rig.database
        if server is None:
            return Injected(
                reason=(
                    f"the {which} was given by URL: txmq chaos only hurts servers it started "
                    f"(leave out --{which} for a private one)"
                )
            )
        detail = act(server, fault)
        return Injected(count=1, undone_at=time.time(), detail=detail)

    return inject


def _kill_server(server: PrivateServer, fault: PlannedFault) -> str:
    server.kill_and_restart(down_for=fault.seconds)
    return f"down {fault.seconds} s"


def _restart_server(server: PrivateServer, fault: PlannedFault) -> str:
    server.restart(down_for=fault.seconds)
    return f"down {fault.seconds} s"


def _pause_server(server: PrivateServer, fault: PlannedFault) -> str:
    server.pause(fault.seconds)
    return f"paused {fault.seconds} s"


def _reset_connections(rig: Rig, fault: PlannedFault) -> Injected:
    if rig.broker is None:
        return Injected(reason="the broker was given by URL: its connections are not ours to reset")
    ss = shutil.which("ss")
    if ss is None:
        return Injected(reason="ss (iproute2) is not installed")
    port = rig.broker.port
    # Both ends live on this machine: the clients' sockets and the broker's.
    result = subprocess.run(  # noqa: S603  # fixed argv
        [ss, "-K", "-t", f"( dport = :{port} or sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return Injected(reason=f"ss -K failed: {result.stderr.strip()[:200]}")
    closed = sum(1 for line in result.stdout.splitlines()[1:] if line.strip())
    if closed == 0:
        return Injected(reason="ss -K closed nothing (a kernel without SOCK_DESTROY?)")
    return Injected(count=closed, undone_at=time.time(), detail=f"{closed} sockets")


def _partition(which: str) -> Callable[[Rig, PlannedFault], Injected]:
    def inject(rig: Rig, fault: PlannedFault) -> Injected:
        server = rig.broker if which == "broker" else rig.database
        if server is None:
            return Injected(reason=f"the {which} was given by URL: only a private one is cut off")
        iptables = shutil.which("iptables")
        if iptables is None:
            return Injected(reason="iptables (nftables) is not installed")
        port = str(server.port)
        # Loopback packets to the server's port and back from it, dropped (not refused): the
        # connections stay open and hang, as they do behind a partition.
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", direction, port, "-j", "DROP"]
            for direction in ("--dport", "--sport")
        ]
        with rules_in_place(iptables, rules, insert=True) as refused:
            if refused:
                return Injected(reason=f"iptables refused the rule: {refused}")
            time.sleep(fault.seconds)  # the partition itself
        return Injected(count=1, undone_at=time.time(), detail=f"{fault.seconds:.0f} s")

    return inject


CLUSTER_BY_URL = Injected(
    reason=(
        "the cluster was given by URL: txmq chaos only hurts a cluster it started "
        "(--broker rabbitmq or kafka)"
    )
)


def _cluster_fault(
    act: Callable[[cluster.Cluster, PlannedFault], str],
) -> Callable[[Rig, PlannedFault], Injected]:
    def inject(rig: Rig, fault: PlannedFault) -> Injected:
        if rig.cluster is None:
            return CLUSTER_BY_URL
        hurt = time.time()
        try:
            detail = act(rig.cluster, fault)
        except ProvisionError as exc:
            return Injected(count=1, undone_at=time.time(), unrecovered=str(exc), hurt_at=hurt)
        return Injected(count=1, undone_at=time.time(), detail=detail, hurt_at=hurt)

    return inject


#: How long a node restarted on its data has to answer and be counted by the cluster again.
REJOIN_TIMEOUT = 180.0


def _kill_node(running: cluster.Cluster, fault: PlannedFault) -> str:
    cluster.stop_node(running, fault.nth, kill=True)
    time.sleep(fault.seconds)  # the outage itself
    took = cluster.start_node(running, fault.nth, timeout=REJOIN_TIMEOUT)
    return (
        f"node {fault.nth} down {fault.seconds} s, back and rejoined {took:.1f} s after its start"
    )


def _rolling_restart(running: cluster.Cluster, fault: PlannedFault) -> str:
    took = []
    for step in range(running.ports.size):
        node = (fault.nth + step) % running.ports.size
        cluster.stop_node(running, node)
        took.append(
            f"node {node} {cluster.start_node(running, node, timeout=REJOIN_TIMEOUT):.0f} s"
        )
    return "rejoined: " + ", ".join(took)


def _partition_node(rig: Rig, fault: PlannedFault) -> Injected:
    """Node ``fault.nth`` cut off from the other two for ``fault.seconds`` (see
    :mod:`txmq.chaos.partition`); the rules are deleted again whatever happens meanwhile."""
    running = rig.cluster
    if running is None:
        return CLUSTER_BY_URL
    iptables = shutil.which("iptables")
    if iptables is None:
        return Injected(reason="iptables (nftables) is not installed")
    try:
        rules = node_rules(running.ports, running.broker, fault.nth)
    except ConfigurationError as exc:
        return Injected(reason=str(exc))
    hurt = time.time()
    refused, dropped = _hold_rules(iptables, rules, fault.seconds)
    undone = time.time()
    if refused or not dropped:
        # Rules that dropped nothing cut nothing off: that is no partition to report.
        why = f"iptables refused the rule: {refused}" if refused else "no packet was dropped"
        return Injected(reason=why)
    detail = f"node {fault.nth} cut off {fault.seconds:.0f} s, {dropped} packets dropped"
    try:
        took = cluster.wait_joined(running, timeout=REJOIN_TIMEOUT, via=fault.nth)
    except ProvisionError as exc:
        return Injected(
            count=1, undone_at=undone, detail=detail, unrecovered=str(exc), hurt_at=hurt
        )
    detail += f", counted again {took:.1f} s after"
    return Injected(count=1, undone_at=undone, detail=detail, hurt_at=hurt)


def _hold_rules(iptables: str, rules: list[list[str]], seconds: float) -> tuple[str, int | None]:
    """``rules`` in place for ``seconds``; iptables' refusal ("" when none) and the packets
    the last rule dropped."""
    with rules_in_place(iptables, rules) as refused:
        if refused:
            return refused, None
        time.sleep(seconds)  # the partition itself
        return "", dropped_packets(listing(iptables), rules[-1])


INJECTORS: dict[str, Callable[[Rig, PlannedFault], Injected]] = {
    schedule.PRODUCER_IN_EXECUTOR: _kill_point("bank", KILL_IN_EXECUTOR),
    schedule.PRODUCER_AFTER_LOCAL_COMMIT: _kill_point("bank", KILL_AFTER_LOCAL_COMMIT),
    schedule.RELAY: _kill_relay,
    schedule.RELAY_AFTER_CONFIRM: _kill_point("worker", KILL_AFTER_CONFIRM),
    schedule.CONSUMER_BEFORE_DB_COMMIT: _kill_point("consumer", KILL_BEFORE_DB_COMMIT),
    schedule.CONSUMER_AFTER_DB_COMMIT: _kill_point("consumer", KILL_AFTER_DB_COMMIT),
    schedule.BROKER_KILL: _server_fault("broker", _kill_server),
    schedule.BROKER_RESTART: _server_fault("broker", _restart_server),
    schedule.BROKER_PAUSE: _server_fault("broker", _pause_server),
    schedule.CONNECTION_RESET: _reset_connections,
    schedule.DATABASE_RESTART: _server_fault("database", _restart_server),
    schedule.DATABASE_PAUSE: _server_fault("database", _pause_server),
    schedule.PARTITION_BROKER: _partition("broker"),
    schedule.PARTITION_DATABASE: _partition("database"),
    schedule.RELAYS_SHARING_ID: _twin_relay,
    schedule.TRANSACTION_TIMEOUT: _transaction_timeout,
    schedule.SLOW_HANDLER: _slow_handler,
    schedule.NODE_KILL: _cluster_fault(_kill_node),
    schedule.NODE_PARTITION: _partition_node,
    schedule.ROLLING_RESTART: _cluster_fault(_rolling_restart),
}
