"""The system under test: private servers the run may kill, and the three service processes.

Brokers and databases given by URL are used as they are and never touched; those the run
starts itself (as processes, on free loopback ports) can be killed, restarted and paused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from txmq.chaos.scenario import (
    ENV_BROKER_OPTIONS,
    ENV_KILL,
    ENV_NO_TRANSFERS,
    ENV_SCENARIO,
    Scenario,
)
from txmq.testing.provision import Broker, Ports, Running, processes
from txmq.testing.provision import start as provision_start
from txmq.testing.provision.cluster import Cluster
from txmq.testing.provision.common import unused_ports

#: How long a service is given to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0


class PrivateServer:
    """A broker or PostgreSQL this run started as processes, and may therefore hurt."""

    def __init__(self, kind: Broker) -> None:
        self.kind = kind
        self.ports = Ports.free()
        self.record: Running = provision_start(kind, "process", self.ports)

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def port(self) -> int:
        return {
            "rabbitmq": self.ports.rabbitmq,
            "kafka": self.ports.kafka,
            "postgres": self.ports.postgres,
        }[self.kind]

    def kill_and_restart(self, *, down_for: float) -> None:
        """kill -9 every process of the server, keep it down, start it on its data again."""
        for pgid in self.record.pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        self.restart(down_for=down_for)

    def restart(self, *, down_for: float) -> None:
        """Stop the server cleanly (a no-op if it is dead), keep it down, start it again."""
        processes.stop(self.record, keep_data=True)
        time.sleep(down_for)  # the outage itself
        self.record = processes.start_again(self.record, self.ports)

    def pause(self, seconds: float) -> None:
        """SIGSTOP the server's main process group for ``seconds``, then SIGCONT it."""
        pgid = self.record.pgids[0]
        os.killpg(pgid, signal.SIGSTOP)
        try:
            time.sleep(seconds)  # the pause itself
        finally:
            os.killpg(pgid, signal.SIGCONT)

    def close(self) -> None:
        processes.stop(self.record)


def free_port() -> int:
    return unused_ports(1)[0]


@dataclass
class Exit:
    """A service process that ended without being told to."""

    service: str
    code: int | None
    at: float
    last_line: str


@dataclass
class Service:
    """One service process (started again after each kill), its log in the run directory."""

    name: str
    argv: list[str]
    scenario_path: Path
    log_path: Path
    metrics_port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: False once the run stopped it on purpose: it is not started again by :meth:`revive_if_dead`.
    wanted: bool = True
    settle_only: bool = False
    unexpected_exits: list[Exit] = field(default_factory=list)
    _log: IO[bytes] | None = None

    def start(
        self, *, kill: str | None = None, settle_only: bool = False, broker_options: str = ""
    ) -> None:
        """Start the process; ``kill`` arms ``TXMQ_CHAOS_KILL`` in it; ``settle_only`` sets
        ``TXMQ_CHAOS_NO_TRANSFERS`` (a bank that only answers check-backs and refunds);
        ``broker_options`` (``a=1&b=2``) go into its broker URL (``TXMQ_CHAOS_BROKER_OPTIONS``,
        read by the bank and the consumer)."""
        ours = (ENV_KILL, ENV_NO_TRANSFERS, ENV_BROKER_OPTIONS)
        env = {k: v for k, v in os.environ.items() if k not in ours}
        env[ENV_SCENARIO] = str(self.scenario_path)
        if kill:
            env[ENV_KILL] = kill
        if broker_options:
            env[ENV_BROKER_OPTIONS] = broker_options
        if settle_only:
            env[ENV_NO_TRANSFERS] = "1"
        self.settle_only = settle_only
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._log.write(f"--- start {self.starts} kill={kill} options={broker_options}\n".encode())
        self._log.flush()
        self.wanted = True
        self.process = subprocess.Popen(  # noqa: S603  # our own argv
            self.argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        self.starts += 1

    def twin(self, name: str) -> Service:
        """Another process like this one, with a probe port of its own and its own log."""
        argv = list(self.argv)
        port = None if self.metrics_port is None else free_port()
        if port is not None:
            argv[argv.index("--metrics-port") + 1] = str(port)
        log_path = self.log_path.with_name(f"{name}.log")
        return Service(name, argv, self.scenario_path, log_path, port)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sigkill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; the exit code."""
        self.wanted = False
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.sigkill()
        return self.process.returncode

    def wait_stopped(self, timeout: float) -> bool:
        """Whether the process stopped itself (SIGSTOP) within ``timeout``; False also when
        it ended, or where ``/proc`` cannot tell."""
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            assert self.process is not None
            try:
                stat = Path(f"/proc/{self.process.pid}/stat").read_text()
            except OSError:
                return False
            if stat.rpartition(")")[2].split()[0] == "T":
                return True
            time.sleep(0.1)
        return False

    def resume(self) -> None:
        """SIGCONT the process (a no-op if it ended)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)

    def log_has(self, text: str, *, since: int) -> bool:
        """Whether the log, from byte ``since`` on, holds ``text``."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                return text.encode() in log.read()
        except OSError:
            return False

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code once the process ends, or None if it still runs after ``timeout``."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def revive_if_dead(self) -> bool:
        """Start the process again if it ended by itself (recorded); whether it had."""
        if not self.wanted or self.process is None or self.process.poll() is None:
            return False
        self.unexpected_exits.append(
            Exit(self.name, self.process.returncode, time.time(), self.last_line())
        )
        self.start(settle_only=self.settle_only)
        return True

    def ready(self) -> bool | None:
        """``/readyz`` answered 200 (None: the service has no probe server)."""
        if self.metrics_port is None:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
                return bool(response.status == 200)
        except OSError:
            return False

    def last_line(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-300:] if lines else ""

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


def services(scenario: Scenario, scenario_path: Path) -> dict[str, Service]:
    """The relay (``txmq worker``), the crediting consumer (``txmq consume``) and the bank."""
    run_dir = Path(scenario.run_dir)
    cli = [sys.executable, "-m", "txmq.cli"]
    quiet = ["--log-level", "WARNING"]
    worker_port, consumer_port = free_port(), free_port()
    worker = [
        *cli,
        "worker",
        "--broker",
        scenario.broker_url,
        "--database",
        scenario.database_url,
        "--group",
        scenario.outbox_group,
        "--prefix",
        scenario.prefix,
        "--lanes",
        "2",
        "--batch-size",
        "50",
        # A restarted worker fences its killed predecessor's Kafka transactions.
        "--instance-id",
        f"chaos-worker-{scenario.run}",
        "--metrics-port",
        str(worker_port),
        *quiet,
    ]
    consumer = [
        *cli,
        "consume",
        "txmq.chaos.credit:consumer",
        "--metrics-port",
        str(consumer_port),
        *quiet,
    ]
    bank = [sys.executable, "-m", "txmq.chaos.bank"]
    return {
        "worker": Service("worker", worker, scenario_path, run_dir / "worker.log", worker_port),
        "consumer": Service(
            "consumer", consumer, scenario_path, run_dir / "consumer.log", consumer_port
        ),
        "bank": Service("bank", bank, scenario_path, run_dir / "bank.log"),
    }


@dataclass
class Rig:
    """Everything a fault may act on. ``broker``/``database`` are None when given by URL
    (``broker`` also on the cluster schedule); ``cluster`` is the three-node cluster the
    cluster schedule started (None otherwise, and when given by URL)."""

    system: str
    broker: PrivateServer | None
    database: PrivateServer | None
    services: dict[str, Service]
    cluster: Cluster | None = None

    def revive(self) -> list[str]:
        """Start again every service that ended by itself; their names."""
        return [name for name, service in self.services.items() if service.revive_if_dead()]
