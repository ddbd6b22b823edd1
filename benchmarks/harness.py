"""Figures, rounds and targets: how every benchmark is repeated, alternated and judged.

A *figure* is one measured quantity (``relay.rabbitmq.history``: msg/s), sampled once per
round. Rounds run the txmq measurement and its baseline one after the other, starting
with a different one each round, so that both see the same machine load; a figure's
ratio to its baseline is taken per round (paired), then summarised like the figure.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Better = Literal["higher", "lower"]


@dataclass(frozen=True, slots=True)
class Target:
    """What the issue asks of a figure: on its ratio to the baseline, or on its value.

    ``bound`` is a minimum when the figure is better higher (throughput) and a maximum when
    it is better lower (latency, cost). ``on`` says whether the bound applies to the
    median ratio or to the median value.
    """

    bound: float
    on: Literal["ratio", "value"]

    def text(self, better: Better, unit: str) -> str:
        sign = ">=" if better == "higher" else "<="
        return f"{sign} {self.bound:g}x" if self.on == "ratio" else f"{sign} {self.bound:g} {unit}"

    def met(self, better: Better, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.bound if better == "higher" else value <= self.bound


@dataclass(slots=True)
class Figure:
    """One measured quantity and its samples (one per round)."""

    name: str
    label: str
    unit: str
    better: Better = "higher"
    baseline: str | None = None
    target: Target | None = None
    samples: list[float] = field(default_factory=list)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


class Results:
    """Every figure of a run, in the order they were defined."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}

    def figure(self, name: str, label: str, unit: str, **options: Any) -> Figure:
        if name not in self.figures:
            self.figures[name] = Figure(name, label, unit, **options)
        return self.figures[name]

    def add(self, name: str, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"{name}: not a number: {value}")
        self.figures[name].samples.append(value)

    def ratios(self, figure: Figure) -> list[float]:
        """Per-round ratios of ``figure`` to its baseline (paired by round)."""
        if figure.baseline is None or figure.baseline not in self.figures:
            return []
        base = self.figures[figure.baseline].samples
        return [ours / theirs for ours, theirs in zip(figure.samples, base, strict=False) if theirs]

    def report(self) -> dict[str, dict[str, Any]]:
        """Each figure: its values, ratio to its baseline, and target met or missed."""
        out: dict[str, dict[str, Any]] = {}
        for name, figure in self.figures.items():
            if not figure.samples:
                continue
            entry: dict[str, Any] = {
                "label": figure.label,
                "unit": figure.unit,
                "better": figure.better,
                **summary(figure.samples),
                "samples": figure.samples,
                "baseline": figure.baseline,
            }
            ratios = self.ratios(figure)
            entry["ratio"] = summary(ratios) if ratios else None
            if figure.target is not None:
                judged = (
                    entry["ratio"]["median"] if figure.target.on == "ratio" and ratios else None
                )
                if figure.target.on == "value":
                    judged = entry["median"]
                entry["target"] = {
                    "text": figure.target.text(figure.better, figure.unit),
                    "bound": figure.target.bound,
                    "on": figure.target.on,
                    "met": figure.target.met(figure.better, judged),
                }
            else:
                entry["target"] = None
            out[name] = entry
        return out


def alternate(
    rounds: int, ways: Mapping[str, Callable[[], Mapping[str, float]]], results: Results
) -> None:
    """Run every way once per round, each round starting one way further along.

    Each way returns the figures it measured (name -> value); they are added to
    ``results``. Progress goes to stderr.
    """
    names = list(ways)
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.monotonic()
            measured = ways[name]()
            for figure, value in measured.items():
                results.add(figure, value)
            shown = ", ".join(
                f"{f} {v:,.4g} {results.figures[f].unit}" for f, v in measured.items()
            )
            print(
                f"  round {round_number + 1}/{rounds} {name} ({time.monotonic() - started:.1f} s):"
                f" {shown}",
                file=sys.stderr,
                flush=True,
            )


class Rate(NamedTuple):
    """Messages per second, and the process CPU seconds spent per 1,000 of them."""

    per_second: float
    cpu_per_1000: float


class CpuClock:
    """Wall-clock and process CPU time (every thread, librdkafka's too) since creation."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self._wall, time.process_time() - self._cpu

    def rate(self, count: int) -> Rate:
        """The rate of ``count`` messages handled since creation."""
        wall, cpu = self.read()
        return Rate(count / wall, cpu / count * 1000)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (``fraction`` 0.99 for p99)."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` every millisecond until true (a benchmark's finish line).

    Raises:
        TimeoutError: it did not become true within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark did not finish within {timeout:g} s: {what}")
        time.sleep(0.001)
