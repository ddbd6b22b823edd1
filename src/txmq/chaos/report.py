"""The chaos report: JSON for machines, a few lines for people."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from txmq.chaos.invariants import Invariants


@dataclass(frozen=True, slots=True)
class FaultResult:
    """One fault of the run. ``count``: how often it was injected (or, for a connection
    reset, how many sockets it closed); ``recovery_s``: from its undoing until a transfer
    made afterwards was credited (None: not run, or no recovery within the bound);
    ``outage_s``, measured for the cluster faults only: the longest time, from hurting the
    cluster to undoing the fault, in which no credit was applied (how long service
    stopped while the cluster rode it out)."""

    name: str
    ran: bool
    reason: str = ""
    count: int = 0
    recovery_s: float | None = None
    detail: str = ""
    #: False for what is part of the workload (poison messages): nothing to recover from.
    recovers: bool = True
    outage_s: float | None = None

    def as_json(self) -> dict[str, object]:
        fields: dict[str, object] = {"name": self.name, "ran": self.ran}
        if not self.ran:
            fields["reason"] = self.reason
        fields.update(count=self.count, recovery_s=self.recovery_s, detail=self.detail)
        if self.outage_s is not None:
            fields["outage_s"] = self.outage_s
        return fields


@dataclass(frozen=True)
class BrokerRun:
    """The run on one broker."""

    broker: str
    broker_url: str
    private_broker: bool
    private_database: bool
    faults: tuple[FaultResult, ...]
    invariants: Invariants
    counts: dict[str, int]
    unexpected_exits: list[str] = field(default_factory=list)
    seconds: float = 0.0
    run_dir: str = ""

    @property
    def passed(self) -> bool:
        return self.invariants.passed

    def as_json(self) -> dict[str, object]:
        return {
            "broker": self.broker,
            "broker_url": self.broker_url,
            "private_broker": self.private_broker,
            "private_database": self.private_database,
            "passed": self.passed,
            "faults": [fault.as_json() for fault in self.faults],
            "invariants": self.invariants.as_json(),
            "counts": self.counts,
            "unexpected_exits": self.unexpected_exits,
            "seconds": round(self.seconds, 1),
            "run_dir": self.run_dir,
        }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("txmq", "sqlalchemy", "psycopg", "pika", "confluent-kafka"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def machine() -> dict[str, object]:
    import os

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "executable": sys.executable,
    }


@dataclass(frozen=True)
class Report:
    schedule: str
    seed: int
    runs: tuple[BrokerRun, ...]

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(run.passed for run in self.runs)

    def as_json(self) -> dict[str, object]:
        return {
            "schedule": self.schedule,
            "seed": self.seed,
            "passed": self.passed,
            "versions": versions(),
            "machine": machine(),
            "runs": [run.as_json() for run in self.runs],
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")

    def summary(self) -> str:
        lines = [f"txmq chaos: schedule {self.schedule}, seed {self.seed}"]
        for run in self.runs:
            counts = run.counts
            lines.append(
                f"\n{run.broker} ({run.broker_url}): {counts.get('transfers', 0)} transfers, "
                f"{counts.get('committed', 0)} committed, {counts.get('credited', 0)} credited, "
                f"{counts.get('refunded', 0)} refunded, {counts.get('poison', 0)} poison, "
                f"{run.seconds:.0f} s"
            )
            for fault in run.faults:
                if fault.ran and not fault.recovers:
                    lines.append(f"  ran      {fault.name:<38} x{fault.count:<3} {fault.detail}")
                elif fault.ran:
                    took = "never" if fault.recovery_s is None else f"{fault.recovery_s:.1f} s"
                    outage = (
                        "" if fault.outage_s is None else f", longest outage {fault.outage_s} s"
                    )
                    lines.append(
                        f"  ran      {fault.name:<38} x{fault.count:<3} recovered {took}{outage}"
                    )
                else:
                    lines.append(f"  not run  {fault.name:<38} {fault.reason}")
            inv = run.invariants
            lines.append(
                f"  lost {inv.lost}, applied twice {inv.applied_twice}, rolled-back delivered "
                f"{inv.rolled_back_delivered}, aborted reads "
                f"{'n/a' if inv.aborted_reads is None else inv.aborted_reads}, money conserved "
                f"{'yes' if inv.money_conserved else 'NO'}, DLQ {inv.dlq_actual}/"
                f"{inv.dlq_expected} expected, order violations {inv.order_violations}, "
                f"stalls {inv.stalls} ({inv.silent_stalls} silent), redeliveries "
                f"{inv.redeliveries}, duplicates stopped by the inbox {inv.inbox_duplicates}"
            )
            for exit_ in run.unexpected_exits:
                lines.append(f"  exited by itself: {exit_}")
            verdict = "all invariants hold" if run.passed else "FAILED: " + "; ".join(inv.failures)
            lines.append(f"  {verdict}")
        lines.append("\nPASSED" if self.passed else "\nFAILED")
        return "\n".join(lines)
