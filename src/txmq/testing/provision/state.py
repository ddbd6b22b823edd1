"""What ``txmq brokers up`` started, kept in a JSON file so ``down`` stops exactly that.

The file lives in :func:`~txmq.testing.provision.common.state_dir` (``state.json``); every
read-modify-write holds an exclusive ``flock`` on a lock file beside it, so two ``up``
commands never overwrite each other's records.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from txmq.testing.provision.common import BROKERS, Broker, Mode, ProvisionError, state_dir

STATE_FILE = "state.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class Running:
    """One broker that was started, and how to find and stop it again.

    Attributes:
        broker: which broker.
        mode: ``container`` or ``process`` (``env`` records are never stored).
        url: how clients reach it.
        container_id: the container, in container mode.
        image: the image it runs, in container mode.
        pgids: process groups to stop, in process mode (each a session leader's pid).
        start_times: ``/proc`` start time of each group leader, so a recycled pid is never
            mistaken for the broker.
        run_dir: data and logs, removed by ``down`` in process mode.
        log: the broker's log file (process mode) for error messages.
    """

    broker: Broker
    mode: Mode
    url: str
    container_id: str | None = None
    image: str | None = None
    pgids: tuple[int, ...] = ()
    start_times: tuple[int, ...] = ()
    run_dir: str | None = None
    log: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Running:
        if data.get("broker") not in BROKERS or data.get("mode") not in ("container", "process"):
            raise ValueError(f"not a broker record: {data!r}")
        return cls(
            broker=cast(Broker, data["broker"]),
            mode=cast(Mode, data["mode"]),
            url=str(data["url"]),
            container_id=data.get("container_id"),
            image=data.get("image"),
            pgids=tuple(int(p) for p in data.get("pgids", ())),
            start_times=tuple(int(t) for t in data.get("start_times", ())),
            run_dir=data.get("run_dir"),
            log=data.get("log"),
        )


def state_path() -> Path:
    return state_dir() / STATE_FILE


def load(path: Path | None = None) -> dict[Broker, Running]:
    """Records by broker; an absent file is an empty state.

    Raises:
        ProvisionError: the file exists but is not a state file.
    """
    path = path or state_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the broker state file {path}: {exc}") from exc
    try:
        records = [Running.from_json(item) for item in data["brokers"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProvisionError(f"{path} is not a txmq broker state file: {exc}") from exc
    return {record.broker: record for record in records}


def save(records: dict[Broker, Running], path: Path | None = None) -> None:
    """Write the records atomically (write a temporary file, then rename)."""
    path = path or state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = [records[b].to_json() for b in BROKERS if b in records]
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"version": _VERSION, "brokers": ordered}, indent=2) + "\n")
    os.replace(temporary, path)


@contextlib.contextmanager
def locked(path: Path | None = None) -> Iterator[None]:
    """Hold the state lock for a read-modify-write of the state file."""
    path = path or state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
