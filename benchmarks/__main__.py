"""``python -m benchmarks``: txmq against its baselines, side by side, in one run.

Uses the brokers, PostgreSQL and MariaDB of ``--rabbitmq/--kafka/--database/--mysql``, else
of ``TXMQ_TEST_*_URL``, else starts them with ``txmq brokers up`` (MariaDB only for the
``mysql`` section: relay throughput and wake-up latency with the outbox on MariaDB beside
PostgreSQL). Everything is measured in a
new database on that server (dropped at the end) and in queues and topics of its own
(deleted at the end). Each section alternates txmq and its baselines round by round.

    python -m benchmarks                      # the full run (about 15 minutes)
    python -m benchmarks --smoke              # everything tiny, in seconds
    python -m benchmarks --only relay,latency --brokers kafka --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData

import txmq
from benchmarks import database, environment, report
from benchmarks.harness import Results

SECTIONS = ("relay", "consumer", "staging", "latency", "checkback", "mysql")


@dataclass(frozen=True, slots=True)
class Scale:
    """How much each section does; ``--smoke`` picks the tiny one."""

    relay_count: int
    history: int
    consumer_count: int
    per_message_count: int
    staging_count: int
    latency_seconds: float
    checkback_messages: int
    checkback_immunity: float
    rounds: int
    mysql_count: int
    #: Future-dated DELAYED records waiting in the relay's table in the delayed run.
    delayed: int


FULL = Scale(50_000, 200_000, 20_000, 3_000, 2_000, 15.0, 5, 1.0, 3, 20_000, 50_000)
SMOKE = Scale(300, 1_000, 300, 100, 50, 0.5, 2, 0.2, 1, 300, 1_000)
RATES = (300, 1000)
BODY = 200
BATCH = 1000


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="everything tiny (seconds)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--brokers", default="rabbitmq,kafka", help="rabbitmq, kafka or both")
    parser.add_argument("--rabbitmq", help="RabbitMQ URL (default $TXMQ_TEST_RABBITMQ_URL)")
    parser.add_argument("--kafka", help="Kafka URL (default $TXMQ_TEST_KAFKA_URL)")
    parser.add_argument("--database", help="PostgreSQL URL (default $TXMQ_TEST_DATABASE_URL)")
    parser.add_argument("--mysql", help="MariaDB/MySQL URL (default $TXMQ_TEST_MYSQL_URL)")
    parser.add_argument("--rounds", type=int, help="rounds per figure (full 3, smoke 1)")
    parser.add_argument("--history", type=int, help="SENT rows in the relay's history table")
    parser.add_argument("--latency-seconds", type=float, help="length of one latency phase")
    parser.add_argument(
        "--latency-batch-size",
        type=lambda value: value if value == "auto" else int(value),
        help='the latency consumer\'s batch_size (default 1; "auto" or a number)',
    )
    parser.add_argument(
        "--latency-producers",
        type=int,
        default=1,
        help="processes the latency producer service runs in, sharing the offered rate",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-report.json"), help="report")
    parser.add_argument("--chart", type=Path, help="PNG chart (default: the report's name .png)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {SECTIONS}")
    if unknown := set(brokers) - {"rabbitmq", "kafka"}:
        parser.error(f"unknown broker(s) {', '.join(sorted(unknown))}")
    if args.latency_producers < 1:
        parser.error("--latency-producers must be at least 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.sections, args.broker_names = sections, brokers
    return args


def scale_of(args: argparse.Namespace) -> Scale:
    base = SMOKE if args.smoke else FULL
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("rounds", args.rounds),
            ("history", args.history),
            ("latency_seconds", args.latency_seconds),
        )
        if value is not None
    }
    return replace(base, **changes)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.checkback import checkback_section
    from benchmarks.consumer import consumer_section
    from benchmarks.latency import latency_section
    from benchmarks.mysql import mysql_section
    from benchmarks.relay import Sizes, relay_section

    scale = scale_of(args)
    urls = environment.endpoints(args.rabbitmq, args.kafka, args.database, args.broker_names)
    mysql_server = environment.mysql_endpoint(args.mysql) if "mysql" in args.sections else None
    results = Results()
    timings: dict[str, float] = {}
    with (
        environment.benchmark_database(urls.database) as database_url,
        environment.benchmark_mysql_database(mysql_server) as mysql_url,
    ):
        engine = environment.engine_for(database_url, pool_size=10)
        plain = MetaData()
        database.plain_tables(plain)
        plain.create_all(engine)
        described = environment.describe(urls, engine)
        sizes = Sizes(
            scale.relay_count, scale.history, BODY, BATCH, scale.rounds, delayed=scale.delayed
        )
        try:
            for section in (s for s in SECTIONS if s in args.sections):
                started = time.monotonic()
                print(f"== {section}", file=sys.stderr, flush=True)
                if section == "staging":
                    database.staging_section(
                        results, engine, scale.staging_count, b"x" * BODY, scale.rounds
                    )
                for broker, url in urls.brokers() if section != "staging" else ():
                    print(f"-- {section} on {broker}", file=sys.stderr, flush=True)
                    if section == "relay":
                        relay_section(results, broker, url, database_url, engine, sizes)
                    elif section == "consumer":
                        consumer_section(
                            results,
                            broker,
                            url,
                            engine,
                            scale.consumer_count,
                            scale.per_message_count,
                            scale.rounds,
                        )
                    elif section == "latency":
                        latency_section(
                            results,
                            broker,
                            url,
                            database_url,
                            RATES,
                            scale.latency_seconds,
                            scale.rounds,
                            consumer_options=(
                                {"batch_size": args.latency_batch_size}
                                if args.latency_batch_size is not None
                                else None
                            ),
                            producers=args.latency_producers,
                        )
                    elif section == "mysql":
                        assert mysql_url is not None
                        mysql_engine = environment.engine_for(mysql_url, pool_size=10)
                        try:
                            mysql_section(
                                results,
                                broker,
                                url,
                                {"mariadb": mysql_engine, "postgresql": engine},
                                scale.mysql_count,
                                scale.rounds,
                            )
                        finally:
                            mysql_engine.dispose()
                    elif section == "checkback":
                        checkback_section(
                            results,
                            broker,
                            url,
                            engine,
                            scale.checkback_messages,
                            scale.checkback_immunity,
                            scale.rounds,
                        )
                timings[section] = round(time.monotonic() - started, 1)
        finally:
            engine.dispose()
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "smoke": args.smoke,
        "scale": asdict(scale) | {"body_bytes": BODY, "kafka_batch": BATCH, "rates": RATES},
        "sections": args.sections,
        "seconds_per_section": timings,
        **described,
        "figures": results.report(),
        "not_measured": report.NOT_MEASURED,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    outcome = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(args.json, outcome)
    chart = args.chart or args.json.with_suffix(".png")
    title = (
        f"txmq {txmq.__version__} vs baselines, {outcome['machine']['cpus']} CPUs, "
        f"{outcome['generated_at']}{' (smoke)' if args.smoke else ''}"
    )
    report.chart(chart, outcome["figures"], title)
    print(report.table(outcome["figures"]))
    print(f"\nreport: {args.json}  chart: {chart}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
