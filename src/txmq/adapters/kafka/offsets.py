"""Which Kafka offsets a consumer may commit, given messages finished out of order.

A Kafka consumer group remembers one committed offset per partition: "everything below this
is done". Handlers finish messages in any order, so the offset that may be committed is
the one just past the longest run of finished messages starting at the oldest unfinished
one. A slow message at offset ``k`` holds the commit at ``k`` however many later ones are
done; committing past it would lose it if this consumer died.

"Run" means consecutive *delivered* offsets, not consecutive numbers: transaction markers
and aborted records take offsets that are never delivered.

Nothing here talks to a broker, so it is tested without one.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

#: ``(topic, partition)``.
PartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a delivered record sits; the ``token`` of a Kafka :class:`Delivery`.

    ``epoch`` identifies the assignment of the partition the record was read under, so a
    delivery acked after its partition was revoked (and maybe assigned back) is ignored
    instead of counting for records read under the new assignment.
    """

    topic: str
    partition: int
    offset: int
    epoch: int

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.partition)


@dataclass(slots=True)
class _PartitionState:
    epoch: int
    #: Delivered offsets not yet part of the committable run, ascending.
    outstanding: list[int] = field(default_factory=list)
    #: Members of ``outstanding`` that are done.
    done: set[int] = field(default_factory=set)
    #: Offset to commit next (one past the last finished run), once something finished.
    commit_to: int | None = None
    #: Offset of the last commit sent (its result may still be on the way).
    requested: int | None = None
    #: Highest offset whose commit the broker confirmed.
    confirmed: int = -1
    highest_delivered: int = -1


class OffsetTracker:
    """Per-partition bookkeeping of delivered and finished offsets.

    Example:
        >>> t = OffsetTracker()
        >>> t.assign([("orders", 0)])
        >>> p5, p6 = t.track("orders", 0, 5)[0], t.track("orders", 0, 6)[0]
        >>> t.done(p6)
        >>> t.commit_points()
        {}
        >>> t.done(p5)
        >>> t.commit_points()
        {('orders', 0): 7}
    """

    def __init__(self) -> None:
        self._partitions: dict[PartitionKey, _PartitionState] = {}
        self._epochs = 0

    def assign(self, partitions: Iterable[PartitionKey]) -> None:
        """Start tracking ``partitions`` afresh (a new assignment)."""
        for key in partitions:
            self._epochs += 1
            self._partitions[key] = _PartitionState(self._epochs)

    def revoke(self, partitions: Iterable[PartitionKey]) -> None:
        """Forget ``partitions``; later acks of their deliveries are ignored."""
        for key in partitions:
            self._partitions.pop(key, None)

    def track(self, topic: str, partition: int, offset: int) -> tuple[Position, bool]:
        """Record a delivered offset; return its position and whether it came before."""
        key = (topic, partition)
        state = self._partitions.get(key)
        if state is None:
            # A record from a partition whose assignment was not announced: track it anyway.
            self.assign([key])
            state = self._partitions[key]
        redelivered = offset <= state.highest_delivered
        if not redelivered:
            state.highest_delivered = offset
            state.outstanding.append(offset)
        elif offset not in state.done and (state.commit_to is None or offset >= state.commit_to):
            index = bisect.bisect_left(state.outstanding, offset)
            if index == len(state.outstanding) or state.outstanding[index] != offset:
                state.outstanding.insert(index, offset)
        return Position(topic, partition, offset, state.epoch), redelivered

    def done(self, position: Position) -> None:
        """Mark a delivered record finished."""
        state = self._current(position)
        if state is None:
            return
        index = bisect.bisect_left(state.outstanding, position.offset)
        if index == len(state.outstanding) or state.outstanding[index] != position.offset:
            return
        state.done.add(position.offset)
        finished = 0
        for offset in state.outstanding:
            if offset not in state.done:
                break
            state.done.discard(offset)
            state.commit_to = offset + 1
            finished += 1
        del state.outstanding[:finished]

    def release(self, position: Position) -> bool:
        """Forget ``position`` and every later delivered offset of its partition.

        The caller seeks the partition back to ``position.offset``, so they all come
        again. Return ``False`` (and do nothing) if the position is stale or already
        committable, in which case there is nothing to seek back to.
        """
        state = self._current(position)
        if state is None:
            return False
        index = bisect.bisect_left(state.outstanding, position.offset)
        if index == len(state.outstanding) or state.outstanding[index] != position.offset:
            return False
        for offset in state.outstanding[index:]:
            state.done.discard(offset)
        del state.outstanding[index:]
        return True

    def commit_points(
        self, partitions: Iterable[PartitionKey] | None = None
    ) -> dict[PartitionKey, int]:
        """Offsets to commit: per partition whose finished run grew since its last commit."""
        return {
            key: state.commit_to
            for key, state in self._states(partitions)
            if state.commit_to not in (None, state.requested, state.confirmed)
        }

    def unconfirmed(
        self, partitions: Iterable[PartitionKey] | None = None
    ) -> dict[PartitionKey, int]:
        """Offsets to commit per partition whose finished run is not confirmed committed.

        What a synchronous commit must cover: a commit sent asynchronously may still fail.
        """
        return {
            key: state.commit_to
            for key, state in self._states(partitions)
            if state.commit_to is not None and state.commit_to != state.confirmed
        }

    def requested(self, key: PartitionKey, offset: int) -> None:
        """Record that a commit of ``offset`` was sent for partition ``key``."""
        state = self._partitions.get(key)
        if state is not None:
            state.requested = offset

    def confirmed(self, key: PartitionKey, offset: int) -> None:
        """The broker confirmed the commit of ``offset`` for partition ``key``."""
        state = self._partitions.get(key)
        if state is not None:
            state.confirmed = max(state.confirmed, offset)

    def failed(self, key: PartitionKey, offset: int) -> None:
        """The commit of ``offset`` failed: offer the partition's offset again."""
        state = self._partitions.get(key)
        if state is not None and state.requested == offset:
            state.requested = None

    def pending(self, key: PartitionKey) -> list[int]:
        """Delivered offsets of ``key`` not yet committable (for diagnostics and tests)."""
        state = self._partitions.get(key)
        return list(state.outstanding) if state is not None else []

    def _states(
        self, partitions: Iterable[PartitionKey] | None
    ) -> list[tuple[PartitionKey, _PartitionState]]:
        if partitions is None:
            return list(self._partitions.items())
        return [(key, self._partitions[key]) for key in partitions if key in self._partitions]

    def _current(self, position: Position) -> _PartitionState | None:
        state = self._partitions.get(position.key)
        if state is None or state.epoch != position.epoch:
            return None
        return state
