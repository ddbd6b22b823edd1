"""The recorded history: every operation the bank attempted, and how it ended.

One JSON object per line, appended and flushed as it happens, so a SIGKILLed process leaves
everything it recorded. An operation is an ``invoke`` line, then at most one completion:
``ok`` (its local transaction committed), ``failed`` (it did not commit: a rollback the
workload chose, or an error before the commit) or ``unknown`` (it may have committed). A
process killed between the two leaves the operation ``unknown``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Outcome = Literal["ok", "failed", "unknown"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "failed", "unknown")


@dataclass(frozen=True, slots=True)
class Operation:
    """One transfer (or poison message) the bank attempted.

    Attributes:
        index: its number in the run; also its order within its key.
        transfer_id: the id written with its debit.
        message_id: the id of the credit message.
        mode: how it was produced (e.g. ``"outbox"``, ``"half-unknown-commit"``, ``"poison"``).
        payer, payee, amount: the money it moves.
        key: the message's ordering key (None: unordered).
        commits: whether the workload meant it to commit (False: a chosen rollback).
        invoked_at: epoch seconds when it began.
        outcome: how it ended, as the producer saw it.
        completed_at: epoch seconds when it ended (None: never, the process died).
        detail: the error, where there was one.
    """

    index: int
    transfer_id: str
    message_id: str
    mode: str
    payer: str
    payee: str
    amount: int
    key: str | None
    commits: bool
    invoked_at: float
    outcome: Outcome = "unknown"
    completed_at: float | None = None
    detail: str = ""


class HistoryWriter:
    """Appends to the history file; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")

    def invoke(self, operation: Operation) -> None:
        fields = asdict(operation)
        for name in ("outcome", "completed_at", "detail"):
            del fields[name]
        self._write({"event": "invoke", "pid": os.getpid(), **fields})

    def complete(self, index: int, outcome: Outcome, detail: str = "") -> None:
        self._write({"event": outcome, "index": index, "at": time.time(), "detail": detail})

    def _write(self, line: dict[str, object]) -> None:
        with self._lock:
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_history(path: Path) -> list[Operation]:
    """Every operation in ``path``, by index; a torn last line (a kill mid-write) is skipped."""
    invoked: dict[int, dict[str, object]] = {}
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        kind = event.pop("event")
        if kind == "invoke":
            event.pop("pid", None)
            invoked[int(event["index"])] = event
        elif kind in OUTCOMES and int(event["index"]) in invoked:
            invoked[int(event["index"])].update(
                outcome=kind, completed_at=event["at"], detail=event.get("detail", "")
            )
    return [Operation(**fields) for _, fields in sorted(invoked.items())]  # type: ignore[arg-type]


def next_index(path: Path) -> int:
    """The first index a (restarted) bank may use."""
    operations = read_history(path)
    return operations[-1].index + 1 if operations else 0


class DeliveryLog:
    """What the crediting handler was handed, one line per call, before it does anything:
    a message handed over twice (a redelivery after a crash, a retry) has two lines."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")

    def add(self, message_id: str, attempt: int) -> None:
        line = json.dumps({"message_id": message_id, "attempt": attempt, "at": time.time()})
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


def read_deliveries(run_dir: Path) -> dict[str, int]:
    """How many times the handler was handed each message id, over every consumer process."""
    counts: dict[str, int] = {}
    for path in sorted(run_dir.glob("deliveries-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                message_id = json.loads(line)["message_id"]
            except (ValueError, KeyError):
                continue
            counts[message_id] = counts.get(message_id, 0) + 1
    return counts


def read_duplicates(run_dir: Path) -> int:
    """Deliveries the inbox stopped before the handler (copies of a message already
    applied), over every consumer process."""
    total = 0
    for path in sorted(run_dir.glob("duplicates-*.txt")):
        text = path.read_text(encoding="utf-8").strip()
        total += int(text) if text.isdigit() else 0
    return total
