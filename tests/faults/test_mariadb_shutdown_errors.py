"""What a real MariaDB shutdown raises, to a statement running through it and to one sent
on a connection that was open before it, is an outage (the loops back off and resume).
The server answers both with 2013 on a connection SQLAlchemy marks invalidated; 1053
(server shutdown in progress) and the rest are recognised by error number as well."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, text

from txmq.database_errors import is_lock_conflict, is_outage
from txmq.testing import wait_for
from txmq.testing.provision.processes import RestartableMariaDB

pytestmark = [pytest.mark.database, pytest.mark.slow]


def test_a_statement_running_through_a_shutdown_and_one_sent_after_raise_outages(
    private_mariadb: RestartableMariaDB,
) -> None:
    engine = create_engine(private_mariadb.url, pool_size=2, pool_pre_ping=False)
    try:
        running, idle = engine.connect(), engine.connect()
        idle.execute(text("SELECT 1"))
        raised: list[BaseException] = []

        def sleep_through_shutdown() -> None:
            try:
                running.execute(text("SELECT SLEEP(60)"))
            except Exception as exc:  # handed to the test
                raised.append(exc)

        thread = threading.Thread(target=sleep_through_shutdown, daemon=True)
        thread.start()
        with engine.connect() as watcher:
            assert wait_for(
                lambda: (
                    watcher.execute(
                        text(
                            "SELECT COUNT(*) FROM information_schema.processlist"
                            " WHERE info LIKE 'SELECT SLEEP%'"
                        )
                    ).scalar_one()
                    == 1
                ),
                timeout=30,
            )
        private_mariadb.stop_server()
        thread.join(60)
        assert raised, "the running statement did not fail"
        with pytest.raises(Exception) as after:
            idle.execute(text("SELECT 1"))
        for error in (raised[0], after.value):
            assert is_outage(error), repr(error)
            assert not is_lock_conflict(error)
    finally:
        private_mariadb.start_server()
        engine.dispose()
