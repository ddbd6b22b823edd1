"""The pure parts of broker provisioning: ports, URLs, env lines, state, modes, recipes."""

from __future__ import annotations

import dataclasses
import json
import random
import shlex
import socket
import string
import subprocess
from pathlib import Path

import pytest

from txmq.testing import provision
from txmq.testing.provision import containers, debian, images, kafka_dist, launch, state
from txmq.testing.provision.common import (
    Ports,
    ProvisionError,
    ephemeral_range,
    unused_ports,
    url_for,
)
from txmq.testing.provision.engine import Engine
from txmq.testing.provision.lifecycle import Endpoints, resolve_mode
from txmq.testing.provision.state import Running

DEV_PORTS = {5672, 25672, 4369, 9092, 9093, 5432, 3306}


def test_default_ports_stay_clear_of_usual_and_ephemeral_ports() -> None:
    ports = dataclasses.astuple(Ports())
    assert not DEV_PORTS & set(ports)
    assert len(set(ports)) == len(ports)
    # Linux hands out 32768-60999 to outgoing connections, which would block a listener.
    assert all(1024 < port < 32768 for port in ports)


def test_ports_from_env_overrides_only_what_is_set() -> None:
    ports = Ports.from_env({"TXMQ_PORT_KAFKA": "49092", "TXMQ_PORT_POSTGRES": "45432"})
    assert (ports.kafka, ports.postgres) == (49092, 45432)
    assert ports.rabbitmq == Ports().rabbitmq


@pytest.mark.parametrize("bad", ["abc", "0", "70000", "-1", ""])
def test_ports_from_env_rejects_non_ports(bad: str) -> None:
    with pytest.raises(ProvisionError, match="TXMQ_PORT_RABBITMQ"):
        Ports.from_env({"TXMQ_PORT_RABBITMQ": bad})


def test_free_ports_are_distinct_and_unprivileged() -> None:
    ports = dataclasses.astuple(Ports.free())
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < 65536 for port in ports)


def test_free_ports_stay_out_of_the_ephemeral_range_and_the_defaults() -> None:
    # A server restarted on its ports (chaos kills RabbitMQ and starts it again) once found
    # its Erlang distribution port taken by an outgoing connection's source port.
    low, high = ephemeral_range()
    defaults = set(dataclasses.astuple(Ports()))
    for _ in range(20):
        for port in dataclasses.astuple(Ports.free()):
            assert not low <= port <= high
            assert port not in defaults


def test_free_ports_skip_a_port_something_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    port = Ports.free().rabbitmq
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        # The busy port is the first candidate tried.
        monkeypatch.setattr(random, "shuffle", lambda items: items.sort(key=lambda p: p != port))
        chosen = unused_ports(3)
    assert port not in chosen
    assert len(set(chosen)) == 3


def test_urls_point_at_loopback_on_the_configured_ports() -> None:
    ports = Ports(rabbitmq=1111, kafka=2222, postgres=3333)
    assert url_for("rabbitmq", ports) == "rabbitmq://guest:guest@127.0.0.1:1111/"
    assert url_for("kafka", ports) == "kafka://127.0.0.1:2222"
    assert url_for("postgres", ports) == "postgresql+psycopg://postgres@127.0.0.1:3333/postgres"


def test_mariadb_has_its_own_port_variable_and_a_pymysql_url() -> None:
    ports = Ports.from_env({"TXMQ_PORT_MARIADB": "23306"})
    assert url_for("mariadb", ports) == "mysql+pymysql://root@127.0.0.1:23306/txmq"
    endpoints = Endpoints(mysql_url=url_for("mariadb", ports))
    assert endpoints.env_lines() == [
        "TXMQ_TEST_MYSQL_URL=mysql+pymysql://root@127.0.0.1:23306/txmq"
    ]


def test_env_lines_name_the_plugin_variables_and_skip_missing_brokers() -> None:
    endpoints = Endpoints(rabbitmq_url="rabbitmq://guest:guest@127.0.0.1:1/", kafka_url=None)
    assert endpoints.env_lines() == ["TXMQ_TEST_RABBITMQ_URL=rabbitmq://guest:guest@127.0.0.1:1/"]


def test_env_lines_survive_eval_and_export() -> None:
    endpoints = Endpoints(
        rabbitmq_url="rabbitmq://u:p@127.0.0.1:1/v%2Fh",
        kafka_url="kafka://127.0.0.1:2?security.protocol=PLAINTEXT&x=a b",
        database_url="postgresql+psycopg://postgres@127.0.0.1:3/postgres",
    )
    printed = "\n".join(endpoints.env_lines())
    script = 'eval "$TXMQ_LINES"; echo "$TXMQ_TEST_KAFKA_URL"; echo "$TXMQ_TEST_RABBITMQ_URL"'
    result = subprocess.run(
        ["bash", "-c", script],
        env={"TXMQ_LINES": printed, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [endpoints.kafka_url, endpoints.rabbitmq_url]
    # Lines without shell-special characters stay plain, as `export $(...)` needs.
    assert endpoints.env_lines()[2] == f"TXMQ_TEST_DATABASE_URL={endpoints.database_url}"
    assert shlex.split(endpoints.env_lines()[1]) == [f"TXMQ_TEST_KAFKA_URL={endpoints.kafka_url}"]


def _record(broker: provision.Broker = "kafka") -> Running:
    return Running(
        broker=broker,
        mode="process",
        url="kafka://127.0.0.1:21092",
        pgids=(10, 11),
        start_times=(100, 101),
        run_dir="/tmp/x",
        log="/tmp/x/log",
    )


def test_state_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    container = Running(
        broker="postgres", mode="container", url="u", container_id="abc", image="img:1"
    )
    state.save({"kafka": _record(), "postgres": container}, path)
    assert state.load(path) == {"kafka": _record(), "postgres": container}
    assert not path.with_suffix(".tmp").exists()


def test_missing_state_is_empty_and_a_foreign_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert state.load(path) == {}
    path.write_text(json.dumps({"brokers": [{"broker": "redis", "mode": "process"}]}))
    with pytest.raises(ProvisionError, match="not a txmq broker state file"):
        state.load(path)
    path.write_text("{not json")
    with pytest.raises(ProvisionError, match="cannot read"):
        state.load(path)


def test_state_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXMQ_STATE_DIR", str(tmp_path))
    state.save({"kafka": _record()})
    assert (tmp_path / "state.json").exists()
    with state.locked():
        assert state.load() == {"kafka": _record()}


@pytest.mark.parametrize(
    ("engine", "expected"),
    [
        (Engine.RUNNING, "container"),
        (Engine.STARTABLE, "container"),
        (Engine.INSTALLABLE, "container"),
        (Engine.UNAVAILABLE, "process"),
    ],
)
def test_auto_mode_picks_containers_wherever_an_engine_can_be_had(
    engine: Engine, expected: str
) -> None:
    assert resolve_mode("auto", lambda: engine) == expected


@pytest.mark.parametrize("mode", ["container", "process", "env"])
def test_explicit_modes_are_kept_without_probing(mode: provision.RequestedMode) -> None:
    def probe() -> Engine:
        raise AssertionError("an explicit mode must not probe for an engine")

    assert resolve_mode(mode, probe) == mode


def test_recipe_tag_is_stable_and_changes_with_the_recipe() -> None:
    recipe = images.RECIPES["rabbitmq"]
    assert recipe.tag("base:1") == recipe.tag("base:1")
    assert len(recipe.tag("base:1")) == 12
    assert recipe.tag("base:1") != recipe.tag("base:2")
    more = dataclasses.replace(recipe, packages=(*recipe.packages, "curl"))
    assert more.tag("base:1") != recipe.tag("base:1")
    edited = dataclasses.replace(recipe, files={images.ENTRYPOINT: "#!/bin/sh\n"})
    assert edited.tag("base:1") != recipe.tag("base:1")


def test_local_images_are_named_by_broker_and_recipe_hash() -> None:
    names = {broker: images.local_image(broker) for broker in provision.BROKERS}
    assert names["kafka"].startswith("txmq-kafka:")
    assert len(set(names.values())) == len(provision.BROKERS)
    assert images.local_image("kafka") == names["kafka"]


def test_image_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXMQ_POSTGRES_IMAGE", "registry.example/pg:16")
    choice = images.choose("postgres", client=None)
    assert choice == images.Choice("registry.example/pg:16", "official")


def test_local_source_never_asks_a_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(images.SOURCE_ENV, "local")
    choice = images.choose("kafka", client=None)
    assert choice == images.Choice(images.local_image("kafka"), "local")
    monkeypatch.setenv(images.SOURCE_ENV, "somewhere")
    with pytest.raises(ProvisionError, match="TXMQ_IMAGE_SOURCE"):
        images.choose("kafka", client=None)


def test_kafka_cluster_ids_are_22_url_safe_chars_never_starting_with_a_dash() -> None:
    ids = {kafka_dist.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    url_safe = set(string.ascii_letters + string.digits + "-_")
    assert all(set(i) <= url_safe for i in ids)


def test_kafka_single_node_settings() -> None:
    props = kafka_dist.server_properties(Ports(kafka=1, kafka_controller=2), log_dir="/d")
    assert props["controller.quorum.voters"] == "1@127.0.0.1:2"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:1"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    rendered = kafka_dist.render_properties(props)
    assert "log.dirs=/d\n" in rendered


def test_kafka_image_env_uses_the_official_image_naming() -> None:
    env = kafka_dist.image_env({"offsets.topic.replication.factor": "1", "a_b-c.d": "x"})
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_A__B___C_D"] == "x"
    assert "-Xmx768m" in env["KAFKA_HEAP_OPTS"]


def test_kafka_pom_pins_the_broker_and_the_slf4j1_binding() -> None:
    pom = kafka_dist.pom_xml("4.1.1")
    assert "<artifactId>kafka_2.13</artifactId>" in pom
    assert "<version>4.1.1</version>" in pom
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in pom


def test_rabbitmq_env_keeps_the_node_private_and_on_loopback() -> None:
    ports = Ports(rabbitmq=1000, rabbitmq_dist=2000, rabbitmq_epmd=3000)
    env = launch.rabbitmq_env(ports, bind_host="127.0.0.1", base_dir="/r")
    assert env["RABBITMQ_NODENAME"] == "txmq1000@localhost"
    assert (env["RABBITMQ_NODE_PORT"], env["RABBITMQ_DIST_PORT"]) == ("1000", "2000")
    assert env["ERL_EPMD_PORT"] == "3000"
    assert "{127,0,0,1}" in env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert env["RABBITMQ_MNESIA_BASE"] == "/r/mnesia"
    official = launch.rabbitmq_env(ports, bind_host="0.0.0.0", base_dir=None)
    assert "RABBITMQ_MNESIA_BASE" not in official
    assert "HOME" not in official


def test_postgres_listens_only_where_asked() -> None:
    args = launch.postgres_args(Ports(postgres=4444), bind_host="127.0.0.1", socket_dir="/s")
    assert args[:4] == ["-p", "4444", "-k", "/s"]
    assert "listen_addresses=127.0.0.1" in args


class FakeContainer:
    """Records what containers._configure asks of a testcontainers DockerContainer."""

    def __init__(self) -> None:
        self.env: dict[str, str] = {}
        self.command: list[str] | None = None

    def with_env(self, key: str, value: str) -> FakeContainer:
        self.env[key] = value
        return self

    def with_envs(self, **variables: str) -> FakeContainer:
        self.env.update(variables)
        return self

    def with_command(self, command: list[str]) -> FakeContainer:
        self.command = command
        return self


def _configured(
    broker: provision.Broker, flavour: images.Flavour, *, host_network: bool
) -> FakeContainer:
    fake = FakeContainer()
    choice = images.Choice("image:tag", flavour)
    containers._configure(fake, broker, choice, Ports(), host_network=host_network)  # type: ignore[arg-type]
    return fake


def test_host_network_containers_listen_on_loopback_at_the_chosen_ports() -> None:
    kafka = _configured("kafka", "local", host_network=True)
    properties = kafka.env["TXMQ_KAFKA_PROPERTIES"]
    assert f"listeners=PLAINTEXT://127.0.0.1:{Ports().kafka}," in properties
    assert f"advertised.listeners=PLAINTEXT://127.0.0.1:{Ports().kafka}\n" in properties
    postgres = _configured("postgres", "local", host_network=True)
    assert postgres.command is not None
    assert postgres.command[:2] == ["-p", str(Ports().postgres)]
    assert "listen_addresses=127.0.0.1" in postgres.command
    mariadb = _configured("mariadb", "local", host_network=True)
    assert mariadb.command is not None
    assert mariadb.command[0] == "--no-defaults"  # no my.cnf of the image leaks in
    assert f"--port={Ports().mariadb}" in mariadb.command
    assert "--bind-address=127.0.0.1" in mariadb.command
    rabbitmq = _configured("rabbitmq", "local", host_network=True)
    assert rabbitmq.env["RABBITMQ_NODE_IP_ADDRESS"] == "127.0.0.1"
    assert "loopback_users" not in rabbitmq.env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]


def test_published_containers_use_the_image_ports_and_advertise_the_host_port() -> None:
    kafka = _configured("kafka", "official", host_network=False)
    assert kafka.env["KAFKA_LISTENERS"] == "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
    assert kafka.env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://127.0.0.1:{Ports().kafka}"
    assert kafka.env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@127.0.0.1:9093"
    assert containers._published("kafka", Ports()) == {"9092/tcp": ("127.0.0.1", Ports().kafka)}
    postgres = _configured("postgres", "official", host_network=False)
    assert postgres.env["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert postgres.command is not None
    assert postgres.command[:2] == ["-p", "5432"]
    mariadb = _configured("mariadb", "official", host_network=False)
    assert mariadb.env["MARIADB_ALLOW_EMPTY_ROOT_PASSWORD"] == "1"
    assert mariadb.command is not None
    assert "--port=3306" in mariadb.command
    assert "--bind-address=0.0.0.0" in mariadb.command
    assert containers._published("mariadb", Ports()) == {"3306/tcp": ("127.0.0.1", Ports().mariadb)}
    # guest may log in only from loopback; published connections come from the bridge.
    rabbitmq = _configured("rabbitmq", "local", host_network=False)
    assert "-rabbit loopback_users []" in rabbitmq.env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]


def test_a_taken_port_is_named_before_anything_starts() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        with pytest.raises(ProvisionError, match=f"127.0.0.1:{taken}.*TXMQ_PORT_POSTGRES"):
            provision.start("postgres", "process", Ports(postgres=taken))


class FakeApt:
    """Stands in for subprocess.run in debian.install; notes whether services may start."""

    def __init__(self, policy: Path, *, install_rc: int) -> None:
        self.policy = policy
        self.install_rc = install_rc
        self.policy_during: list[str] = []

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.policy_during.append(self.policy.read_text() if self.policy.exists() else "")
        rc = self.install_rc if argv[1] == "install" else 0
        return subprocess.CompletedProcess(argv, rc, "", "E: no such package")


@pytest.mark.parametrize("install_rc", [0, 100])
def test_installed_packages_start_no_services_and_the_policy_goes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, install_rc: int
) -> None:
    # A dockerd started by docker.io's postinst would clash with the one txmq starts.
    policy = tmp_path / "policy-rc.d"
    apt = FakeApt(policy, install_rc=install_rc)
    monkeypatch.setattr(debian, "POLICY_RC_D", policy)
    monkeypatch.setattr(debian, "can_install", lambda: True)
    monkeypatch.setattr(debian.subprocess, "run", apt)
    if install_rc:
        with pytest.raises(ProvisionError, match=r"apt-get install docker\.io failed"):
            debian.install("docker.io")
    else:
        debian.install("docker.io")
    assert apt.policy_during
    assert all("exit 101" in text for text in apt.policy_during)
    assert not policy.exists()


def test_a_policy_already_in_place_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    apt = FakeApt(policy, install_rc=0)
    monkeypatch.setattr(debian, "POLICY_RC_D", policy)
    monkeypatch.setattr(debian, "can_install", lambda: True)
    monkeypatch.setattr(debian.subprocess, "run", apt)
    debian.install("debootstrap")
    assert apt.policy_during == ["#!/bin/sh\nexit 0\n"]
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"


class FakeContainers:
    def list(self, **filters: object) -> list[object]:
        return []  # nothing stale to reap


class FakeClient:
    containers = FakeContainers()

    def close(self) -> None:
        pass


def _docker_errors() -> list[Exception]:
    import docker
    import requests

    return [
        docker.errors.APIError("500 Server Error: commit failed"),
        requests.exceptions.ReadTimeout("read timed out"),
    ]


@pytest.mark.parametrize("error", _docker_errors(), ids=["api", "timeout"])
def test_engine_errors_while_preparing_an_image_are_provision_errors(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # Only a ProvisionError lets auto mode fall back to processes.
    def failing_choose(broker: provision.Broker, client: object) -> images.Choice:
        raise error

    monkeypatch.setattr(containers.engine, "client", FakeClient)
    monkeypatch.setattr(containers.images, "choose", failing_choose)
    with pytest.raises(ProvisionError, match="kafka") as raised:
        containers.start("kafka", Ports())
    assert raised.value.__cause__ is error


def test_an_owner_token_names_a_living_process_until_it_is_gone() -> None:
    import os
    import subprocess
    import sys

    from txmq.testing.provision import containers

    assert not containers.owner_gone(containers.owner_token(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = containers.owner_token(child.pid)
    child.wait(timeout=30)
    assert containers.owner_gone(token)
    _, _, rest = containers.owner_token(os.getpid()).partition(":")
    assert containers.owner_gone(f"another-boot:{rest}")
    assert containers.owner_gone("garbage")


def test_an_owner_in_another_pid_namespace_is_never_taken_for_gone() -> None:
    """A Docker engine may be shared with other PID namespaces (CI jobs or dev containers
    mounting the same socket): their pids mean nothing here, so their containers stay."""
    import subprocess
    import sys

    from txmq.testing.provision import containers

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = containers.owner_token(child.pid)
    child.wait(timeout=30)
    boot, namespace, pid, started = token.split(":")  # the owner's pid namespace included
    assert pid == str(child.pid)
    assert containers.owner_gone(token)  # gone in this namespace
    other = "1" if namespace != "1" else "2"
    assert not containers.owner_gone(f"{boot}:{other}:{pid}:{started}")  # cannot tell here


def test_reaping_removes_only_session_containers_that_nobody_can_use() -> None:
    import os

    from txmq.testing.provision import containers

    class Container:
        def __init__(self, name: str, status: str, owner: str | None) -> None:
            self.short_id, self.status = name, status
            self.labels = {containers.LABEL: "postgres"}
            if owner is not None:
                self.labels[containers.OWNER_LABEL] = owner
            self.removed = False

        def remove(self, **options: object) -> None:
            self.removed = True

    alive = containers.owner_token(os.getpid())
    boot, _, rest = alive.partition(":")
    gone = f"{boot}:{rest.rsplit(':', 1)[0]}:-5"  # this pid, another start time: not it
    found = [
        Container("up-exited", "exited", None),  # txmq brokers up: for `down` to decide
        Container("up-running", "running", None),
        Container("mine-running", "running", alive),
        Container("mine-exited", "exited", alive),
        Container("orphan", "running", gone),
    ]

    class Client:
        class containers:
            @staticmethod
            def list(**filters: object) -> list[Container]:
                return found

    assert containers.reap(Client()) == ["mine-exited", "orphan"]  # type: ignore[arg-type]
    assert [c.short_id for c in found if c.removed] == ["mine-exited", "orphan"]
