"""Apache Kafka as jars from Maven Central, and its single-node KRaft configuration.

Kafka has no Debian or PyPI package. Maven Central has the broker, so a tiny generated POM
lets ``mvn dependency:copy-dependencies`` fetch it with its runtime dependencies into a
folder cached per version (``~/.cache/txmq/kafka-4.1.1/libs``), which both process mode
and the locally built Kafka image use.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from txmq.testing.provision.common import LOOPBACK, Ports, ProvisionError, cache_dir

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
# Kafka 4.1 logs through slf4j-api 1.7, so the slf4j-1 binding of log4j2 is the right one.
LOG4J_VERSION = "2.24.3"
HEAP_OPTS = ("-Xms256m", "-Xmx768m")
MAVEN_TIMEOUT = 900.0

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>txmq.provision</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

#: log4j2 in its properties format: the broker writes INFO to ``${sys:kafka.logs.dir}``,
#: and only WARN from the chatty request/state-change loggers.
LOG4J2_PROPERTIES = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.clients.name = org.apache.kafka
logger.clients.level = WARN
"""


def pom_xml(version: str = KAFKA_VERSION) -> str:
    return _POM.format(kafka=version, scala=SCALA_VERSION, log4j=LOG4J_VERSION)


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_dir() / f"kafka-{version}" / "libs"


def ensure_libs(version: str = KAFKA_VERSION) -> Path:
    """Return the folder of Kafka's jars, downloading them with Maven the first time.

    The jars land in a temporary folder that is renamed into place only when Maven
    succeeded, so a failed or interrupted download is never taken for a cached one.

    Raises:
        ProvisionError: ``mvn`` is missing or fails.
    """
    target = libs_dir(version)
    if target.is_dir() and any(target.glob(f"kafka_{SCALA_VERSION}-{version}.jar")):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ProvisionError("Maven (mvn) is needed to fetch Kafka's jars: apt-get install maven")
    work = target.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(pom_xml(version))
    partial = work / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    argv = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(work / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    try:
        result = subprocess.run(  # noqa: S603  # fixed argv, no shell
            argv, capture_output=True, text=True, timeout=MAVEN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"Maven took more than {MAVEN_TIMEOUT:.0f} s for Kafka") from exc
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-2000:]
        raise ProvisionError(f"Maven could not fetch Kafka {version}:\n{tail}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding (22 chars).

    Like Kafka's own ``Uuid.randomUuid``, never one starting with ``-``: command lines
    would read it as an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def server_properties(
    ports: Ports, *, log_dir: str, bind_host: str = LOOPBACK, advertised_port: int | None = None
) -> dict[str, str]:
    """Settings of a single-node KRaft broker+controller reachable at 127.0.0.1.

    ``bind_host`` is ``0.0.0.0`` and ``advertised_port`` the published port only inside a
    container whose ports are published; the advertised address is always loopback, where
    clients reach it.
    """
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{LOOPBACK}:{ports.kafka_controller}",
        "listeners": (
            f"PLAINTEXT://{bind_host}:{ports.kafka},CONTROLLER://{bind_host}:{ports.kafka_controller}"
        ),
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{advertised_port or ports.kafka}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": log_dir,
        "num.partitions": "3",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
    }


def render_properties(properties: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def image_env(properties: Mapping[str, str]) -> dict[str, str]:
    """The same settings as the ``apache/kafka`` image's ``KAFKA_*`` variables.

    The image maps a variable back to a property by lower-casing it and reading ``___`` as
    ``-``, ``__`` as ``_`` and ``_`` as ``.``.
    """
    env = {}
    for key, value in properties.items():
        name = key.replace("_", "__").replace("-", "___").replace(".", "_").upper()
        env[f"KAFKA_{name}"] = value
    env["KAFKA_HEAP_OPTS"] = " ".join(HEAP_OPTS)
    return env
