"""The cluster schedule's plan and the rules that partition one node, without a cluster."""

from __future__ import annotations

import pytest

from txmq.chaos import schedule
from txmq.chaos.faults import INJECTORS
from txmq.chaos.partition import dropped_packets, node_rules
from txmq.chaos.runner import longest_gap
from txmq.errors import ConfigurationError
from txmq.testing.provision import cluster

PORTS = cluster.ClusterPorts(base=27600)


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes get groups of their own only when root starts them."""
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 0)


@pytest.mark.parametrize("system", ["rabbitmq", "kafka"])
def test_the_cluster_schedule_injects_each_cluster_fault_once_and_its_seed_replays_it(
    system: str,
) -> None:
    one = schedule.plan("cluster", 42, system)
    assert one == schedule.plan("cluster", 42, system)
    assert sorted(f.name for f in one.faults) == sorted(schedule.CLUSTER_FAULTS)
    faults = {f.name: f for f in one.faults}
    assert faults[schedule.NODE_PARTITION].seconds == 10.0
    assert 1.0 <= faults[schedule.NODE_KILL].seconds <= 4.0
    assert all(0 <= f.nth < schedule.CLUSTER_SIZE and f.settle > 0 for f in one.faults)
    others = [schedule.plan("cluster", seed, system) for seed in range(30)]
    assert len({plan.faults for plan in others}) > 1
    # The seed picks the node: over many seeds, every node is hit.
    assert {f.nth for plan in others for f in plan.faults} == {0, 1, 2}
    assert {plan.faults[0].name for plan in others} == set(schedule.CLUSTER_FAULTS)


def test_every_cluster_fault_has_an_injector() -> None:
    assert set(schedule.CLUSTER_FAULTS) <= set(INJECTORS)


def _marks(rules: list[list[str]]) -> list[tuple[str, str, str]]:
    """(group, ports, mark) of each CONNMARK rule."""
    return [
        (rule[rule.index("--gid-owner") + 1], rule[rule.index("--dports") + 1], rule[-1])
        for rule in rules
        if "CONNMARK" in rule
    ]


@pytest.mark.usefixtures("as_root")
def test_a_rabbitmq_node_is_cut_off_on_the_erlang_distribution_ports_only() -> None:
    rules = node_rules(PORTS, "rabbitmq", 1)
    # Node 1 (group 27610) to the others' distribution ports, and the others to node 1's.
    assert _marks(rules) == [
        ("27610", "27601,27621", "27610"),
        ("27600", "27611", "27610"),
        ("27620", "27611", "27610"),
    ]
    assert rules[-1] == ["OUTPUT", "-o", "lo", "-m", "connmark", "--mark", "27610", "-j", "DROP"]
    assert all(rule[:3] == ["OUTPUT", "-o", "lo"] for rule in rules)
    # Clients' AMQP ports and the shared epmd stay reachable.
    cut = {port for _, ports, _ in _marks(rules) for port in ports.split(",")}
    assert cut.isdisjoint({"27600", "27610", "27620", "27699"})


@pytest.mark.usefixtures("as_root")
def test_a_kafka_node_is_cut_off_on_the_replication_and_controller_ports() -> None:
    rules = node_rules(PORTS, "kafka", 0)
    assert _marks(rules) == [
        ("27600", "27612,27613,27622,27623", "27600"),
        ("27610", "27602,27603", "27600"),
        ("27620", "27602,27603", "27600"),
    ]
    assert rules[-1][-4:] == ["--mark", "27600", "-j", "DROP"]
    # Each node's partition has a mark of its own: undoing one leaves another in place.
    assert {node_rules(PORTS, "kafka", n)[-1][-3] for n in range(3)} == {
        "27600",
        "27610",
        "27620",
    }


def test_the_rules_need_nodes_with_groups_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigurationError, match="only root"):
        node_rules(PORTS, "kafka", 0)


@pytest.mark.usefixtures("as_root")
def test_a_node_the_cluster_does_not_have_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="node 3 is not one of"):
        node_rules(PORTS, "rabbitmq", 3)


@pytest.mark.usefixtures("as_root")
def test_the_packets_a_partition_dropped_are_read_from_its_rule_counters() -> None:
    drop = node_rules(PORTS, "rabbitmq", 2)[-1]
    listing = "\n".join(
        [
            "-P OUTPUT ACCEPT -c 0 0",
            "-A OUTPUT -o lo -m connmark --mark 0x6bd0 -c 7 700 -j DROP",  # node 0's mark
            "-A OUTPUT -o lo -m connmark --mark 0x6be4 -c 42 5000 -j DROP",  # node 2's: 27620
        ]
    )
    assert dropped_packets(listing, drop) == 42
    assert dropped_packets("-P OUTPUT ACCEPT -c 0 0", drop) is None


def test_the_outage_is_the_longest_time_without_a_credit() -> None:
    assert longest_gap(100.0, 110.0, [100.5, 101.0, 107.5, 108.0]) == 6.5
    assert longest_gap(100.0, 110.0, [100.1]) == 9.9  # nothing after: to the undoing
    assert longest_gap(100.0, 110.0, []) == 10.0
