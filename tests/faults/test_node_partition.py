"""The rules that partition one cluster node, on real loopback sockets: three stand-in nodes
(processes with the group ids cluster nodes get) talk on their peer ports; while the rules
are in, the cut-off node's links to the other two hang both ways, the other two still talk,
and a client still reaches the cut-off node; once deleted, every link carries data again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import IO

import pytest

from txmq.chaos.partition import dropped_packets, listing, node_rules, rules_in_place
from txmq.testing import wait_for
from txmq.testing.provision import cluster
from txmq.testing.provision.common import LOOPBACK
from txmq.testing.provision.readiness import tcp_open

# A stand-in node (``serve``: echo on each port) or a link (``link``: one connection; each
# line on stdin is one round trip, answered ok or timeout), run with the given group id.
PEER = """
import os, socket, sys, threading
os.setgid(int(sys.argv[1]))
if sys.argv[2] == "serve":
    def echo(conn):
        while data := conn.recv(100):
            conn.sendall(data)
    def serve(port):
        server = socket.create_server(("127.0.0.1", port))
        while True:
            threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
    for port in sys.argv[3:]:
        threading.Thread(target=serve, args=(int(port),), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
else:
    conn = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    conn.settimeout(1.5)
    print("ready", flush=True)
    for _ in sys.stdin:
        conn.sendall(b"x")
        try:
            print("ok" if conn.recv(100) else "closed", flush=True)
        except TimeoutError:
            print("timeout", flush=True)
"""


def _free_block() -> cluster.ClusterPorts:
    for base in range(28000, 30000, 100):
        ports = cluster.ClusterPorts(base=base)
        if not any(tcp_open(LOOPBACK, port) for port in ports.in_use()):
            return ports
    raise AssertionError("no free block of 100 ports in 28000-29999")


class Peer:
    def __init__(self, group: int, *args: str) -> None:
        self.process = subprocess.Popen(  # our own argv
            [sys.executable, "-c", PEER, str(group), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._read() == "ready"

    def _read(self) -> str:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        return stdout.readline().strip()

    def round_trip(self) -> str:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write("\n")
        stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for peer in reversed(started):
        peer.close()


def test_a_partitioned_node_loses_its_peers_and_keeps_its_clients(peers: list[Peer]) -> None:
    assert os.geteuid() == 0, "the partition needs root (group ids and iptables)"
    iptables = shutil.which("iptables")
    assert iptables is not None, "iptables is not installed"
    ports = _free_block()
    group = [g for g in (ports.group(n) for n in range(3)) if g is not None]
    assert len(group) == 3
    for n in range(3):
        node = ports.node(n)
        peers.append(Peer(group[n], "serve", str(node.rabbitmq), str(node.rabbitmq_dist)))
    links = {
        "node 1 to the cut-off node 0": Peer(group[1], "link", str(ports.node(0).rabbitmq_dist)),
        "the cut-off node 0 to node 2": Peer(group[0], "link", str(ports.node(2).rabbitmq_dist)),
        "node 1 to node 2": Peer(group[1], "link", str(ports.node(2).rabbitmq_dist)),
        "a client to node 0": Peer(0, "link", str(ports.node(0).rabbitmq)),
    }
    peers.extend(links.values())
    assert {name: link.round_trip() for name, link in links.items()} == dict.fromkeys(links, "ok")

    rules = node_rules(ports, "rabbitmq", 0)
    with rules_in_place(iptables, rules) as refused:
        assert refused == ""
        during = {name: link.round_trip() for name, link in links.items()}
        dropped = dropped_packets(listing(iptables), rules[-1])
    assert during == {
        "node 1 to the cut-off node 0": "timeout",
        "the cut-off node 0 to node 2": "timeout",
        "node 1 to node 2": "ok",
        "a client to node 0": "ok",
    }
    assert dropped
    assert dropped_packets(listing(iptables), rules[-1]) is None  # deleted
    for name, link in links.items():
        wait_for(lambda link=link: link.round_trip() == "ok", 60, f"{name} healed")


HOLDER = """
import sys, time
from txmq.chaos.partition import rules_in_place
from txmq.chaos.runner import exits_on_sigterm
rule = ["OUTPUT", "-o", "lo", "-m", "connmark", "--mark", sys.argv[2], "-j", "DROP"]
with exits_on_sigterm(), rules_in_place(sys.argv[1], [rule]) as refused:
    print(refused or "in", flush=True)
    time.sleep(120)
"""


def test_a_chaos_run_stopped_by_sigterm_deletes_its_rules() -> None:
    """The default SIGTERM ends Python without running ``finally``: a run stopped so left
    its partition rules (and its servers) behind."""
    iptables = shutil.which("iptables")
    assert iptables is not None, "iptables is not installed"
    mark = str(100_000 + os.getpid())
    rule = ["OUTPUT", "-o", "lo", "-m", "connmark", "--mark", mark, "-j", "DROP"]
    holder = subprocess.Popen(  # our own argv
        [sys.executable, "-c", HOLDER, iptables, mark], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "in"
        assert dropped_packets(listing(iptables), rule) == 0  # in place
        holder.terminate()
        assert holder.wait(30) == 143
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        leftover = dropped_packets(listing(iptables), rule) is not None
        if leftover:
            subprocess.run([iptables, "-w", "5", "-D", *rule], check=False)  # our own argv
    assert not leftover
