"""The chaos runner tells a stall a service said something about (it exited, or its
readiness went false) from a silent one, where every service went on saying it was ready."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import create_engine

from txmq.chaos.rig import Rig, Service
from txmq.chaos.runner import _Run
from txmq.chaos.scenario import Scenario


class FakeService:
    """A service that never credits anything, ready or not as told."""

    def __init__(self, *, ready: bool) -> None:
        self.is_ready = ready

    def revive_if_dead(self) -> bool:
        return False

    def ready(self) -> bool:
        return self.is_ready


def _run(tmp_path: Path, *, ready: bool) -> tuple[_Run, list[str]]:
    scenario = Scenario("r1", "rabbitmq://x", "sqlite://", str(tmp_path), 1.0, 7)
    said: list[str] = []
    services = {"worker": cast(Service, FakeService(ready=True))}
    services["consumer"] = cast(Service, FakeService(ready=ready))
    rig = Rig("rabbitmq", None, None, services)
    return _Run(scenario, rig, create_engine("sqlite://"), said.append), said


@pytest.mark.parametrize("ready", [True, False])
def test_a_stall_is_silent_only_while_every_service_says_it_is_ready(
    tmp_path: Path, ready: bool
) -> None:
    chaos, said = _run(tmp_path, ready=ready)

    assert chaos.recovery(0.0, bound=1.5) is None

    assert chaos.silent_stalls == (1 if ready else 0)
    assert any("silent stall" in line for line in said) is ready
