"""When a quiet Kafka member counts as wedged (the decision, without a broker)."""

from __future__ import annotations

import pytest

from txmq.adapters.kafka.settings import KafkaSettings
from txmq.adapters.kafka.stall import StallWatch
from txmq.adapters.registry import parse_broker_url
from txmq.errors import InvalidURL

T = ("orders", 0)
U = ("orders", 1)


def _owning(stall_after: float = 10.0, join_bound: float = 100.0) -> StallWatch:
    watch = StallWatch(stall_after=stall_after, join_bound=join_bound, now=0.0)
    watch.assigned(0.0)
    return watch


def test_a_partition_lagging_at_one_position_on_two_looks_after_the_quiet_period_is_stuck() -> None:
    watch = _owning()
    assert not watch.should_look(4.9)
    assert watch.should_look(5.0)
    assert watch.looked(5.0, {T: 7}) == {}  # seen once, and quiet for 5 s only
    assert not watch.should_look(9.9)
    assert watch.looked(10.0, {T: 7, U: 3}) == {T: 7}  # U was not lagging before


def test_a_partition_that_moved_or_caught_up_is_not_stuck() -> None:
    watch = _owning()
    watch.looked(5.0, {T: 7, U: 3})
    assert watch.looked(10.0, {T: 8}) == {}  # T moved (control records skipped), U caught up


def test_anything_fetched_starts_the_quiet_period_again() -> None:
    watch = _owning()
    watch.looked(5.0, {T: 7})
    watch.fetched(6.0)
    assert not watch.should_look(10.0)
    assert watch.looked(11.0, {T: 7}) == {}
    assert watch.looked(16.0, {T: 7}) == {T: 7}


def test_no_look_while_the_member_waits_for_its_partitions() -> None:
    watch = StallWatch(stall_after=10.0, join_bound=100.0, now=0.0)
    assert not watch.should_look(50.0)  # subscribed, not yet assigned
    watch.assigned(50.0)
    watch.looked(55.0, {T: 7})
    watch.rebalancing(58.0)
    assert not watch.should_look(60.0)
    watch.assigned(61.0)  # a new assignment: what was seen before no longer counts
    assert watch.looked(66.0, {T: 7}) == {}
    assert watch.looked(71.0, {T: 7}) == {T: 7}


def test_waiting_for_partitions_longer_than_the_bound_is_stuck() -> None:
    watch = StallWatch(stall_after=10.0, join_bound=100.0, now=0.0)
    assert watch.waited_too_long(100.0) is None
    assert watch.waited_too_long(100.5) == 100.5
    watch.assigned(101.0)
    assert watch.waited_too_long(500.0) is None
    watch.rebalancing(500.0)
    watch.rebalancing(550.0)  # a second callback of the same rebalance keeps the first time
    assert watch.waited_too_long(600.0) is None
    assert watch.waited_too_long(601.0) == 101.0


def test_the_stall_timeout_comes_from_the_url_and_must_be_positive() -> None:
    default, tuned = (parse_broker_url(u) for u in ("kafka://h", "kafka://h?stall_timeout=2.5"))
    assert isinstance(default, KafkaSettings)
    assert isinstance(tuned, KafkaSettings)
    assert (default.stall_timeout, tuned.stall_timeout) == (60.0, 2.5)
    assert "stall_timeout" not in tuned.options  # txmq's own: never handed to librdkafka
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(InvalidURL):
            parse_broker_url(f"kafka://h?stall_timeout={bad}")
