"""Finding, and where needed installing and starting, a Docker engine.

On a developer's laptop the engine is simply there. On a bare Debian machine (CI) it is
not, but Debian's ``docker.io`` installs and its ``dockerd`` runs without a bridge network;
containers then share the host's network (they only ever listen on loopback).
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from txmq.errors import MissingDependency
from txmq.testing.provision import debian
from txmq.testing.provision.common import ProvisionError, cache_dir, truthy

if TYPE_CHECKING:
    import docker

DOCKERD_ARGS = ("--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false")
START_TIMEOUT = 60.0


class Engine(enum.Enum):
    """What can be done about a Docker engine on this machine."""

    RUNNING = "running"
    #: ``dockerd`` is installed and we are root: it can be started.
    STARTABLE = "startable"
    #: Debian's ``docker.io`` can be installed (root, apt-get) and then started.
    INSTALLABLE = "installable"
    UNAVAILABLE = "unavailable"

    @property
    def usable(self) -> bool:
        return self is not Engine.UNAVAILABLE


def docker_sdk() -> ModuleType:
    """The docker SDK (``import docker``).

    Raises:
        MissingDependency: it is not installed (``pip install 'txmq[testing]'``).
    """
    try:
        import docker
    except ImportError as exc:
        raise MissingDependency(
            "container brokers need the docker SDK: pip install 'txmq[testing]'"
        ) from exc
    sdk: ModuleType = docker
    return sdk


def client(timeout: float = 60.0) -> docker.DockerClient:
    """A Docker SDK client for the engine ``DOCKER_HOST`` (or the default socket) names.

    Raises:
        ProvisionError: the docker SDK is missing or the engine does not answer.
    """
    try:
        docker = docker_sdk()
    except MissingDependency as exc:
        raise ProvisionError(str(exc)) from exc
    try:
        return docker.from_env(timeout=int(timeout))
    except docker.errors.DockerException as exc:
        raise ProvisionError(f"no Docker engine answers: {exc}") from exc


def running() -> bool:
    try:
        engine = client(timeout=5)
    except ProvisionError:
        return False
    try:
        return bool(engine.ping())
    except Exception:  # any failure to ping means "not running"
        return False
    finally:
        engine.close()


def _may_manage_engine() -> bool:
    # Someone pointed us at a particular engine, or said hands off: never start our own.
    if os.environ.get("DOCKER_HOST") or truthy(os.environ.get("TXMQ_NO_ENGINE_SETUP")):
        return False
    return os.geteuid() == 0


def probe() -> Engine:
    """Say whether containers can be run here, without changing anything."""
    if running():
        return Engine.RUNNING
    if not _may_manage_engine():
        return Engine.UNAVAILABLE
    if shutil.which("dockerd"):
        return Engine.STARTABLE
    if debian.can_install():
        return Engine.INSTALLABLE
    return Engine.UNAVAILABLE


def dockerd_log() -> Path:
    return cache_dir() / "dockerd.log"


def start(timeout: float = START_TIMEOUT) -> None:
    """Start ``dockerd`` detached (it outlives this process), logging to :func:`dockerd_log`.

    Raises:
        ProvisionError: dockerd exited, or did not answer within ``timeout``.
    """
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise ProvisionError("dockerd is not installed")
    log_path = dockerd_log()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # noqa: S603
            [dockerd, *DOCKERD_ARGS],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not running():
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise ProvisionError(f"dockerd exited with {process.returncode}:\n{tail}")
        if time.monotonic() >= deadline:
            raise ProvisionError(f"dockerd did not answer within {timeout:.0f} s; see {log_path}")
        time.sleep(0.25)


def ensure() -> Engine:
    """Make a Docker engine answer, installing and starting it where that is possible.

    Returns what the engine was before (so callers can say "started dockerd").

    Raises:
        ProvisionError: no engine can be had here.
    """
    found = probe()
    if found is Engine.UNAVAILABLE:
        raise ProvisionError(
            "no Docker engine is running and none can be started here "
            "(needs root on Debian, or a running engine / DOCKER_HOST)"
        )
    if found is Engine.INSTALLABLE:
        debian.install("docker.io")
    if found is not Engine.RUNNING:
        start()
    return found
