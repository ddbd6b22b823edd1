"""A driver that is not installed: MissingDependency naming the extra, one line from the CLI.

The CLI runs in a subprocess in which the driver's module cannot be imported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import txmq
from txmq.database import open_engine
from txmq.testing.provision import state
from txmq.testing.provision.state import Running

SRC = Path(txmq.__file__).parent

#: Runs ``txmq`` with the modules named in argv[1] (comma-separated) unimportable.
_WITHOUT = textwrap.dedent(
    """
    import sys

    blocked = set(sys.argv[1].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = ["txmq", *sys.argv[2:]]
    from txmq.cli import main

    main()
    """
)


def txmq_without(
    modules: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT, modules, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_outbox_status_without_psycopg_names_the_postgres_extra() -> None:
    done = txmq_without(
        "psycopg",
        "outbox",
        "status",
        "--database",
        "postgresql+psycopg://app:secret@127.0.0.1:1/app",
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: the database URL postgresql+psycopg://app:***@127.0.0.1:1/app needs the "
        "psycopg driver: pip install 'txmq[postgres]'"
    ]


@pytest.mark.parametrize("args", [["--help"], ["outbox", "status"], ["brokers", "status"]])
def test_the_command_line_without_typer_names_the_cli_extra(args: list[str]) -> None:
    done = txmq_without("typer", *args)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "txmq: the command line needs typer: pip install 'txmq[cli]'"
    ]


def test_open_engine_names_the_module_of_a_driver_without_an_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(txmq.MissingDependency) as error:
        open_engine("postgresql+asyncpg://app@127.0.0.1:1/app")
    assert str(error.value).endswith("needs the asyncpg driver: pip install asyncpg")


@pytest.mark.parametrize("command", ["status", "down"])
def test_brokers_commands_without_docker_name_the_testing_extra(
    command: str, tmp_path: Path
) -> None:
    record = Running(
        broker="rabbitmq",
        mode="container",
        url="rabbitmq://guest:guest@127.0.0.1:1/",
        container_id="0123456789ab",
        image="rabbitmq:4",
    )
    state.save({"rabbitmq": record}, tmp_path / state.STATE_FILE)
    done = txmq_without("docker", "brokers", command, env={"TXMQ_STATE_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: container brokers need the docker SDK: pip install 'txmq[testing]'"
    ]


#: ``pip install txmq[extra]`` without quotes: zsh and others expand the brackets.
_UNQUOTED_HINT = re.compile(r"pip install (?!['\"])[^\s`]*\[")


def test_every_install_hint_in_the_sources_quotes_the_extra() -> None:
    unquoted = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _UNQUOTED_HINT.search(line)
    ]
    assert unquoted == []
