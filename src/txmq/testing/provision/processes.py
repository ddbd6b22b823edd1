"""Brokers as plain processes on this machine: Debian's RabbitMQ, PostgreSQL and MariaDB,
Kafka's jars.

Every broker runs in a new session (so it outlives the command that started it and can be
stopped as one process group), in a fresh run directory under ``$TXMQ_RUN_DIR`` (default:
the system temp dir), with its output in a log file there. Run as root, RabbitMQ runs as
user ``rabbitmq``, PostgreSQL as ``postgres`` and MariaDB as ``mysql`` (PostgreSQL and
MariaDB refuse root); otherwise they run as the calling user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from txmq.testing.provision import kafka_dist, launch
from txmq.testing.provision.common import (
    LOOPBACK,
    Broker,
    Ports,
    ProvisionError,
    process_start_time,
    url_for,
)
from txmq.testing.provision.readiness import tcp_open, wait_ready
from txmq.testing.provision.state import Running

STOP_TIMEOUT = 30.0
SETUP_TIMEOUT = 120.0

# Popen objects of brokers started by this Python process, so stopping them also reaps them.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _run_root() -> str:
    return os.environ.get("TXMQ_RUN_DIR") or tempfile.gettempdir()


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The account to run a broker as: ``name`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise ProvisionError(f"user {name!r} does not exist; is its package installed?") from exc


def _make_run_dir(broker: Broker, owner: pwd.struct_passwd | None) -> Path:
    run_dir = Path(tempfile.mkdtemp(prefix=f"txmq-{broker}-", dir=_run_root()))
    run_dir.chmod(0o755)
    if owner is not None:
        os.chown(run_dir, owner.pw_uid, owner.pw_gid)
    return run_dir


def _uid(owner: pwd.struct_passwd | None) -> int | None:
    return None if owner is None else owner.pw_uid


def _gid(owner: pwd.struct_passwd | None) -> int | None:
    return None if owner is None else owner.pw_gid


def _groups(owner: pwd.struct_passwd | None) -> list[int] | None:
    # Drop root's supplementary groups along with root.
    return None if owner is None else []


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "JAVA_HOME", "TZ")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid``."""
    if not Path("/proc/self").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _spawn(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    owner: pwd.struct_passwd | None,
    group: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own as ``owner`` (None: as we are), with the group
    id ``group`` instead of the owner's when given."""
    with open(log, "ab") as out:
        if owner is not None:
            os.chown(log, owner.pw_uid, owner.pw_gid)
        process = subprocess.Popen(  # noqa: S603  # argv built here, no shell
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=_uid(owner),
            group=_gid(owner) if group is None else group,
            extra_groups=_groups(owner),
        )
    _children[process.pid] = process
    return process


def _run_setup(argv: list[str], *, env: dict[str, str], owner: pwd.struct_passwd | None) -> None:
    result = subprocess.run(  # noqa: S603
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        check=False,
        user=_uid(owner),
        group=_gid(owner),
        extra_groups=_groups(owner),
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-2000:]
        raise ProvisionError(f"{Path(argv[0]).name} failed ({result.returncode}):\n{output}")


def _liveness(process: subprocess.Popen[bytes], log: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        if process.poll() is None:
            return None
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        return f"exit code {process.returncode}; end of {log}:\n{tail}"

    return check


def _wait_port(name: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SETUP_TIMEOUT
    while not tcp_open(LOOPBACK, port):
        if (death := _liveness(process, log)()) is not None:
            raise ProvisionError(f"{name} stopped: {death}")
        if time.monotonic() >= deadline:
            raise ProvisionError(f"nothing listens on {LOOPBACK}:{port} after {SETUP_TIMEOUT} s")
        time.sleep(0.05)


def _find(candidates: list[str], what: str, package: str) -> str:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    raise ProvisionError(f"{what} not found; install it (Debian: apt-get install {package})")


def _postgres_bindir() -> Path:
    configured = os.environ.get("TXMQ_PG_BINDIR")
    if configured:
        return Path(configured)
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if versions:
        return Path(versions[-1]).parent
    found = _find(["postgres"], "PostgreSQL server (postgres)", "postgresql-15")
    return Path(found).parent


def _record(
    broker: Broker, ports: Ports, run_dir: Path, log: Path, processes: list[int]
) -> Running:
    return Running(
        broker=broker,
        mode="process",
        url=url_for(broker, ports),
        pgids=tuple(processes),
        start_times=tuple(process_start_time(pid) for pid in processes),
        run_dir=str(run_dir),
        log=str(log),
    )


def _start_rabbitmq(
    ports: Ports, run_dir: Path, owner: pwd.struct_passwd | None
) -> tuple[Running, Callable[[], str | None]]:
    server = _find(
        ["/usr/lib/rabbitmq/bin/rabbitmq-server", "rabbitmq-server"],
        "RabbitMQ (rabbitmq-server)",
        "rabbitmq-server",
    )
    epmd = _find(["epmd", "/usr/lib/erlang/bin/epmd"], "Erlang's epmd", "erlang-base")
    log = run_dir / "rabbitmq.log"
    env = _base_env() | launch.rabbitmq_env(ports, bind_host=LOOPBACK, base_dir=str(run_dir))
    # A private epmd, so the node never depends on (or leaves behind) a system-wide epmd.
    epmd_process = _spawn(
        [epmd, "-port", str(ports.rabbitmq_epmd), "-address", LOOPBACK],
        env=env,
        cwd=run_dir,
        log=run_dir / "epmd.log",
        owner=owner,
    )
    try:
        # Had the node found no epmd, it would start a detached one outside our groups.
        _wait_port("epmd", ports.rabbitmq_epmd, epmd_process, run_dir / "epmd.log")
        server_process = _spawn([server], env=env, cwd=run_dir, log=log, owner=owner)
    except BaseException:
        os.killpg(epmd_process.pid, signal.SIGTERM)
        raise
    record = _record("rabbitmq", ports, run_dir, log, [server_process.pid, epmd_process.pid])
    return record, _liveness(server_process, log)


def _start_postgres(
    ports: Ports, run_dir: Path, owner: pwd.struct_passwd | None
) -> tuple[Running, Callable[[], str | None]]:
    bindir = _postgres_bindir()
    data = run_dir / "data"
    _run_setup(
        [str(bindir / "initdb"), *launch.initdb_args(str(data))], env=_base_env(), owner=owner
    )
    return _spawn_postgres(ports, run_dir, owner)


def _spawn_postgres(
    ports: Ports, run_dir: Path, owner: pwd.struct_passwd | None
) -> tuple[Running, Callable[[], str | None]]:
    """Run the server on the data directory ``run_dir/data`` (already initialised)."""
    log = run_dir / "postgres.log"
    process = _spawn(
        [
            str(_postgres_bindir() / "postgres"),
            "-D",
            str(run_dir / "data"),
            *launch.postgres_args(ports, bind_host=LOOPBACK, socket_dir=str(run_dir)),
        ],
        env=_base_env(),
        cwd=run_dir,
        log=log,
        owner=owner,
    )
    return _record("postgres", ports, run_dir, log, [process.pid]), _liveness(process, log)


def _start_kafka(
    ports: Ports, run_dir: Path, owner: pwd.struct_passwd | None
) -> tuple[Running, Callable[[], str | None]]:
    config_dir, logs_dir, data_dir = run_dir / "config", run_dir / "logs", run_dir / "data"
    for folder in (config_dir, logs_dir, data_dir):
        folder.mkdir()
    properties = kafka_dist.server_properties(ports, log_dir=str(data_dir))
    (config_dir / "server.properties").write_text(kafka_dist.render_properties(properties))
    (config_dir / "log4j2.properties").write_text(kafka_dist.LOG4J2_PROPERTIES)
    _run_setup(
        [
            _java(),
            *_kafka_logging_args(run_dir),
            "-cp",
            f"{kafka_dist.ensure_libs()}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            kafka_dist.new_cluster_id(),
            "-c",
            str(config_dir / "server.properties"),
        ],
        env=_base_env(),
        owner=owner,
    )
    return _spawn_kafka(ports, run_dir, owner)


def _java() -> str:
    return _find(
        [f"{os.environ['JAVA_HOME']}/bin/java"] if "JAVA_HOME" in os.environ else ["java"],
        "Java 17 (java)",
        "openjdk-17-jre-headless",
    )


def _kafka_logging_args(run_dir: Path) -> list[str]:
    return [
        f"-Dlog4j2.configurationFile={run_dir / 'config'}/log4j2.properties",
        f"-Dkafka.logs.dir={run_dir / 'logs'}",
    ]


def _spawn_kafka(
    ports: Ports, run_dir: Path, owner: pwd.struct_passwd | None
) -> tuple[Running, Callable[[], str | None]]:
    """Run the broker on ``run_dir``'s configuration and (formatted) log directory."""
    config_dir, logs_dir = run_dir / "config", run_dir / "logs"
    log = run_dir / "kafka.out"
    args = launch.kafka_java_args(
        libs=str(kafka_dist.ensure_libs()), config_dir=str(config_dir), logs_dir=str(logs_dir)
    )
    process = _spawn([_java(), *args], env=_base_env(), cwd=run_dir, log=log, owner=owner)
    return _record("kafka", ports, run_dir, logs_dir / "server.log", [process.pid]), _liveness(
        process, log
    )


def _start_mariadb(
    ports: Ports, run_dir: Path, owner: pwd.struct_passwd | None
) -> tuple[Running, Callable[[], str | None]]:
    install = _find(["mariadb-install-db"], "MariaDB (mariadb-install-db)", "mariadb-server")
    init_file = run_dir / "init.sql"
    init_file.write_text(launch.MARIADB_INIT_SQL)
    _run_setup(
        [install, *launch.mariadb_install_args(str(run_dir / "data"))],
        env=_base_env(),
        owner=owner,
    )
    return _spawn_mariadb(ports, run_dir, owner)


def _spawn_mariadb(
    ports: Ports, run_dir: Path, owner: pwd.struct_passwd | None
) -> tuple[Running, Callable[[], str | None]]:
    """Run the server on the data directory ``run_dir/data`` (already initialised)."""
    server = _find(["mariadbd", "/usr/sbin/mariadbd"], "MariaDB (mariadbd)", "mariadb-server")
    log = run_dir / "mariadb.log"
    process = _spawn(
        [
            server,
            *launch.mariadb_local_args(
                data_dir=str(run_dir / "data"),
                socket=str(run_dir / "mariadbd.sock"),
                init_file=str(run_dir / "init.sql"),
            ),
            *launch.mariadb_args(ports, bind_host=LOOPBACK),
        ],
        env=_base_env(),
        cwd=run_dir,
        log=log,
        owner=owner,
    )
    return _record("mariadb", ports, run_dir, log, [process.pid]), _liveness(process, log)


Starter = Callable[
    [Ports, Path, pwd.struct_passwd | None], tuple[Running, Callable[[], str | None]]
]
_STARTERS: dict[Broker, Starter] = {
    "rabbitmq": _start_rabbitmq,
    "kafka": _start_kafka,
    "postgres": _start_postgres,
    "mariadb": _start_mariadb,
}
#: Starting again on the data of a stopped broker (nothing to initialise or format).
_RESTARTERS: dict[Broker, Starter] = {
    "rabbitmq": _start_rabbitmq,
    "kafka": _spawn_kafka,
    "postgres": _spawn_postgres,
    "mariadb": _spawn_mariadb,
}
#: Accounts the brokers run as when started by root (PostgreSQL and MariaDB refuse root).
_SERVICE_USERS: dict[Broker, str | None] = {
    "rabbitmq": "rabbitmq",
    "kafka": None,
    "postgres": "postgres",
    "mariadb": "mysql",
}


def start(broker: Broker, ports: Ports, *, timeout: float = 180.0) -> Running:
    """Start ``broker`` as processes and wait until it answers its protocol.

    Raises:
        ProvisionError: a binary is missing, setup failed, or the broker did not become
            ready in ``timeout`` (it is stopped again then).
    """
    account = _SERVICE_USERS[broker]
    owner = _service_user(account) if account else None
    run_dir = _make_run_dir(broker, owner)
    try:
        record, liveness = _STARTERS[broker](ports, run_dir, owner)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    try:
        wait_ready(broker, record.url, timeout=timeout, alive=liveness)
    except BaseException:
        stop(record)
        raise
    return record


def start_again(record: Running, ports: Ports, *, timeout: float = 180.0) -> Running:
    """Start a broker stopped with ``stop(record, keep_data=True)`` again, on the same data
    and ports (what an operator's restart does); return its new record.

    Raises:
        ProvisionError: the broker did not become ready in ``timeout`` (it is stopped again,
            its data kept).
    """
    if record.run_dir is None:
        raise ProvisionError(f"{record.broker} was not started as processes: nothing to restart")
    account = _SERVICE_USERS[record.broker]
    owner = _service_user(account) if account else None
    again, liveness = _RESTARTERS[record.broker](ports, Path(record.run_dir), owner)
    try:
        wait_ready(record.broker, again.url, timeout=timeout, alive=liveness)
    except BaseException:
        stop(again, keep_data=True)
        raise
    return again


def alive(record: Running) -> bool:
    return bool(record.pgids) and all(
        process_start_time(pgid) == started and _group_alive(pgid)
        for pgid, started in zip(record.pgids, record.start_times, strict=True)
    )


def stop(record: Running, *, timeout: float = STOP_TIMEOUT, keep_data: bool = False) -> None:
    """Stop the broker's process groups (gracefully, then SIGKILL) and delete its run dir
    (unless ``keep_data``)."""
    ours = [
        pgid
        for pgid, started in zip(record.pgids, record.start_times, strict=True)
        if process_start_time(pgid) == started
    ]
    for pgid in ours:
        with contextlib.suppress(ProcessLookupError):
            if record.broker == "postgres":
                # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for clients.
                os.kill(pgid, signal.SIGINT)
            else:
                os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pgid in ours:
        while _group_alive(pgid) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.1)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    _reap()
    if record.run_dir and not keep_data:
        shutil.rmtree(record.run_dir, ignore_errors=True)


def _reap() -> None:
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            del _children[pid]


class RestartableServer:
    """A private database server for fault tests, that can be stopped and started again.

    The server runs as a process (see :func:`start`) on free ports. :meth:`restart` stops it
    the way an operator's restart does (every client connection is closed), keeps it down
    for a while, and starts it again on the same data directory and port, so clients
    reconnect to the same URL and find their data. Never use it on a shared server.
    Subclasses name the server (:class:`RestartablePostgres`, :class:`RestartableMariaDB`).

    Example:
        >>> with RestartablePostgres() as server:  # doctest: +SKIP
        ...     engine = create_engine(server.url)
        ...     server.restart(down_for=2.5)
    """

    broker: Broker = "postgres"

    def __init__(self, *, timeout: float = 180.0) -> None:
        self._timeout = timeout
        self._ports = Ports.free()
        account = _SERVICE_USERS[self.broker]
        self._owner = _service_user(account) if account else None
        self._record: Running | None = start(self.broker, self._ports, timeout=timeout)
        self._run_dir = Path(self._record.run_dir or "")

    @property
    def url(self) -> str:
        """The server's SQLAlchemy URL (on 127.0.0.1 and the server's own free port)."""
        return url_for(self.broker, self._ports)

    @property
    def running(self) -> bool:
        return self._record is not None and alive(self._record)

    def stop_server(self) -> None:
        """Shut down (every client connection is closed); return once the server process
        has exited (data kept)."""
        if self._record is not None:
            stop(self._record, keep_data=True)

    def start_server(self) -> None:
        """Start the server again on the same data and port; return once it answers.

        Raises:
            ProvisionError: it did not come up within the timeout.
        """
        if self._record is None:
            raise ProvisionError(f"this {self.broker} server was closed")
        if self.running:
            return
        record, liveness = _RESTARTERS[self.broker](self._ports, self._run_dir, self._owner)
        self._record = record
        wait_ready(self.broker, record.url, timeout=self._timeout, alive=liveness)

    def restart(self, *, down_for: float = 2.5) -> None:
        """Stop the server, keep it down ``down_for`` seconds, start it again."""
        self.stop_server()
        # The outage itself: clients must see a server that is gone for a while.
        time.sleep(down_for)
        self.start_server()

    def close(self) -> None:
        """Stop the server and delete its data. Idempotent."""
        if self._record is not None:
            record, self._record = self._record, None
            stop(record)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RestartablePostgres(RestartableServer):
    """A private PostgreSQL (``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``);
    a stop is PostgreSQL's fast shutdown."""

    broker: Broker = "postgres"


class RestartableMariaDB(RestartableServer):
    """A private MariaDB (``mysql+pymysql://root@127.0.0.1:PORT/txmq``); a stop is
    ``mariadbd``'s normal shutdown on SIGTERM (client connections are killed)."""

    broker: Broker = "mariadb"
