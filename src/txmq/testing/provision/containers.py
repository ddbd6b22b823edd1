"""Brokers as containers, driven by testcontainers' ``DockerContainer``.

Containers share the host's network where the engine has no bridge network (the engine
txmq starts itself has none) or ``TXMQ_DOCKER_NETWORK=host``; every broker then listens on
127.0.0.1 only. Elsewhere (a laptop's Docker) the same port numbers are published on
127.0.0.1. Testcontainers' reaper (Ryuk) is switched off: its image cannot be pulled
everywhere, and ``txmq brokers up`` wants its containers to outlive the command anyway;
the pytest plugin stops its containers itself at the end of the session.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from txmq.testing.provision import engine, images, kafka_dist, launch
from txmq.testing.provision.common import (
    LOOPBACK,
    MARIADB_DATABASE,
    Broker,
    Ports,
    ProvisionError,
    process_start_time,
    url_for,
)
from txmq.testing.provision.readiness import wait_ready
from txmq.testing.provision.state import Running

if TYPE_CHECKING:
    import docker
    from testcontainers.core.container import DockerContainer

log = logging.getLogger("txmq.provision")

LABEL = "txmq.provisioned"
#: On a container that belongs to one process (a pytest session): ``<boot id>:<pid
#: namespace>:<pid>:<start time>`` of that process. Once that process is gone (a ``kill -9``
#: gave it no time to stop its brokers), the next start in its pid namespace reaps the
#: container. ``txmq brokers up`` containers carry no
#: owner: they are meant to outlive the command, and ``txmq brokers down`` stops them.
OWNER_LABEL = "txmq.owner"
NETWORK_ENV = "TXMQ_DOCKER_NETWORK"
#: Where the brokers keep data inside a locally built image.
_RABBITMQ_HOME = "/var/lib/rabbitmq/txmq"
_KAFKA_DATA = "/var/lib/kafka/data"


def _host_network(client: docker.DockerClient) -> bool:
    chosen = os.environ.get(NETWORK_ENV)
    if chosen in ("host", "publish"):
        return chosen == "host"
    if chosen:
        raise ProvisionError(f"{NETWORK_ENV} must be host or publish, not {chosen!r}")
    return not client.networks.list(names=["bridge"])


#: Ports inside a container whose ports are published: each image's usual ones, so an
#: official image needs no port settings at all.
INNER_PORTS = Ports(
    rabbitmq=5672,
    rabbitmq_dist=25672,
    rabbitmq_epmd=4369,
    rabbitmq_management=15672,
    kafka=9092,
    kafka_controller=9093,
    postgres=5432,
    mariadb=3306,
)


def _published(broker: Broker, ports: Ports) -> dict[str, tuple[str, int]]:
    # Only what clients connect to; a single-node broker talks to itself inside.
    return {f"{getattr(INNER_PORTS, broker)}/tcp": (LOOPBACK, getattr(ports, broker))}


def _configure(
    container: DockerContainer,
    broker: Broker,
    choice: images.Choice,
    ports: Ports,
    *,
    host_network: bool,
) -> None:
    """Environment and command that make ``choice`` run ``broker`` reachable on ``ports``.

    With the host's network the broker listens on ``ports`` on loopback; published, it
    listens on :data:`INNER_PORTS` on all the container's interfaces.
    """
    inner = ports if host_network else INNER_PORTS
    bind = LOOPBACK if host_network else "0.0.0.0"  # noqa: S104  # the container's own interfaces
    local = choice.flavour == "local"
    if broker == "rabbitmq":
        env = launch.rabbitmq_env(inner, bind_host=bind, base_dir=_RABBITMQ_HOME if local else None)
        if local and not host_network:
            # Published connections arrive from the bridge, not loopback: let guest in.
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += " -rabbit loopback_users []"
        if not local:
            # The official image's management plugin, on loopback where the broker shares
            # the host's network (its guest account already works from anywhere).
            listener = f"{{port,{inner.rabbitmq_management}}}"
            if host_network:
                listener += ',{ip,"127.0.0.1"}'
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] += (
                f" -rabbitmq_management tcp_config [{listener}]"
            )
        container.with_envs(**env)
    elif broker == "kafka":
        data_dir = _KAFKA_DATA if local else "/tmp/kraft-combined-logs"  # noqa: S108
        properties = kafka_dist.server_properties(
            inner, log_dir=data_dir, bind_host=bind, advertised_port=ports.kafka
        )
        cluster_id = kafka_dist.new_cluster_id()
        if local:
            container.with_env("TXMQ_KAFKA_PROPERTIES", kafka_dist.render_properties(properties))
            container.with_env("TXMQ_KAFKA_CLUSTER_ID", cluster_id)
            container.with_command(
                launch.kafka_java_args(
                    libs=f"{images.KAFKA_HOME}/libs",
                    config_dir=f"{images.KAFKA_HOME}/config",
                    logs_dir="/var/log/kafka",
                )
            )
        else:
            container.with_envs(**kafka_dist.image_env(properties), CLUSTER_ID=cluster_id)
    elif broker == "mariadb":
        args = launch.mariadb_args(inner, bind_host=bind)
        if local:
            args = [
                *launch.mariadb_local_args(
                    data_dir=images.MARIADB_DATA,
                    socket="/run/mysqld/mysqld.sock",
                    init_file=images.MARIADB_INIT_FILE,
                ),
                *args,
            ]
        else:
            # The official image's switch for the passwordless root of txmq's test URL.
            container.with_envs(**{"MARIADB_ALLOW_EMPTY_ROOT_PASSWORD": "1"})
            container.with_env("MARIADB_DATABASE", MARIADB_DATABASE)
        container.with_command(args)
    else:
        socket_dir = "/tmp" if local else "/var/run/postgresql"  # noqa: S108
        container.with_command(launch.postgres_args(inner, bind_host=bind, socket_dir=socket_dir))
        if not local:
            container.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")


def _liveness(container: DockerContainer) -> Callable[[], str | None]:
    def check() -> str | None:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status in ("created", "running", "restarting"):
            return None
        logs = wrapped.logs(tail=40).decode(errors="replace")
        return f"container {wrapped.short_id} is {wrapped.status}; last output:\n{logs}"

    return check


def owner_token(pid: int) -> str:
    """The :data:`OWNER_LABEL` value naming process ``pid`` (never mistaken for a later
    process given the same pid, nor for a process of an earlier boot or of another pid
    namespace)."""
    return f"{_boot_id()}:{_pid_namespace()}:{pid}:{process_start_time(pid)}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _pid_namespace() -> str:
    """This process's pid namespace (its inode number): a Docker engine may serve several,
    e.g. CI jobs or dev containers that mount the same socket."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def owner_gone(token: str) -> bool:
    """Whether the process an :data:`OWNER_LABEL` value names is gone.

    A process of another pid namespace is never taken for gone: its pid means nothing here,
    so its container is left to a start in that namespace (or ``docker rm``).
    """
    boot, _, rest = token.partition(":")
    namespace, _, rest = rest.partition(":")
    pid_text, _, started = rest.partition(":")
    if not pid_text.isdigit() or boot != _boot_id():
        return True  # unreadable, or from an earlier boot: nobody can be using it
    if namespace != _pid_namespace():
        return False
    return str(process_start_time(int(pid_text))) != started


def reap(client: docker.DockerClient) -> list[str]:
    """Remove txmq's containers that nobody can use any more; return their short ids.

    That is every container carrying :data:`OWNER_LABEL` (started for a test session) that
    has exited or whose owner process is gone. Containers of ``txmq brokers up`` (no owner)
    are left alone, even exited (their data is for ``txmq brokers down``), as is anything
    without txmq's label.
    """
    import docker as docker_sdk

    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        owner = container.labels.get(OWNER_LABEL)
        if owner is None:
            continue  # a `txmq brokers up` container: `txmq brokers down` decides, even exited
        if container.status in ("exited", "dead") or owner_gone(owner):
            try:
                container.remove(force=True, v=True)
            except docker_sdk.errors.NotFound:
                continue  # removed meanwhile by someone else
            removed.append(container.short_id)
    return removed


def start(
    broker: Broker, ports: Ports, *, timeout: float = 180.0, owner: int | None = None
) -> Running:
    """Start ``broker`` in a container and wait until it answers its protocol.

    Builds the local image first if that is the one to use (minutes, once per recipe).
    First reaps what earlier runs left behind (:func:`reap`, said in the log). With
    ``owner`` (a pid), the container belongs to that process: a later start reaps it once
    the process is gone.

    Raises:
        ProvisionError: no engine, the build failed, or the broker did not get ready (the
            container is removed again then).
        MissingDependency: the docker SDK is not installed.
    """
    # Set before testcontainers reads its configuration.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    docker = engine.docker_sdk()
    import requests
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    testcontainers_config.ryuk_disabled = True
    client = engine.client()
    try:
        stale = reap(client)
        if stale:
            log.warning(
                "removed %d stale txmq container(s) whose owner is gone: %s",
                len(stale),
                ", ".join(stale),
            )
        choice = images.choose(broker, client)
        if choice.flavour == "local":
            images.build(broker, client)
        host_network = _host_network(client)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        # Wrapped, so that auto mode falls back to processes.
        raise ProvisionError(f"cannot prepare the {broker} image: {exc}") from exc
    finally:
        client.close()
    container = DockerContainer(choice.image)
    _configure(container, broker, choice, ports, host_network=host_network)
    # network=None also stops testcontainers from guessing a network of its own.
    labels: dict[str, str] = {LABEL: broker}
    if owner is not None:
        labels[OWNER_LABEL] = owner_token(owner)
    kwargs: dict[str, Any] = {"labels": labels, "network": None}
    if host_network:
        kwargs["network_mode"] = "host"
    else:
        container.ports.update(_published(broker, ports))  # type: ignore[arg-type]
    container.with_kwargs(**kwargs)
    try:
        container.start()
    except Exception as exc:
        raise ProvisionError(f"cannot start {choice.image} for {broker}: {exc}") from exc
    record = Running(
        broker=broker,
        mode="container",
        url=url_for(broker, ports),
        container_id=container.get_wrapped_container().id,
        image=choice.image,
    )
    try:
        wait_ready(broker, record.url, timeout=timeout, alive=_liveness(container))
    except BaseException:
        container.stop()
        raise
    return record


def alive(record: Running) -> bool:
    """Whether the container of ``record`` runs.

    Raises:
        MissingDependency: the docker SDK is not installed.
    """
    docker = engine.docker_sdk()

    try:
        client = engine.client()
    except ProvisionError:
        return False
    try:
        return bool(client.containers.get(record.container_id).status == "running")
    except docker.errors.NotFound:
        return False
    finally:
        client.close()


def stop(record: Running) -> None:
    """Remove the container of ``record`` (and nothing else: it must carry our label).

    Raises:
        ProvisionError: the Docker engine does not answer.
        MissingDependency: the docker SDK is not installed.
    """
    docker = engine.docker_sdk()

    client = engine.client()
    try:
        container = client.containers.get(record.container_id)
        if container.labels.get(LABEL) == record.broker:
            container.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    finally:
        client.close()
