"""What ``txmq brokers up --cluster 3`` configures, without starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import txmq
from txmq.adapters.kafka.settings import KafkaSettings
from txmq.adapters.rabbitmq.settings import RabbitMQSettings
from txmq.cli.root import app
from txmq.testing.provision import cluster, launch
from txmq.testing.provision.common import ProvisionError
from txmq.testing.provision.state import Running


def test_each_node_has_its_own_ports_and_the_rabbitmq_nodes_share_one_epmd() -> None:
    ports = cluster.ClusterPorts(base=25600)
    nodes = ports.nodes()
    assert [n.rabbitmq for n in nodes] == [25600, 25610, 25620]
    assert [n.kafka for n in nodes] == [25602, 25612, 25622]
    assert [n.kafka_controller for n in nodes] == [25603, 25613, 25623]
    assert {n.rabbitmq_epmd for n in nodes} == {25699}
    assert len(set(ports.in_use())) == len(ports.in_use()) == 1 + 4 * 3
    assert all(25600 <= port < 25700 for port in ports.in_use())


def test_port_base_comes_from_the_environment_and_is_checked() -> None:
    assert cluster.ClusterPorts.from_env({"TXMQ_CLUSTER_PORT_BASE": "25000"}).base == 25000
    assert cluster.ClusterPorts.from_env({}).base == cluster.DEFAULT_PORT_BASE
    with pytest.raises(ProvisionError, match="TXMQ_CLUSTER_PORT_BASE"):
        cluster.ClusterPorts.from_env({"TXMQ_CLUSTER_PORT_BASE": "65500"})


def test_kafka_nodes_replicate_three_times_with_two_in_sync() -> None:
    ports = cluster.ClusterPorts(base=25600)
    every = [cluster.kafka_node_properties(ports, n, log_dir=f"/d{n}") for n in range(3)]
    assert [p["node.id"] for p in every] == ["1", "2", "3"]
    voters = "1@127.0.0.1:25603,2@127.0.0.1:25613,3@127.0.0.1:25623"
    assert {p["controller.quorum.voters"] for p in every} == {voters}
    second = every[1]
    assert second["process.roles"] == "broker,controller"
    assert second["listeners"] == "PLAINTEXT://127.0.0.1:25612,CONTROLLER://127.0.0.1:25613"
    assert second["advertised.listeners"] == "PLAINTEXT://127.0.0.1:25612"
    assert second["log.dirs"] == "/d1"
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert second[key] == "3", key
    for key in (
        "min.insync.replicas",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
    ):
        assert second[key] == "2", key
    assert second["unclean.leader.election.enable"] == "false"


def test_rabbitmq_nodes_discover_each_other_by_name() -> None:
    ports = cluster.ClusterPorts(base=25600)
    config = cluster.rabbitmq_node_config(ports)
    assert "cluster_formation.peer_discovery_backend = classic_config\n" in config
    for number, node in enumerate(ports.nodes()):
        name = launch.rabbitmq_node_name(node)
        assert f"cluster_formation.classic_config.nodes.{number + 1} = {name}\n" in config
    assert "cluster_partition_handling = pause_minority" in config


def test_cluster_urls_name_every_node_and_parse() -> None:
    ports = cluster.ClusterPorts(base=25600)
    rabbitmq = txmq.parse_broker_url(cluster.cluster_url("rabbitmq", ports))
    assert isinstance(rabbitmq, RabbitMQSettings)
    assert rabbitmq.nodes == (("127.0.0.1", 25600), ("127.0.0.1", 25610), ("127.0.0.1", 25620))
    assert rabbitmq.queue_type == "quorum"
    kafka = txmq.parse_broker_url(cluster.cluster_url("kafka", ports))
    assert isinstance(kafka, KafkaSettings)
    assert kafka.bootstrap_servers == ("127.0.0.1:25602", "127.0.0.1:25612", "127.0.0.1:25622")
    assert kafka.replication_factor == 3


def test_cluster_record_holds_every_process_so_down_stops_them_all() -> None:
    ports = cluster.ClusterPorts(base=25600)
    nodes = [
        Running(broker="rabbitmq", mode="process", url="u", pgids=(n,), start_times=(n,))
        for n in (11, 12, 13)
    ]
    epmd = Running(broker="rabbitmq", mode="process", url="e", pgids=(9,), start_times=(9,))
    record = cluster.Cluster("rabbitmq", ports, "/run/c", nodes, [epmd]).record()
    assert record.pgids == record.start_times == (11, 12, 13, 9)
    assert record.run_dir == "/run/c"
    assert record.url == cluster.cluster_url("rabbitmq", ports)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--cluster", "2"], "--cluster takes 1 or 3, not 2"),
        (["--cluster", "3", "--mode", "container"], "clusters run as processes only"),
    ],
)
def test_up_refuses_what_it_cannot_start(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["brokers", "up", *arguments])
    assert result.exit_code == 2
    assert message in result.output
