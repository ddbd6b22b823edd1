"""``python -m txmq.chaos [--broker URL|rabbitmq|kafka] [--database URL] [--schedule short]
[--seed N] [--json FILE]``: exit 0 when every invariant held, 1 when one failed, 2 on a bad
argument."""

from __future__ import annotations

import argparse
import sys

from txmq.chaos.runner import run
from txmq.chaos.schedule import SCHEDULES
from txmq.errors import TxmqError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m txmq.chaos", description=__doc__)
    parser.add_argument(
        "--broker",
        help="broker URL (used as it is), or rabbitmq / kafka for a private one; default both",
    )
    parser.add_argument("--database", help="PostgreSQL URL; default a private one")
    parser.add_argument("--schedule", choices=SCHEDULES, default="short")
    parser.add_argument("--seed", type=int, help="replay this run's schedule and workload")
    parser.add_argument("--json", dest="json_path", help="write the JSON report here")
    args = parser.parse_args(argv)
    try:
        return run(
            args.broker,
            args.database,
            schedule=args.schedule,
            seed=args.seed,
            json_path=args.json_path,
        )
    except TxmqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
