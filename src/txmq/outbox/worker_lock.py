"""One relay and one check-back worker per producer group on a SQLite database.

SQLite has no ``SKIP LOCKED``: two relays (or check-back workers) of one group on the same
database file would claim the same records and publish (or decide) them twice. The right to
work is an exclusive ``flock`` on a file next to the database file, per group. The
operating system releases it the instant its holder's process dies, so a worker that stands
by takes over at its next attempt, without waiting for a lease to expire and whatever the
clocks say; ``flock`` locks belong to an open file, so two workers of one process exclude
each other as two processes do.

A relay of every group (``all_groups=True``) holds the database's relay file exclusively;
relays of named groups hold it shared, so either one relay of every group runs or relays of
disjoint groups do.

On databases with ``SKIP LOCKED`` (PostgreSQL, MySQL) workers share the work instead, and
the lock is always held. So it is for an in-memory SQLite database, which no other process
can open.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from txmq.errors import ConfigurationError, WorkerBusy
from txmq.outbox.store import OutboxStore

#: Longer group names are hashed in lock file names (file names are limited to 255 bytes).
_NAME_IN_FILE_MAX = 64


class WorkerLock:
    """The right to run one kind of worker (``"relay"``, ``"checkback"``) for ``groups``
    (None: every group) on the store's database.

    Thread-safe; :meth:`acquire` never blocks.
    """

    def __init__(self, store: OutboxStore, kind: str, groups: tuple[str, ...] | None) -> None:
        self.kind = kind
        self.groups = groups
        self._guard = threading.Lock()
        self._held: list[int] = []  # open file descriptors, each flocked
        self._files: list[tuple[str, bool]] = []  # (path, exclusive)
        database = store.engine.url.database if store.dialect == "sqlite" else None
        if database and database != ":memory:" and "mode=memory" not in database:
            base = os.path.abspath(database.removeprefix("file:").split("?", 1)[0])
            if groups is None:
                self._files.append((f"{base}.txmq-{kind}.lock", True))
            else:
                self._files.append((f"{base}.txmq-{kind}.lock", False))
                self._files += [(f"{base}.txmq-{kind}.{_file_part(g)}.lock", True) for g in groups]
        self.description = (
            f"the {kind} lock of {'every group' if groups is None else ', '.join(groups)} on "
            f"{store.engine.url.render_as_string(hide_password=True)}"
        )

    @property
    def held(self) -> bool:
        """Whether this worker may work now (it acquired the lock, or none is needed)."""
        return not self._files or bool(self._held)

    def acquire(self) -> bool:
        """Take the lock if it is free (or already ours); return whether it is held.

        Raises:
            ConfigurationError: a lock file cannot be opened (e.g. the database's directory
                is not writable).
        """
        import fcntl  # POSIX; imported here so that importing txmq does not need it

        with self._guard:
            if self.held:
                return True
            taken: list[int] = []
            try:
                for path, exclusive in self._files:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                    taken.append(fd)
                    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                for fd in taken:
                    os.close(fd)
                return False
            except OSError as exc:
                for fd in taken:
                    os.close(fd)
                raise ConfigurationError(
                    f"cannot lock {path} for {self.description}: {exc.strerror}"
                ) from exc
            self._held = taken
            return True

    def release(self) -> None:
        """Give the lock up (closing the files releases their locks). Idempotent."""
        with self._guard:
            held, self._held = self._held, []
        for fd in held:
            os.close(fd)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Hold the lock for one call: the worker's own, or taken and given back after.

        Raises:
            WorkerBusy: another worker holds it.
        """
        if self.held:
            yield
            return
        if not self.acquire():
            raise WorkerBusy(f"{self.description} is held by another worker")
        try:
            yield
        finally:
            self.release()


def _file_part(group: str) -> str:
    if len(group) <= _NAME_IN_FILE_MAX:
        return group
    return hashlib.sha256(group.encode()).hexdigest()[:32]
