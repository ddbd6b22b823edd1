"""Three-node RabbitMQ and Kafka clusters on loopback as processes (``brokers up --cluster 3``).

Kafka: three KRaft nodes, each broker and controller, one static controller quorum; topics
replicated three times with ``min.insync.replicas=2`` (so is the transaction state log), which
with txmq's ``acks=all`` producer means a write survives the loss of any one node.
RabbitMQ: three nodes joined by classic peer discovery (started one after the other, each
later one joins the first), sharing one private epmd and one Erlang cookie; txmq declares
quorum queues there with ``?queue_type=quorum`` in the URL the cluster prints.

Each node runs in its own process group and directory under one cluster directory; a node
can be stopped and started again on its data (:func:`stop_node`, :func:`start_node`), which
is what the cluster fault schedule does.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from txmq.testing.provision import kafka_dist, launch, processes, state
from txmq.testing.provision.common import (
    LOOPBACK,
    Ports,
    ProvisionError,
    process_start_time,
    state_dir,
)
from txmq.testing.provision.readiness import tcp_open, wait_ready
from txmq.testing.provision.state import Running

ClusterBroker = Literal["rabbitmq", "kafka"]
CLUSTER_BROKERS: tuple[ClusterBroker, ...] = ("rabbitmq", "kafka")
SIZE = 3
#: Lowest port of a cluster's block (``$TXMQ_CLUSTER_PORT_BASE``); node ``n`` uses
#: ``base + 10 n`` ... ``base + 10 n + 3``, the shared epmd ``base + 99``.
DEFAULT_PORT_BASE = 25600
PORT_BASE_ENV = "TXMQ_CLUSTER_PORT_BASE"
STATE_FILE = "cluster.json"
#: Three JVMs on a small machine: less heap each than a single node gets.
KAFKA_NODE_HEAP = ("-Xms192m", "-Xmx512m")


@dataclass(frozen=True, slots=True)
class ClusterPorts:
    """The loopback ports of a cluster's nodes, all derived from ``base``."""

    base: int = DEFAULT_PORT_BASE
    size: int = SIZE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClusterPorts:
        """``$TXMQ_CLUSTER_PORT_BASE`` or the default.

        Raises:
            ProvisionError: the variable is not a port number that leaves room for the block.
        """
        text = (os.environ if environ is None else environ).get(PORT_BASE_ENV)
        if text is None:
            return cls()
        if not text.isdigit() or not 0 < int(text) <= 65536 - 100:
            raise ProvisionError(f"{PORT_BASE_ENV} must be a port number below 65436, not {text!r}")
        return cls(base=int(text))

    @property
    def epmd(self) -> int:
        return self.base + 99

    def node(self, number: int) -> Ports:
        """The ports of node ``number`` (0-based), in the single-node :class:`Ports` shape."""
        first = self.base + 10 * number
        return Ports(
            rabbitmq=first,
            rabbitmq_dist=first + 1,
            rabbitmq_epmd=self.epmd,
            rabbitmq_management=first + 4,
            kafka=first + 2,
            kafka_controller=first + 3,
        )

    def nodes(self) -> list[Ports]:
        return [self.node(number) for number in range(self.size)]

    def group(self, number: int) -> int | None:
        """The group id node ``number``'s processes run as: its first port, unique on this
        machine, so that firewall rules can tell the node's sockets from the other nodes' and
        from its clients' (``txmq chaos --schedule cluster`` partitions a node that way).
        None unless we are root (only root may set it)."""
        return self.node(number).rabbitmq if os.geteuid() == 0 else None

    def peer_ports(self, broker: ClusterBroker, number: int) -> tuple[int, ...]:
        """The ports the other nodes reach node ``number`` on: Erlang distribution on
        RabbitMQ; the broker listener (replication) and the controller on Kafka."""
        node = self.node(number)
        if broker == "rabbitmq":
            return (node.rabbitmq_dist,)
        return (node.kafka, node.kafka_controller)

    def in_use(self) -> list[int]:
        """Every port the cluster listens on."""
        used = [self.epmd]
        for ports in self.nodes():
            used += [ports.rabbitmq, ports.rabbitmq_dist, ports.kafka, ports.kafka_controller]
        return used


def cluster_url(broker: ClusterBroker, ports: ClusterPorts) -> str:
    """The URL naming every node: clients fail over between them.

    RabbitMQ's asks for quorum queues; Kafka's for topics replicated on every node.
    """
    nodes = ports.nodes()
    if broker == "rabbitmq":
        # guest/guest is RabbitMQ's built-in loopback-only account, not a secret.
        hosts = ",".join(f"{LOOPBACK}:{p.rabbitmq}" for p in nodes)
        return f"rabbitmq://guest:guest@{hosts}/?queue_type=quorum"
    hosts = ",".join(f"{LOOPBACK}:{p.kafka}" for p in nodes)
    return f"kafka://{hosts}?replication_factor={ports.size}"


def node_url(broker: ClusterBroker, ports: ClusterPorts, number: int) -> str:
    """The URL of node ``number`` alone."""
    node = ports.node(number)
    if broker == "rabbitmq":
        return f"rabbitmq://guest:guest@{LOOPBACK}:{node.rabbitmq}/"
    return f"kafka://{LOOPBACK}:{node.kafka}"


# --- configuration ------------------------------------------------------------------------


def kafka_node_properties(ports: ClusterPorts, number: int, *, log_dir: str) -> dict[str, str]:
    """``server.properties`` of Kafka node ``number``: broker and controller, RF 3, min ISR 2."""
    replicas = str(ports.size)
    min_isr = str(max(1, ports.size - 1))
    voters = ",".join(
        f"{voter + 1}@{LOOPBACK}:{node.kafka_controller}"
        for voter, node in enumerate(ports.nodes())
    )
    return kafka_dist.server_properties(ports.node(number), log_dir=log_dir) | {
        "node.id": str(number + 1),
        "controller.quorum.voters": voters,
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        # A replica that fell behind never becomes leader: no acknowledged write is lost.
        "unclean.leader.election.enable": "false",
    }


def rabbitmq_node_config(ports: ClusterPorts) -> str:
    """``rabbitmq.conf`` of every node: classic peer discovery of the cluster's nodes."""
    lines = ["cluster_formation.peer_discovery_backend = classic_config"]
    lines += [
        f"cluster_formation.classic_config.nodes.{n + 1} = {launch.rabbitmq_node_name(node)}"
        for n, node in enumerate(ports.nodes())
    ]
    # A minority node pauses instead of serving stale data while partitioned away.
    lines.append("cluster_partition_handling = pause_minority")
    return "\n".join(lines) + "\n"


# --- running ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Cluster:
    """A running cluster: its URL, its nodes and what they share.

    Attributes:
        broker: ``rabbitmq`` or ``kafka``.
        ports: where the nodes listen.
        run_dir: the cluster's directory (one ``node<N>`` directory per node).
        nodes: the process record of each node, in node order (:func:`start_node` puts a
            restarted node's new record here).
        shared: processes every node needs (RabbitMQ's epmd).
    """

    broker: ClusterBroker
    ports: ClusterPorts
    run_dir: str
    nodes: list[Running] = field(default_factory=list)
    shared: list[Running] = field(default_factory=list)

    @property
    def url(self) -> str:
        return cluster_url(self.broker, self.ports)

    def record(self) -> Running:
        """All of it as one state record: ``txmq brokers down`` stops every process."""
        members = (*self.nodes, *self.shared)
        return Running(
            broker=self.broker,
            mode="process",
            url=self.url,
            pgids=tuple(pgid for member in members for pgid in member.pgids),
            start_times=tuple(started for member in members for started in member.start_times),
            run_dir=self.run_dir,
            log=self.nodes[0].log,
        )


def _owner(broker: ClusterBroker) -> pwd.struct_passwd | None:
    return processes._service_user("rabbitmq") if broker == "rabbitmq" else None


def _node_dir(cluster_dir: Path, number: int) -> Path:
    return cluster_dir / f"node{number}"


def _spawn_rabbitmq_node(
    ports: ClusterPorts, number: int, node_dir: Path, owner: pwd.struct_passwd | None
) -> Running:
    server = processes._find(
        ["/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"],
        "RabbitMQ (rabbitmq-server)",
        "rabbitmq-server",
    )
    env = processes._base_env() | launch.rabbitmq_env(
        ports.node(number), bind_host=LOOPBACK, base_dir=str(node_dir)
    )
    log = node_dir / "rabbitmq.log"
    process = processes._spawn(
        [server], env=env, cwd=node_dir, log=log, owner=owner, group=ports.group(number)
    )
    return processes._record("rabbitmq", ports.node(number), node_dir, log, [process.pid])


def _prepare_rabbitmq_node(
    ports: ClusterPorts, node_dir: Path, cookie: str, owner: pwd.struct_passwd | None
) -> None:
    (node_dir / "rabbitmq.conf").write_text(rabbitmq_node_config(ports))
    # One cookie for every node (and rabbitmqctl): Erlang nodes only talk to their own kind.
    cookie_file = node_dir / ".erlang.cookie"
    cookie_file.write_text(cookie)
    cookie_file.chmod(0o400)
    if owner is not None:
        for path in (node_dir, cookie_file, node_dir / "rabbitmq.conf"):
            os.chown(path, owner.pw_uid, owner.pw_gid)


def _spawn_kafka_node(
    ports: ClusterPorts, number: int, node_dir: Path, owner: pwd.struct_passwd | None
) -> Running:
    config_dir, logs_dir = node_dir / "config", node_dir / "logs"
    args = launch.kafka_java_args(
        libs=str(kafka_dist.ensure_libs()), config_dir=str(config_dir), logs_dir=str(logs_dir)
    )
    heap = len(kafka_dist.HEAP_OPTS)
    argv = [processes._java(), *KAFKA_NODE_HEAP, *args[heap:]]
    process = processes._spawn(
        argv,
        env=processes._base_env(),
        cwd=node_dir,
        log=node_dir / "kafka.out",
        owner=owner,
        group=ports.group(number),
    )
    return processes._record(
        "kafka", ports.node(number), node_dir, logs_dir / "server.log", [process.pid]
    )


def _prepare_kafka_node(ports: ClusterPorts, number: int, node_dir: Path, cluster_id: str) -> None:
    config_dir, logs_dir, data_dir = node_dir / "config", node_dir / "logs", node_dir / "data"
    for folder in (config_dir, logs_dir, data_dir):
        folder.mkdir()
    properties = kafka_node_properties(ports, number, log_dir=str(data_dir))
    (config_dir / "server.properties").write_text(kafka_dist.render_properties(properties))
    (config_dir / "log4j2.properties").write_text(kafka_dist.LOG4J2_PROPERTIES)
    processes._run_setup(
        [
            processes._java(),
            *processes._kafka_logging_args(node_dir),
            "-cp",
            f"{kafka_dist.ensure_libs()}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config_dir / "server.properties"),
        ],
        env=processes._base_env(),
        owner=None,
    )


def _spawn_node(cluster: Cluster, number: int) -> Running:
    node_dir = _node_dir(Path(cluster.run_dir), number)
    owner = _owner(cluster.broker)
    if cluster.broker == "rabbitmq":
        return _spawn_rabbitmq_node(cluster.ports, number, node_dir, owner)
    return _spawn_kafka_node(cluster.ports, number, node_dir, owner)


def _node_liveness(record: Running) -> Callable[[], str | None]:
    def check() -> str | None:
        if processes.alive(record):
            return None
        tail = Path(record.log).read_text(errors="replace")[-1500:] if record.log else ""
        return f"node process exited; end of {record.log}:\n{tail}"

    return check


def _wait_node(cluster: Cluster, number: int, record: Running, timeout: float) -> None:
    wait_ready(
        cluster.broker,
        node_url(cluster.broker, cluster.ports, number),
        timeout=timeout,
        alive=_node_liveness(record),
    )


def start(broker: ClusterBroker, ports: ClusterPorts, *, timeout: float = 240.0) -> Cluster:
    """Start a cluster of ``ports.size`` nodes as processes; return once all of them have
    joined it.

    Raises:
        ProvisionError: a port is taken, a binary is missing, or a node did not come up or
            join in ``timeout`` (everything started is stopped again then).
    """
    taken = [port for port in ports.in_use() if tcp_open(LOOPBACK, port)]
    if taken:
        raise ProvisionError(
            f"{broker} cluster: {LOOPBACK}:{taken[0]} is already in use; "
            f"choose other ports with {PORT_BASE_ENV}"
        )
    owner = _owner(broker)
    cluster_dir = processes._make_run_dir(broker, owner)
    cluster = Cluster(broker=broker, ports=ports, run_dir=str(cluster_dir))
    try:
        _start_nodes(cluster, owner, timeout)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _start_nodes(cluster: Cluster, owner: pwd.struct_passwd | None, timeout: float) -> None:
    ports, cluster_dir = cluster.ports, Path(cluster.run_dir)
    deadline = time.monotonic() + timeout
    if cluster.broker == "rabbitmq":
        cluster.shared.append(_start_epmd(cluster_dir, ports, owner))
        cookie = secrets.token_hex(20)
    else:
        cookie = kafka_dist.new_cluster_id()
    for number in range(ports.size):
        node_dir = _node_dir(cluster_dir, number)
        node_dir.mkdir()
        if cluster.broker == "rabbitmq":
            _prepare_rabbitmq_node(ports, node_dir, cookie, owner)
        else:
            _prepare_kafka_node(ports, number, node_dir, cookie)
    if cluster.broker == "rabbitmq":
        # One after the other: a node joins the nodes already running; started together,
        # two blank nodes could each form a cluster of their own.
        for number in range(ports.size):
            record = _spawn_node(cluster, number)
            cluster.nodes.append(record)
            _wait_node(cluster, number, record, deadline - time.monotonic())
    else:
        # The controller quorum needs a majority of the voters before any node is ready.
        for number in range(ports.size):
            cluster.nodes.append(_spawn_node(cluster, number))
        for number, record in enumerate(cluster.nodes):
            _wait_node(cluster, number, record, deadline - time.monotonic())
    wait_joined(cluster, timeout=max(1.0, deadline - time.monotonic()))


def _start_epmd(cluster_dir: Path, ports: ClusterPorts, owner: pwd.struct_passwd | None) -> Running:
    epmd = processes._find(["epmd", "/usr/lib/erlang/bin/epmd"], "Erlang's epmd", "erlang-base")
    log = cluster_dir / "epmd.log"
    process = processes._spawn(
        [epmd, "-port", str(ports.epmd), "-address", LOOPBACK],
        env=processes._base_env(),
        cwd=cluster_dir,
        log=log,
        owner=owner,
    )
    processes._wait_port("epmd", ports.epmd, process, log)
    return Running(
        broker="rabbitmq",
        mode="process",
        url=f"epmd://{LOOPBACK}:{ports.epmd}",
        pgids=(process.pid,),
        start_times=(process_start_time(process.pid),),
        run_dir=str(cluster_dir),
        log=str(log),
    )


def members(cluster: Cluster, *, via: int = 0, timeout: float = 10.0) -> int:
    """How many nodes the cluster counts as running members, asked of node ``via``.

    Raises:
        ProvisionError: node ``via`` could not be asked.
    """
    if cluster.broker == "kafka":
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {"bootstrap.servers": f"{LOOPBACK}:{cluster.ports.node(via).kafka}"},
        )
        try:
            return len(admin.list_topics(timeout=timeout).brokers)
        except Exception as exc:
            raise ProvisionError(f"kafka node {via} gave no metadata: {exc}") from exc
    output = _rabbitmqctl(cluster, via, ["cluster_status", "--formatter", "json"], timeout)
    try:
        return len(json.loads(output)["running_nodes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(f"rabbitmqctl cluster_status said {output[-500:]!r}") from exc


def _rabbitmqctl(cluster: Cluster, via: int, arguments: list[str], timeout: float) -> str:
    ctl = processes._find(
        ["/usr/lib/rabbitmq/bin/rabbitmqctl", "rabbitmqctl"], "rabbitmqctl", "rabbitmq-server"
    )
    node = cluster.ports.node(via)
    node_dir = _node_dir(Path(cluster.run_dir), via)
    owner = _owner("rabbitmq")
    env = processes._base_env() | {"HOME": str(node_dir), "ERL_EPMD_PORT": str(node.rabbitmq_epmd)}
    try:
        result = subprocess.run(  # noqa: S603  # argv built here, no shell
            [ctl, "-n", launch.rabbitmq_node_name(node), "-q", *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=processes._uid(owner),
            group=processes._gid(owner),
            extra_groups=processes._groups(owner),
        )
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"rabbitmqctl took more than {timeout:g} s") from exc
    if result.returncode != 0:
        raise ProvisionError(f"rabbitmqctl {arguments[0]} failed: {result.stderr[-500:]}")
    return result.stdout


def wait_joined(cluster: Cluster, *, timeout: float, via: int = 0) -> float:
    """Block until node ``via`` counts every node as a running member; return the seconds.

    Raises:
        ProvisionError: not all of them within ``timeout`` (the last count is given).
    """
    started = time.monotonic()
    last = "not asked yet"
    while time.monotonic() - started < timeout:
        try:
            count = members(cluster, via=via, timeout=min(10.0, timeout))
        except ProvisionError as exc:
            last = str(exc)
        else:
            if count == cluster.ports.size:
                return time.monotonic() - started
            last = f"{count} of {cluster.ports.size} nodes"
        time.sleep(0.5)
    raise ProvisionError(f"{cluster.broker} cluster not formed after {timeout:.0f} s: {last}")


def stop_node(cluster: Cluster, number: int, *, kill: bool = False) -> None:
    """Stop node ``number`` and keep its data (``kill``: SIGKILL at once, like a crash)."""
    record = cluster.nodes[number]
    if kill:
        for pgid, started in zip(record.pgids, record.start_times, strict=True):
            if process_start_time(pgid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
    # Waits for the group to be gone (SIGTERM first when it still runs).
    processes.stop(record, keep_data=True)


def start_node(cluster: Cluster, number: int, *, timeout: float = 180.0) -> float:
    """Start node ``number`` again on its data; return the seconds until it answered and
    the cluster counted it again.

    Raises:
        ProvisionError: it did not come back within ``timeout``.
    """
    started = time.monotonic()
    record = _spawn_node(cluster, number)
    cluster.nodes[number] = record
    _wait_node(cluster, number, record, timeout)
    wait_joined(cluster, timeout=max(1.0, started + timeout - time.monotonic()), via=number)
    return time.monotonic() - started


def stop(cluster: Cluster) -> None:
    """Stop every node and what they share, and delete the cluster's directory."""
    for member in (*cluster.nodes, *cluster.shared):
        processes.stop(member, keep_data=True)
    shutil.rmtree(cluster.run_dir, ignore_errors=True)


# --- what ``txmq brokers up --cluster`` started ------------------------------------------


def state_path() -> Path:
    return state_dir() / STATE_FILE


def up(brokers: list[ClusterBroker], ports: ClusterPorts, *, timeout: float) -> dict[str, str]:
    """Start the clusters not yet running, record them; return ``broker -> URL``.

    Raises:
        ProvisionError: a cluster could not be started.
    """
    path = state_path()
    urls: dict[str, str] = {}
    with state.locked(path):
        records = state.load(path)
        for broker in brokers:
            existing = records.get(broker)
            if existing is not None and processes.alive(existing):
                if existing.url == cluster_url(broker, ports):
                    urls[broker] = existing.url
                    continue
                raise ProvisionError(
                    f"a {broker} cluster already runs at {existing.url}: "
                    "run 'txmq brokers down' first"
                )
            if existing is not None:
                processes.stop(existing)
                del records[broker]
            records[broker] = start(broker, ports, timeout=timeout).record()
            state.save(records, path)
            urls[broker] = records[broker].url
    return urls


def down(brokers: list[ClusterBroker]) -> list[Running]:
    """Stop the recorded clusters of ``brokers``; return their records."""
    path = state_path()
    stopped = []
    with state.locked(path):
        records = state.load(path)
        for broker in brokers:
            record = records.pop(broker, None)
            if record is not None:
                processes.stop(record)
                state.save(records, path)
                stopped.append(record)
    return stopped


def status() -> list[tuple[Running, bool]]:
    """Each cluster ``up`` started, and whether all its processes still run."""
    return [(record, processes.alive(record)) for record in state.load(state_path()).values()]
