"""Names, ports, URLs and directories shared by every way of provisioning brokers."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Literal, get_args

from txmq.errors import TxmqError

Broker = Literal["rabbitmq", "kafka", "postgres", "mariadb"]
BROKERS: tuple[Broker, ...] = get_args(Broker)

#: How a broker is run. ``env`` means "someone else runs it; its URL is in the environment".
Mode = Literal["container", "process", "env"]
#: What a caller may ask for; ``auto`` picks containers where a Docker engine can be used.
RequestedMode = Literal["auto", "container", "process", "env"]
REQUESTED_MODES: tuple[RequestedMode, ...] = get_args(RequestedMode)

#: The variables the pytest plugin reads and ``txmq brokers up --print-env`` prints.
URL_ENV: Mapping[Broker, str] = {
    "rabbitmq": "TXMQ_TEST_RABBITMQ_URL",
    "kafka": "TXMQ_TEST_KAFKA_URL",
    "postgres": "TXMQ_TEST_DATABASE_URL",
    "mariadb": "TXMQ_TEST_MYSQL_URL",
}

LOOPBACK = "127.0.0.1"
#: The database a provisioned MariaDB creates at start, named in its URL.
MARIADB_DATABASE = "txmq"


class ProvisionError(TxmqError):
    """A broker could not be installed, built, started, reached or stopped."""


@dataclass(frozen=True, slots=True)
class Ports:
    """Loopback ports of the provisioned brokers.

    The defaults stay clear of the usual ones (5672, 4369, 25672, 9092, 9093, 5432, 3306), so the
    provisioned brokers run beside brokers a developer already has, and below Linux's
    ephemeral range (32768-60999): a port in that range can be taken for a moment by any
    outgoing connection (or its TIME_WAIT) and then refuses the broker's listener. Every
    field can be set from the environment: ``TXMQ_PORT_<FIELD>`` (``TXMQ_PORT_KAFKA=21192``).
    """

    rabbitmq: int = 21672
    #: Erlang distribution port, set explicitly rather than RabbitMQ's AMQP port + 20000.
    rabbitmq_dist: int = 21673
    #: A private epmd, so the node never registers with a system-wide epmd on 4369.
    rabbitmq_epmd: int = 21369
    #: Only the official image runs the management plugin.
    rabbitmq_management: int = 21674
    kafka: int = 21092
    kafka_controller: int = 21093
    postgres: int = 21432
    mariadb: int = 21306

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ports:
        """Defaults overridden by ``TXMQ_PORT_*`` variables.

        Raises:
            ProvisionError: a variable is not a port number.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for f in fields(cls):
            name = f"TXMQ_PORT_{f.name.upper()}"
            text = environ.get(name)
            if text is None:
                continue
            if not text.isdigit() or not 0 < int(text) < 65536:
                raise ProvisionError(f"{name} must be a port number, not {text!r}")
            values[f.name] = int(text)
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Ports nothing listens on right now, for brokers private to one test session.

        Chosen outside the ephemeral range, like the defaults: a broker that is stopped and
        started again on the same ports (``txmq chaos`` kills and restarts its servers) must
        find them free, and a port in that range may meanwhile have become the source port
        of an outgoing connection.
        """
        return cls(*unused_ports(len(fields(cls))))


#: Ports :func:`unused_ports` never offers: the blocks of the defaults (``Ports()`` and a
#: cluster's ``TXMQ_CLUSTER_PORT_BASE`` block, 25600-25699), which other runs may be using.
_RESERVED_BLOCKS = ((21000, 22000), (25600, 25700))
_LOWEST_OFFERED = 10000


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (inclusive)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def unused_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on now, none of them in the
    ephemeral range nor among the defaults or the ``TXMQ_PORT_*`` settings.

    Raises:
        ProvisionError: not enough such ports could be found.
    """
    low, high = ephemeral_range()
    taken = set(astuple(Ports())) | set(astuple(Ports.from_env()))
    candidates = [
        port
        for port in range(_LOWEST_OFFERED, 65536)
        if not low <= port <= high
        and port not in taken
        and not any(start <= port < end for start, end in _RESERVED_BLOCKS)
    ]
    random.shuffle(candidates)
    chosen: list[socket.socket] = []
    try:
        for port in candidates:
            if len(chosen) == count:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                # Held until all are chosen, so the ports differ from one another.
                sock.bind((LOOPBACK, port))
            except OSError:
                sock.close()
                continue
            chosen.append(sock)
        if len(chosen) < count:
            raise ProvisionError(
                f"found only {len(chosen)} free loopback ports outside the ephemeral range "
                f"{low}-{high}, {count} needed"
            )
        return [sock.getsockname()[1] for sock in chosen]
    finally:
        for sock in chosen:
            sock.close()


def url_for(broker: Broker, ports: Ports) -> str:
    """The URL a client uses to reach a provisioned broker on loopback."""
    if broker == "rabbitmq":
        # guest/guest is RabbitMQ's built-in loopback-only account, not a secret.
        return f"rabbitmq://guest:guest@{LOOPBACK}:{ports.rabbitmq}/"
    if broker == "kafka":
        return f"kafka://{LOOPBACK}:{ports.kafka}"
    if broker == "mariadb":
        # root without a password, on loopback only (or a container's own network).
        return f"mysql+pymysql://root@{LOOPBACK}:{ports.mariadb}/{MARIADB_DATABASE}"
    return f"postgresql+psycopg://postgres@{LOOPBACK}:{ports.postgres}/postgres"


def cache_dir() -> Path:
    """Where downloads, image build logs and broker logs are kept (``$TXMQ_CACHE_DIR``)."""
    configured = os.environ.get("TXMQ_CACHE_DIR")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "txmq"


def state_dir() -> Path:
    """Where ``txmq brokers up`` records what it started (``$TXMQ_STATE_DIR``)."""
    configured = os.environ.get("TXMQ_STATE_DIR")
    return Path(configured) if configured else cache_dir()


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def process_start_time(pid: int) -> int:
    """The kernel's start time of ``pid`` (0 where ``/proc`` does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return -1 if Path("/proc/self").exists() else 0
    return int(stat.rsplit(")", 1)[1].split()[19])
