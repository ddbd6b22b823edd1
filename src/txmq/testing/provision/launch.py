"""How each broker is configured to start, shared by process mode and the local images.

One function per broker returns the environment or arguments; process mode runs them on
this machine, the locally built images run them inside a container, so both modes start
exactly the same broker configuration.
"""

from __future__ import annotations

from txmq.testing.provision.common import MARIADB_DATABASE, Ports
from txmq.testing.provision.kafka_dist import HEAP_OPTS


def rabbitmq_node_name(ports: Ports) -> str:
    # Unique per port, so the node never clashes with another RabbitMQ on this machine.
    return f"txmq{ports.rabbitmq}@localhost"


def rabbitmq_env(ports: Ports, *, bind_host: str, base_dir: str | None) -> dict[str, str]:
    """``RABBITMQ_*`` variables for ``rabbitmq-server``.

    ``base_dir`` holds the node's data, config and plugin files; ``None`` keeps the
    image's own paths (the official image).
    """
    # Distribution listens on loopback only, like everything else we start.
    dist_interface = "{127,0,0,1}" if bind_host == "127.0.0.1" else "{0,0,0,0}"
    env = {
        "RABBITMQ_NODENAME": rabbitmq_node_name(ports),
        "RABBITMQ_NODE_IP_ADDRESS": bind_host,
        "RABBITMQ_NODE_PORT": str(ports.rabbitmq),
        "RABBITMQ_DIST_PORT": str(ports.rabbitmq_dist),
        "ERL_EPMD_PORT": str(ports.rabbitmq_epmd),
        "ERL_EPMD_ADDRESS": bind_host,
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel inet_dist_use_interface {dist_interface}",
        "RABBITMQ_LOGS": "-",
    }
    if base_dir is not None:
        env |= {
            "HOME": base_dir,
            "RABBITMQ_MNESIA_BASE": f"{base_dir}/mnesia",
            "RABBITMQ_LOG_BASE": f"{base_dir}/log",
            # Paths that do not exist: no system-wide rabbitmq.conf, env file or plugins
            # leak into a test broker.
            "RABBITMQ_CONFIG_FILE": f"{base_dir}/rabbitmq",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{base_dir}/advanced.config",
            "RABBITMQ_CONF_ENV_FILE": f"{base_dir}/rabbitmq-env.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{base_dir}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{base_dir}/rabbitmq.pid",
        }
    return env


def postgres_args(ports: Ports, *, bind_host: str, socket_dir: str) -> list[str]:
    """Arguments after ``postgres -D DATA`` for a fast, disposable test server."""
    return [
        "-p",
        str(ports.postgres),
        "-k",
        socket_dir,
        "-c",
        f"listen_addresses={bind_host}",
        "-c",
        "max_connections=300",
        # Test data is disposable: durability costs time and buys nothing here.
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
    ]


def initdb_args(data_dir: str) -> list[str]:
    return ["-D", data_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]


def kafka_java_args(*, libs: str, config_dir: str, logs_dir: str) -> list[str]:
    """``java`` arguments running the broker from ``libs`` with ``config_dir``'s files."""
    return [
        *HEAP_OPTS,
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={config_dir}/log4j2.properties",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        f"{config_dir}/server.properties",
    ]


#: Run by a provisioned MariaDB at every start: the passwordless ``root`` of its URL may
#: connect over TCP from anywhere it can be reached (loopback, or a container's published
#: port), and the database the URL names exists.
MARIADB_INIT_SQL = f"""\
CREATE USER IF NOT EXISTS 'root'@'%';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS {MARIADB_DATABASE};
"""


def mariadb_args(ports: Ports, *, bind_host: str) -> list[str]:
    """Arguments of ``mariadbd`` for a fast, disposable test server (after the data,
    socket and init-file options of the caller)."""
    return [
        f"--port={ports.mariadb}",
        f"--bind-address={bind_host}",
        # Clients are named by address, and a client's name is never looked up.
        "--skip-name-resolve",
        "--max-connections=300",
        "--innodb-buffer-pool-size=128M",
        # Test data is disposable: durability costs time and buys nothing here.
        "--innodb-flush-log-at-trx-commit=0",
        "--skip-log-bin",
    ]


def mariadb_local_args(*, data_dir: str, socket: str, init_file: str) -> list[str]:
    """``mariadbd``'s first arguments where txmq owns the whole configuration (process
    mode and the locally built image): no system-wide ``my.cnf`` leaks in."""
    return [
        "--no-defaults",
        f"--datadir={data_dir}",
        f"--socket={socket}",
        f"--pid-file={data_dir}/mariadbd.pid",
        f"--init-file={init_file}",
    ]


def mariadb_install_args(data_dir: str) -> list[str]:
    """Arguments of ``mariadb-install-db`` creating an empty data directory."""
    return [
        "--no-defaults",
        f"--datadir={data_dir}",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
    ]
