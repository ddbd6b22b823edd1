"""Callbacks left by a handler's transaction run after its commit, once, and never after a
rollback: with the consumer's own session and with an application's session_factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from txmq.consumer.transactions import Transactions
from txmq.sql.hooks import after_commit


@pytest.fixture(params=["own session", "session_factory"])
def transactions(request: pytest.FixtureRequest, tmp_path: Path) -> Transactions:
    engine = create_engine(f"sqlite:///{tmp_path / 'hooks.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER)"))
    factory = sessionmaker(engine) if request.param == "session_factory" else None
    return Transactions(engine, factory)


def _insert(session: Session, n: int) -> None:
    session.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": n})


def test_callbacks_run_after_the_commit_in_order(transactions: Transactions) -> None:
    seen: list[str] = []
    with transactions.begin() as (session, _):
        _insert(session, 1)
        after_commit(session, lambda: seen.append("first"))
        after_commit(session, lambda: seen.append("second"))
        assert seen == []
    assert seen == ["first", "second"]
    with transactions.begin() as (session, _):  # the next transaction starts with none
        pass
    assert seen == ["first", "second"]


def test_a_rolled_back_transaction_leaves_nothing_to_run(transactions: Transactions) -> None:
    seen: list[str] = []

    def handler_fails() -> None:
        with transactions.begin() as (session, _):
            after_commit(session, lambda: seen.append("rolled back"))
            raise RuntimeError("the handler failed")

    with pytest.raises(RuntimeError):
        handler_fails()
    with transactions.begin() as (session, _):
        after_commit(session, lambda: seen.append("committed"))
    assert seen == ["committed"]


def test_a_failing_callback_does_not_stop_the_others(
    transactions: Transactions, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def broken() -> None:
        raise ValueError("a metric backend hiccup")

    with transactions.begin() as (session, _):
        after_commit(session, broken)
        after_commit(session, lambda: seen.append("after"))
    assert seen == ["after"]
    assert "a callback after the commit failed" in caplog.text


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "rows"
    n: Mapped[int] = mapped_column(primary_key=True)


@pytest.mark.parametrize("ends", ["as txmq commits", "with the handler's own commit"])
def test_each_transaction_starts_from_an_empty_session(tmp_path: Path, ends: str) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'orm.db'}")
    _Base.metadata.create_all(engine)
    transactions = Transactions(engine, None)
    row = _Row(n=1)  # held: the session's identity map holds its objects weakly
    with transactions.begin() as (session, _):
        session.add(row)
        if ends != "as txmq commits":
            session.commit()  # joins txmq's transaction: the objects stay in the session
    with transactions.begin() as (session, _):
        assert not session.identity_map
        assert not session.new
        loaded = session.get(_Row, 1)
        assert loaded is not None
        assert loaded is not row
    with transactions.begin() as (session, _):
        assert not session.identity_map  # ``loaded`` is still held
    with transactions.begin() as (session, _):  # one the handler did not use
        pass
    with transactions.begin() as (session, _):
        assert not session.identity_map
        assert not session.in_transaction()
    assert loaded.n == 1
