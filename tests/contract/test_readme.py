"""The README's Python examples run as written, in order, on both brokers.

Every fenced ``python`` block of README.md is one step of a single program. The only
change made before running it is the addresses: the README's example broker and database
URLs are replaced by the test brokers' and by a database created for this run, so the
examples are the code a user copies, not a variant of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytestmark = [pytest.mark.broker, pytest.mark.database, pytest.mark.slow]

README = Path(__file__).parents[2] / "README.md"
#: The addresses the README's examples use; each is replaced by a test address.
README_BROKER_URL = "rabbitmq://guest:guest@127.0.0.1:5672/"
README_DATABASE_URL = "postgresql+psycopg://app:secret@127.0.0.1:5432/shop"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_program() -> str:
    blocks = _BLOCK.findall(README.read_text())
    assert blocks, "README.md has no python examples"
    return "\n\n".join(blocks)


def test_the_readme_names_the_addresses_it_is_run_with() -> None:
    program = readme_program()
    assert README_BROKER_URL in program
    assert README_DATABASE_URL in program


@pytest.fixture
def database(database_url: str) -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server, dropped afterwards."""
    name = f"readme_{uuid.uuid4().hex[:10]}"
    server = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with server.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        server.dispose()


def test_readme_examples_run_as_written(broker_url: str, database: str, tmp_path: Path) -> None:
    program = readme_program()
    program = program.replace(README_BROKER_URL, broker_url)
    program = program.replace(README_DATABASE_URL, database)
    script = tmp_path / "readme.py"
    script.write_text(program)
    environment = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    finished = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=environment,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-6000:]
