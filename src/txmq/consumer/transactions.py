"""The DB transaction a handler runs in: one transaction per message or batch.

By default each worker keeps one connection of the engine and one ``Session`` bound to it
for its whole life, and closes the session (forgetting the handler's objects) after each
transaction: checking a connection out of the pool and building a session per message
costs more than the INSERT + COMMIT of the inbox row on a fast database. With an
application ``session_factory`` the session comes from it instead (``with factory() as
session, session.begin()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from txmq.database import require_sync_engine
from txmq.errors import ConfigurationError
from txmq.sql.hooks import committed, discarded


class Transactions:
    """Opens handler transactions for one worker thread (not thread-safe)."""

    def __init__(self, engine: Engine, session_factory: Callable[[], Session] | None) -> None:
        self._engine = engine
        self._factory = session_factory
        self._connection: Connection | None = None
        self._session: Session | None = None

    @contextmanager
    def begin(self) -> Iterator[tuple[Session, Connection]]:
        """A session and its connection inside a new transaction; committed on normal exit,
        else rolled back. txmq's own statements (the inbox) go straight to the connection,
        skipping the ORM's per-statement work.

        Raises:
            ConfigurationError: the ``session_factory`` made an asyncio session (handlers
                run in worker threads, on synchronous sessions only).
        """
        if self._factory is not None:
            with _synchronous(self._factory()) as session:
                try:
                    with session.begin():
                        yield session, session.connection()
                except BaseException:
                    discarded(session)
                    raise
                committed(session)
            return
        if self._connection is None or self._session is None:
            self._connection = self._engine.connect()
            self._session = Session(bind=self._connection)
        connection, session = self._connection, self._session
        try:
            with connection.begin():
                # The session joins the connection's transaction; the handler's pending ORM
                # objects are flushed before the transaction commits.
                try:
                    yield session, connection
                    session.flush()
                finally:
                    # The next message starts from an empty session; the connection stays.
                    # A session the handler never used holds nothing (its first use begins
                    # its transaction), and skipping its close is a few percent per message.
                    if session.in_transaction() or session.identity_map:
                        session.close()
        except BaseException:
            discarded(session)
            # The connection may be broken; a fresh one is cheap next to a failure.
            self.close()
            raise
        committed(session)

    def close(self) -> None:
        self._session = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            # Closing a broken connection may fail too; there is nothing left to release.
            with contextlib.suppress(Exception):
                connection.close()


def _synchronous(session: object) -> Session:
    """``session`` if it is a synchronous ``Session`` on a synchronous engine."""
    if not isinstance(session, Session):
        raise ConfigurationError(
            f"the consumer's session_factory made a {type(session).__name__}: handlers run in "
            "worker threads and need a synchronous Session (e.g. sessionmaker(engine))"
        )
    require_sync_engine(session.get_bind(), "the consumer's session_factory")
    return session
