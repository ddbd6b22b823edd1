"""Which image runs each broker: the official one where a registry answers, else one built here.

Local images need nothing but Debian's package mirror: ``debootstrap`` makes a minimal
bookworm root file system, imported once as ``txmq-base:<hash>``; each broker image is that
base plus its Debian packages (and, for Kafka, the jars from Maven Central), installed in a
throw-away container and committed. Every image is tagged with a hash of its recipe, so it
is built once and reused until the recipe changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from txmq.testing.provision import debian, engine, kafka_dist, launch
from txmq.testing.provision.common import Broker, ProvisionError, cache_dir

if TYPE_CHECKING:
    import docker

log = logging.getLogger("txmq.provision")

Flavour = Literal["official", "local"]

#: Images used where a registry is reachable; each can be replaced by ``TXMQ_<BROKER>_IMAGE``.
OFFICIAL_IMAGES: Mapping[Broker, str] = {
    "rabbitmq": "rabbitmq:3.13-management",
    "kafka": "apache/kafka:4.1.1",
    "postgres": "postgres:16",
    "mariadb": "mariadb:10.11",
}
IMAGE_ENV: Mapping[Broker, str] = {
    "rabbitmq": "TXMQ_RABBITMQ_IMAGE",
    "kafka": "TXMQ_KAFKA_IMAGE",
    "postgres": "TXMQ_POSTGRES_IMAGE",
    "mariadb": "TXMQ_MARIADB_IMAGE",
}
#: ``auto`` (official if a registry answers, else local), ``official`` or ``local``.
SOURCE_ENV = "TXMQ_IMAGE_SOURCE"

DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BUILD_TIMEOUT = 1200
REGISTRY_PROBE_TIMEOUT = 10
ENTRYPOINT = "/usr/local/bin/txmq-entrypoint"
KAFKA_HOME = "/opt/kafka"
#: Where the locally built MariaDB image keeps its data and its start-up SQL.
MARIADB_DATA = "/var/lib/mysql/txmq"
MARIADB_INIT_FILE = "/usr/local/share/txmq/mariadb-init.sql"

_RABBITMQ_ENTRYPOINT = """\
#!/bin/sh
# Data lives where RABBITMQ_MNESIA_BASE/RABBITMQ_LOG_BASE say (set by txmq at run time).
set -eu
mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
chown -R rabbitmq:rabbitmq "$HOME"
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \\
    /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
"""

_POSTGRES_ENTRYPOINT = """\
#!/bin/sh
# Arguments are passed to postgres after -D; the cluster is created on first start.
set -eu
PGDATA=/var/lib/postgresql/data
BIN=$(echo /usr/lib/postgresql/*/bin)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    install -d -o postgres -g postgres -m 700 "$PGDATA"
    setpriv --reuid=postgres --regid=postgres --init-groups \\
        "$BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --no-sync >/dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA" "$@"
"""

_MARIADB_ENTRYPOINT = f"""\
#!/bin/sh
# Arguments are mariadbd's; the data directory is created on first start.
set -eu
if [ ! -d "{MARIADB_DATA}/mysql" ]; then
    install -d -o mysql -g mysql -m 700 "{MARIADB_DATA}"
    setpriv --reuid=mysql --regid=mysql --init-groups \\
        mariadb-install-db {" ".join(launch.mariadb_install_args(MARIADB_DATA))} >/dev/null
fi
install -d -o mysql -g mysql /run/mysqld
exec setpriv --reuid=mysql --regid=mysql --init-groups mariadbd "$@"
"""

_KAFKA_ENTRYPOINT = f"""\
#!/bin/sh
# TXMQ_KAFKA_PROPERTIES holds server.properties; the arguments are java's.
set -eu
CONFIG={KAFKA_HOME}/config
printf '%s' "$TXMQ_KAFKA_PROPERTIES" > "$CONFIG/server.properties"
DATA=$(sed -n 's/^log.dirs=//p' "$CONFIG/server.properties")
if [ ! -f "$DATA/meta.properties" ]; then
    java -Dlog4j2.configurationFile="$CONFIG/log4j2.properties" -Dkafka.logs.dir=/var/log/kafka \\
        -cp '{KAFKA_HOME}/libs/*' kafka.tools.StorageTool format \\
        -t "$TXMQ_KAFKA_CLUSTER_ID" -c "$CONFIG/server.properties"
fi
exec java "$@"
"""


@dataclass(frozen=True, slots=True)
class Recipe:
    """What goes into a locally built broker image; its hash is the image tag."""

    repository: str
    packages: tuple[str, ...]
    #: Shell run before ``apt-get install``.
    prepare: str = ""
    #: Shell run after it.
    finish: str = ""
    #: Files put into the image: absolute path -> content.
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kafka_libs: bool = False

    def tag(self, base: str) -> str:
        """A short hash of everything that shapes the image, including the base image."""
        described = dataclasses.asdict(self) | {
            "base": base,
            "kafka": kafka_dist.pom_xml() if self.kafka_libs else "",
        }
        encoded = json.dumps(described, sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:12]


BASE_RECIPE = {"suite": DEBIAN_SUITE, "variant": "minbase", "schema": 1}

RECIPES: Mapping[Broker, Recipe] = {
    "rabbitmq": Recipe(
        repository="txmq-rabbitmq",
        packages=("rabbitmq-server",),
        files={ENTRYPOINT: _RABBITMQ_ENTRYPOINT},
    ),
    "postgres": Recipe(
        repository="txmq-postgres",
        packages=("postgresql-15",),
        # txmq creates its own cluster at start; the package's default one is not wanted.
        prepare=(
            "mkdir -p /etc/postgresql-common && "
            "echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf"
        ),
        files={ENTRYPOINT: _POSTGRES_ENTRYPOINT},
    ),
    "mariadb": Recipe(
        repository="txmq-mariadb",
        packages=("mariadb-server",),
        files={ENTRYPOINT: _MARIADB_ENTRYPOINT, MARIADB_INIT_FILE: launch.MARIADB_INIT_SQL},
    ),
    "kafka": Recipe(
        repository="txmq-kafka",
        packages=("openjdk-17-jre-headless",),
        finish=(
            f"mkdir -p {KAFKA_HOME}/config /var/log/kafka && "
            f"cp -r /txmq-kafka-libs {KAFKA_HOME}/libs"
        ),
        files={
            ENTRYPOINT: _KAFKA_ENTRYPOINT,
            f"{KAFKA_HOME}/config/log4j2.properties": kafka_dist.LOG4J2_PROPERTIES,
        },
        kafka_libs=True,
    ),
}


@dataclass(frozen=True, slots=True)
class Choice:
    image: str
    flavour: Flavour


def base_tag() -> str:
    return hashlib.sha256(json.dumps(BASE_RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def local_image(broker: Broker) -> str:
    """The name the locally built image of ``broker`` has (or will have)."""
    base = f"txmq-base:{base_tag()}"
    recipe = RECIPES[broker]
    return f"{recipe.repository}:{recipe.tag(base)}"


def _exists(client: docker.DockerClient, image: str) -> bool:
    import docker

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


@functools.cache
def _registry_answers(image: str) -> bool:
    # Asking the daemon for the manifest is quick both ways: it fails at once where DNS or
    # the route is missing, and the client timeout bounds a registry that does not answer.
    client = engine.client(timeout=REGISTRY_PROBE_TIMEOUT)
    try:
        client.images.get_registry_data(image)
    except Exception:  # unreachable, refused, timed out: all mean "no"
        return False
    finally:
        client.close()
    return True


def choose(broker: Broker, client: docker.DockerClient) -> Choice:
    """Pick the image for ``broker`` (building nothing yet).

    ``TXMQ_<BROKER>_IMAGE`` names an image configured like the official one. Otherwise
    ``TXMQ_IMAGE_SOURCE`` decides: ``official``, ``local``, or ``auto`` (default): the
    official image if it is already here or its registry answers, else the local build.
    """
    override = os.environ.get(IMAGE_ENV[broker])
    if override:
        return Choice(override, "official")
    source = os.environ.get(SOURCE_ENV, "auto")
    if source not in ("auto", "official", "local"):
        raise ProvisionError(f"{SOURCE_ENV} must be auto, official or local, not {source!r}")
    official = OFFICIAL_IMAGES[broker]
    if source == "official" or (
        source == "auto" and (_exists(client, official) or _registry_answers(official))
    ):
        return Choice(official, "official")
    return Choice(local_image(broker), "local")


@contextlib.contextmanager
def _build_lock(name: str) -> Iterator[None]:
    # Two test sessions asking for the same image at once build it once.
    folder = cache_dir() / "build"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name.replace(':', '-').replace('/', '-')}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log_path(name: str) -> Path:
    folder = cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"build-{name.replace(':', '-')}.log"


def _debootstrap(rootfs: Path, log_path: Path) -> None:
    if shutil.which("debootstrap") is None and debian.can_install():
        debian.install("debootstrap")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ProvisionError(
            "building broker images needs debootstrap: apt-get install debootstrap"
        )
    mirror = os.environ.get("TXMQ_DEBIAN_MIRROR", DEFAULT_MIRROR)
    with open(log_path, "ab") as out:
        result = subprocess.run(  # noqa: S603
            [debootstrap, "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    if result.returncode != 0:
        raise ProvisionError(f"debootstrap failed ({result.returncode}); see {log_path}")


def _import_rootfs(rootfs: Path, name: str, log_path: Path) -> None:
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise ProvisionError("building broker images needs the docker command line client")
    with open(log_path, "ab") as out:
        tar = subprocess.Popen(  # noqa: S603
            ["tar", "-C", str(rootfs), "-c", "."],  # noqa: S607
            stdout=subprocess.PIPE,
            stderr=out,
        )
        assert tar.stdout is not None
        imported = subprocess.run(  # noqa: S603
            [docker_cli, "import", "-", name],
            stdin=tar.stdout,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        tar.stdout.close()
        tar.wait()
    if tar.returncode != 0 or imported.returncode != 0:
        raise ProvisionError(f"importing the base root file system failed; see {log_path}")


def ensure_base(client: docker.DockerClient) -> str:
    """Return the base image's name, running debootstrap and ``docker import`` if needed."""
    name = f"txmq-base:{base_tag()}"
    with _build_lock(name):
        if _exists(client, name):
            return name
        log.info("building base image %s with debootstrap", name)
        log_path = _log_path(name)
        build_root = cache_dir() / "build"
        with tempfile.TemporaryDirectory(prefix="rootfs-", dir=build_root) as folder:
            rootfs = Path(folder) / "rootfs"
            _debootstrap(rootfs, log_path)
            _import_rootfs(rootfs, name, log_path)
    return name


def _files_tar(files: Mapping[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755 if path == ENTRYPOINT else 0o644
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _install_script(recipe: Recipe) -> str:
    # policy-rc.d keeps package scripts from starting services inside the build container.
    return " && ".join(
        step
        for step in (
            "set -e",
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d",
            "chmod 755 /usr/sbin/policy-rc.d",
            recipe.prepare,
            "apt-get update -q",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            + " ".join(recipe.packages),
            recipe.finish,
            "rm -f /usr/sbin/policy-rc.d",
            "apt-get clean",
            "rm -rf /var/lib/apt/lists/*",
        )
        if step
    )


def build(broker: Broker, client: docker.DockerClient) -> str:
    """Return the local image of ``broker``, building it (and the base) when missing.

    Raises:
        ProvisionError: debootstrap, apt-get or Maven failed; the build log path is given.
    """
    name = local_image(broker)
    with _build_lock(name):
        if _exists(client, name):
            return name
        log.info("building image %s from Debian packages (once per recipe)", name)
        recipe = RECIPES[broker]
        base = ensure_base(client)
        volumes = {}
        if recipe.kafka_libs:
            libs = kafka_dist.ensure_libs()
            volumes[str(libs)] = {"bind": "/txmq-kafka-libs", "mode": "ro"}
        log_path = _log_path(name)
        container = client.containers.create(
            base,
            command=["/bin/sh", "-c", _install_script(recipe)],
            network_mode="host",
            volumes=volumes,
            labels={"txmq.build": name},
        )
        try:
            container.put_archive("/", _files_tar(recipe.files))
            container.start()
            status = container.wait(timeout=BUILD_TIMEOUT)
            log_path.write_bytes(container.logs())
            if status.get("StatusCode") != 0:
                raise ProvisionError(f"building {name} failed; see {log_path}")
            repository, _, tag = name.partition(":")
            container.commit(
                repository=repository,
                tag=tag,
                changes=[f'ENTRYPOINT ["{ENTRYPOINT}"]', f"LABEL txmq.recipe={tag}"],
            )
        finally:
            container.remove(force=True)
    return name
