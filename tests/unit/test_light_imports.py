"""``import txmq`` and ``txmq --help`` load no test provisioning, container SDK, broker
driver or (for the library) command-line toolkit: each runs in a fresh interpreter, which
then lists the modules it holds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

#: Top-level packages of the provisioning and of the drivers, none of which the library
#: or the command line may import before they are used.
HEAVY = ("txmq.testing.provision", "docker", "testcontainers", "pika", "confluent_kafka")

#: Runs ``txmq`` with argv[1:] in this interpreter, then prints the modules it loaded.
_RUN_CLI = textwrap.dedent(
    """
    import json, sys

    sys.argv = ["txmq", *sys.argv[1:]]
    from txmq.cli import main

    try:
        main()
    except SystemExit:
        pass
    print(json.dumps(sorted(sys.modules)))
    """
)


def loaded(code: str, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


def test_import_txmq_loads_neither_provisioning_nor_drivers_nor_typer() -> None:
    modules = loaded("import json, sys, txmq; print(json.dumps(sorted(sys.modules)))")
    assert "txmq" in modules
    assert among(modules, (*HEAVY, "typer", "rich")) == []


def test_import_txmq_leaves_prometheus_client_until_a_metric_is_used() -> None:
    untouched = loaded("import json, sys, txmq; print(json.dumps(sorted(sys.modules)))")
    assert among(untouched, ("prometheus_client",)) == []
    counted = loaded(
        "import json, sys, txmq.telemetry as t; t.STAGED.labels('g', 'outbox').inc(); "
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert "prometheus_client" in counted


@pytest.mark.parametrize(
    "command",
    [
        ["--help"],
        ["outbox", "--help"],
        ["dlq", "--help"],
        ["schema", "--help"],
        ["unroutable", "--help"],
        ["worker", "--help"],
        ["consume", "--help"],
        ["doctor", "--help"],
        ["--version"],
    ],
)
def test_the_command_line_loads_provisioning_only_for_txmq_brokers(command: list[str]) -> None:
    modules = loaded(_RUN_CLI, *command)
    assert "txmq.cli.root" in modules
    assert among(modules, HEAVY) == []


def test_txmq_brokers_does_load_the_provisioning() -> None:
    modules = loaded(_RUN_CLI, "brokers", "--help")
    assert "txmq.testing.provision" in modules
    assert "txmq.cli.brokers" in modules
