"""What a three-node cluster costs the relay, against one node, in the same run.

Starts a private single node and a private three-node cluster of one broker (processes, on
ports 25600-25799), stages ``--count`` messages into a new outbox table of the PostgreSQL
of ``$TXMQ_TEST_DATABASE_URL`` and times ``producer.relay()`` draining them (as
``benchmarks/relay.py`` does), alternating the targets round by round; stops both at the
end. RabbitMQ is measured on one node with classic and with quorum queues, and on the
cluster with quorum queues; Kafka on one node (RF 1) and on the cluster (RF 3, min ISR 2,
``acks=all`` as always).

    python -m benchmarks.cluster_cost --broker kafka --count 5000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import uuid

from sqlalchemy import Engine, MetaData, create_engine

import txmq
from benchmarks.relay import relay_run
from txmq.testing.provision import cluster, processes
from txmq.testing.provision.common import Ports, url_for

#: The single node's ports, clear of the cluster's block (25600-25699).
SINGLE = Ports(
    rabbitmq=25700,
    rabbitmq_dist=25701,
    rabbitmq_epmd=25702,
    rabbitmq_management=25703,
    kafka=25704,
    kafka_controller=25705,
    postgres=25706,
)


def _targets(broker: cluster.ClusterBroker, single: str, clustered: str) -> dict[str, str]:
    if broker == "rabbitmq":
        return {
            "one node, classic queues": single,
            # An exchange of its own: the classic runs hold unroutable messages in a classic queue.
            "one node, quorum queues": single + "?queue_type=quorum&exchange=txmq-quorum",
            "3 nodes, quorum queues": clustered,
        }
    return {"one node, RF 1": single, "3 nodes, RF 3, min ISR 2": clustered}


def measure(broker: cluster.ClusterBroker, database_url: str, count: int, rounds: int) -> None:
    single = processes.start(broker, SINGLE, timeout=240)
    try:
        started = cluster.start(broker, cluster.ClusterPorts(), timeout=300)
        try:
            targets = _targets(broker, url_for(broker, SINGLE), started.url)
            rates: dict[str, list[float]] = {name: [] for name in targets}
            engine = create_engine(database_url)
            body = os.urandom(1024)
            for number in range(rounds):
                for name, url in targets.items():
                    rate = _one_run(url, engine, count, body)
                    rates[name].append(rate)
                    print(f"round {number + 1} {name}: {rate:,.0f} msg/s", flush=True)
            engine.dispose()
            base = statistics.median(next(iter(rates.values())))
            for name, values in rates.items():
                median = statistics.median(values)
                print(f"{broker} {name}: median {median:,.0f} msg/s ({median / base:.2f} x)")
        finally:
            cluster.stop(started)
    finally:
        processes.stop(single)


def _one_run(url: str, engine: Engine, count: int, body: bytes) -> float:
    suffix = uuid.uuid4().hex[:8]
    adapter = txmq.connect(url)
    topology = txmq.Topology(f"cost-{suffix}", f"cost.{suffix}")
    adapter.declare([topology])
    metadata = MetaData()
    tables = txmq.make_outbox_tables(metadata, prefix=f"cost_{suffix}_")
    metadata.create_all(engine)
    producer = txmq.Producer(group=f"cost-{suffix}", engine=engine, broker=adapter, tables=tables)
    try:
        return relay_run(producer, topology.topic, count, body).per_second
    finally:
        producer.close()
        metadata.drop_all(engine)
        adapter.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=cluster.CLUSTER_BROKERS, required=True)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    database_url = os.environ["TXMQ_TEST_DATABASE_URL"]
    measure(args.broker, database_url, args.count, args.rounds)


if __name__ == "__main__":
    main()
