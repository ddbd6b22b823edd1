"""When two SQLAlchemy URLs name one database, whatever their drivers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import make_url

from txmq.database import same_database


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("postgresql+psycopg://app:x@db/shop", "postgresql+asyncpg://app:y@db:5432/shop"),
        ("postgresql://app@db/shop?sslmode=require", "postgresql+psycopg://app@db/shop"),
        ("mysql+pymysql://app@db/shop", "mysql+aiomysql://app@db:3306/shop"),
    ],
)
def test_drivers_passwords_and_default_ports_do_not_make_another_database(a: str, b: str) -> None:
    assert same_database(make_url(a), make_url(b))


@pytest.mark.parametrize(
    "other",
    [
        "postgresql+asyncpg://app@db/other",
        "postgresql+asyncpg://admin@db/shop",
        "postgresql+asyncpg://app@db:5433/shop",
        "postgresql+asyncpg://app@replica/shop",
        "mysql+pymysql://app@db/shop",
    ],
)
def test_database_user_host_port_or_backend_make_another_database(other: str) -> None:
    assert not same_database(make_url("postgresql+psycopg://app@db/shop"), make_url(other))


def test_sqlite_files_are_compared_by_their_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative, absolute = (
        make_url("sqlite:///app.db"),
        make_url(f"sqlite+aiosqlite:///{tmp_path}/app.db"),
    )
    assert same_database(relative, absolute)
    assert not same_database(relative, make_url(f"sqlite:///{tmp_path}/other.db"))
