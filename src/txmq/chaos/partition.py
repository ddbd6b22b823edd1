"""The loopback firewall rules that cut one node of a cluster off from the other two while
every client still reaches all three.

Every node listens on 127.0.0.1, so a port alone cannot tell a peer's connection to a node
from a client's, nor a node's own outgoing connections (from ephemeral ports) from anyone
else's. Each node therefore runs with a group id of its own
(:meth:`~txmq.testing.provision.cluster.ClusterPorts.group`), and the rules, all in the
``OUTPUT`` chain where a packet still knows its socket's owner:

1. mark (``CONNMARK``) a connection when the cut-off node sends to a peer port of another
   node, or another node sends to a peer port of the cut-off one (peer ports:
   :meth:`~txmq.testing.provision.cluster.ClusterPorts.peer_ports`);
2. drop every packet of a marked connection, in both directions.

A connection is marked by the first packet its opener sends once the rules are in: an answer
already on its way then may still arrive, nothing after it. Clients' sockets have other
group ids, so their connections to any node are never marked.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

from txmq.errors import ConfigurationError
from txmq.testing.provision.cluster import ClusterBroker, ClusterPorts


def node_rules(ports: ClusterPorts, broker: ClusterBroker, node: int) -> list[list[str]]:
    """The ``iptables`` rules (each the arguments after ``-A``/``-D``) that partition
    ``node`` from the other nodes of the cluster on ``ports``, in the order they must be
    appended: the marks, then the drop.

    Raises:
        ConfigurationError: ``node`` is not a node of the cluster, or the nodes run without
            groups of their own (they were not started by root).
    """
    if not 0 <= node < ports.size:
        raise ConfigurationError(f"node {node} is not one of the cluster's {ports.size} nodes")
    groups = [ports.group(number) for number in range(ports.size)]
    own = groups[node]
    if own is None or None in groups:
        raise ConfigurationError(
            "the cluster's nodes run without groups of their own: only root starts them so"
        )
    others = [number for number in range(ports.size) if number != node]
    mark = str(own)
    to_others = [port for number in others for port in ports.peer_ports(broker, number)]
    sends = [(own, to_others)] + [
        (groups[number], list(ports.peer_ports(broker, node))) for number in others
    ]
    rules = [
        [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "-m",
            "owner",
            "--gid-owner",
            str(group),
            "-m",
            "multiport",
            "--dports",
            ",".join(str(port) for port in targets),
            "-j",
            "CONNMARK",
            "--set-mark",
            mark,
        ]
        for group, targets in sends
    ]
    rules.append(["OUTPUT", "-o", "lo", "-m", "connmark", "--mark", mark, "-j", "DROP"])
    return rules


def dropped_packets(listing: str, drop_rule: list[str]) -> int | None:
    """How many packets ``drop_rule`` (the last of :func:`node_rules`) dropped, read from
    ``iptables -v -S OUTPUT``'s ``listing`` (None: the rule is not in it)."""
    mark = f"0x{int(drop_rule[drop_rule.index('--mark') + 1]):x}"
    for line in listing.splitlines():
        words = line.split()
        if "connmark" in words and mark in words and words[-2:] == ["-j", "DROP"] and "-c" in words:
            return int(words[words.index("-c") + 1])
    return None


@contextlib.contextmanager
def rules_in_place(iptables: str, rules: list[list[str]], *, insert: bool = False) -> Iterator[str]:
    """Append ``rules`` (``CHAIN ...`` specs; ``insert``: put each at the head of its chain
    instead) for the block, and delete them again however it ends; yields iptables' refusal
    of one of them ("" when every rule is in; a refused rule's predecessors stay until the
    block ends)."""
    added: list[list[str]] = []
    refused = ""
    try:
        for rule in rules:
            refused = run_iptables(iptables, "-I" if insert else "-A", rule)
            if refused:
                break
            added.append(rule)
        yield refused
    finally:
        for rule in reversed(added):
            run_iptables(iptables, "-D", rule)


def listing(iptables: str) -> str:
    """``iptables -v -S OUTPUT``: the rules with their counters ("" when it fails)."""
    result = subprocess.run(  # noqa: S603  # fixed argv
        [iptables, "-w", "5", "-v", "-S", "OUTPUT"], capture_output=True, text=True, check=False
    )
    return result.stdout if result.returncode == 0 else ""


def run_iptables(iptables: str, action: str, rule: list[str]) -> str:
    """Run one iptables command; its error ("" when it worked)."""
    result = subprocess.run(  # noqa: S603  # fixed argv
        [iptables, "-w", "5", action, *rule], capture_output=True, text=True, check=False
    )
    return "" if result.returncode == 0 else result.stderr.strip()[:200]
