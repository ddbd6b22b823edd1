"""``txmq chaos``: the bank-transfer workload under faults, judged from its recorded history.

A run starts (or is given) a broker and a PostgreSQL, runs three service processes (the
bank, service A, producing transfers by every producer mode; ``txmq worker`` relaying them;
``txmq consume`` crediting them through an inbox), injects the schedule's faults one after
another, lets the backlog drain, and checks the invariants: nothing lost, nothing applied
twice, nothing from a rolled-back transaction delivered, money conserved, the DLQ holding
exactly what must fail, per-key order, no silent stall.

Example:
    >>> from txmq.chaos import run
    >>> run("rabbitmq", None, schedule="short", seed=7, json_path="chaos.json")  # doctest: +SKIP
    0
"""

from __future__ import annotations

from txmq.chaos.runner import run

__all__ = ["run"]
