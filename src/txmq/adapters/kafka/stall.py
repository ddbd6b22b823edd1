"""Telling a wedged Kafka consumer from one that has nothing to read.

librdkafka fetches in its own threads and joins the group by itself; when that machinery
stops (a fetcher that never restarts after a rebalance, a join that never completes), a
poll simply returns nothing, exactly as it does on an idle topic. :class:`StallWatch`
decides, from what the subscription observes, when "nothing" means "stuck":

* **No fetching.** While the member owns partitions, it looks at them every half
  ``stall_after`` of quiet: those with committed messages past the member's position
  (read_committed end offsets, so an open transaction is not a backlog). A partition
  found lagging at the same position on two looks, with nothing fetched for
  ``stall_after``, is stuck.
* **No partitions.** A member that subscribed, or had partitions revoked or lost, and was
  not given its new assignment within ``join_bound`` seconds is stuck. A rebalance may
  legitimately wait up to ``max.poll.interval.ms`` for a slow member, so the bound is
  longer than that.

The class does no I/O: the subscription asks it when to look and tells it what it saw.
"""

from __future__ import annotations

from txmq.adapters.kafka.offsets import PartitionKey


class StallWatch:
    """Remembers when a member last made progress and what it saw lagging.

    Args:
        stall_after: seconds of quiet, with messages to read, before a partition is stuck.
        join_bound: seconds a member may wait for an assignment.
        now: ``time.monotonic()`` at subscription (the member waits for its first assignment).
    """

    def __init__(self, *, stall_after: float, join_bound: float, now: float) -> None:
        self.stall_after = stall_after
        self.join_bound = join_bound
        self._waiting_since: float | None = now
        self._quiet_since = now
        self._next_look = now + stall_after / 2
        self._lagging: dict[PartitionKey, int] = {}

    def fetched(self, now: float) -> None:
        """Records came: the member is making progress."""
        self._quiet_since = now
        self._next_look = now + self.stall_after / 2
        self._lagging = {}

    def rebalancing(self, now: float) -> None:
        """Partitions were revoked or lost: the member waits for its new assignment."""
        if self._waiting_since is None:
            self._waiting_since = now

    def assigned(self, now: float) -> None:
        """The group gave this member its assignment (possibly empty): a fresh start."""
        self._waiting_since = None
        self.fetched(now)

    def waited_too_long(self, now: float) -> float | None:
        """Seconds waited for an assignment, if longer than ``join_bound``; else None."""
        if self._waiting_since is None:
            return None
        waited = now - self._waiting_since
        return waited if waited > self.join_bound else None

    def should_look(self, now: float) -> bool:
        """Whether to look at the partitions' positions now (owned, quiet for a while)."""
        return self._waiting_since is None and now >= self._next_look

    def looked(self, now: float, lagging: dict[PartitionKey, int]) -> dict[PartitionKey, int]:
        """Note the partitions found lagging (key -> position); return those stuck."""
        self._next_look = now + self.stall_after / 2
        previous, self._lagging = self._lagging, lagging
        if now - self._quiet_since < self.stall_after:
            return {}
        return {key: position for key, position in lagging.items() if previous.get(key) == position}
