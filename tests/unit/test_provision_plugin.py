"""The pytest plugin's resolution, skip/fail policy and session lifecycle (no real brokers)."""

from __future__ import annotations

import pytest

from txmq.testing import provision
from txmq.testing.provision import state
from txmq.testing.provision.state import Running

pytest_plugins = ["pytester"]

URL_VARIABLES = (*provision.URL_ENV.values(), "TXMQ_REQUIRE_BROKERS", "TXMQ_TEST_BROKERS")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in URL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_missing_broker_skips_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_needs_kafka(kafka_url): pass")
    result = pytester.runpytest("--txmq-brokers=env", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no kafka for tests: TXMQ_TEST_KAFKA_URL is not set*"])


def test_a_missing_broker_fails_when_brokers_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXMQ_REQUIRE_BROKERS", "1")
    pytester.makepyfile("def test_needs_db(database_url): pass")
    result = pytester.runpytest("--txmq-brokers=env")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*TXMQ_TEST_DATABASE_URL is not set*TXMQ_REQUIRE_BROKERS*"])


def test_a_missing_mariadb_fails_when_brokers_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXMQ_REQUIRE_BROKERS", "1")
    pytester.makepyfile("def test_needs_mysql(mysql_url): pass")
    result = pytester.runpytest("--txmq-brokers=env")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*TXMQ_TEST_MYSQL_URL is not set*TXMQ_REQUIRE_BROKERS*"])


def test_a_skipped_broker_test_fails_when_brokers_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXMQ_REQUIRE_BROKERS", "1")
    monkeypatch.setenv("TXMQ_TEST_KAFKA_URL", "kafka://127.0.0.1:2")
    pytester.makepyfile(
        """
        import pytest

        def test_broker(kafka_url):
            pytest.skip("only on the other broker")

        def test_no_broker():
            pytest.skip("nothing to do with brokers")
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*a broker test was skipped while TXMQ_REQUIRE_BROKERS*"])


def test_env_urls_win_and_broker_url_covers_both_brokers(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXMQ_TEST_RABBITMQ_URL", "rabbitmq://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("TXMQ_TEST_KAFKA_URL", "kafka://127.0.0.1:2")
    pytester.makepyfile(
        """
        def test_each(broker_url, request):
            expected = {
                "rabbitmq": "rabbitmq://guest:guest@127.0.0.1:1/",
                "kafka": "kafka://127.0.0.1:2",
            }
            assert broker_url == expected[request.node.callspec.id]
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_each?rabbitmq? PASSED*", "*test_each?kafka? PASSED*"])


def test_brokers_are_started_only_when_asked_for_once_per_session_and_stopped_after(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[str, str]] = []
    stopped: list[Running] = []

    def fake_start(
        broker: provision.Broker, mode: str, ports: provision.Ports, owner: int | None = None
    ) -> Running:
        started.append((broker, mode))
        return Running(broker=broker, mode="process", url=f"{broker}://fake:{ports.postgres}")

    monkeypatch.setattr(provision, "start", fake_start)
    monkeypatch.setattr(provision, "stop", stopped.append)
    pytester.makepyfile(
        """
        def test_plain():
            pass

        def test_db_once(database_url):
            assert database_url.startswith("postgres://fake:")

        def test_db_twice(database_url):
            assert database_url.startswith("postgres://fake:")
        """
    )
    result = pytester.runpytest("--txmq-brokers=process")
    result.assert_outcomes(passed=3)
    assert started == [("postgres", "process")]
    assert [record.broker for record in stopped] == ["postgres"]


def test_a_failed_start_is_reported_once_per_broker(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[str] = []

    def failing_start(
        broker: provision.Broker, mode: str, ports: provision.Ports, owner: int | None = None
    ) -> Running:
        attempts.append(broker)
        raise provision.ProvisionError("no rabbitmq-server here (password=s3cret://u:s3cret@h)")

    monkeypatch.setattr(provision, "start", failing_start)
    pytester.makepyfile(
        """
        def test_one(rabbitmq_url): pass
        def test_two(rabbitmq_url): pass
        """
    )
    result = pytester.runpytest("--txmq-brokers=container", "-rs")
    result.assert_outcomes(skipped=2)
    assert attempts == ["rabbitmq"]
    result.stdout.fnmatch_lines(["*no rabbitmq for tests: no rabbitmq-server here*"])
    assert "u:s3cret@" not in result.stdout.str()


def test_report_header_names_the_mode(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest("--txmq-brokers=process")
    result.stdout.fnmatch_lines(["txmq brokers: process (skipping tests whose broker is missing)"])


@pytest.fixture
def state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = str(tmp_path_factory.mktemp("txmq-state"))
    monkeypatch.setenv("TXMQ_STATE_DIR", directory)
    return directory


def test_report_header_says_where_each_broker_will_come_from_without_secrets(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, state_dir: str
) -> None:
    monkeypatch.setenv("TXMQ_TEST_RABBITMQ_URL", "rabbitmq://guest:s3cret@127.0.0.1:1/")
    state.save(
        {
            "postgres": Running(
                broker="postgres",
                mode="container",
                url="postgresql+psycopg://postgres:s3cret@127.0.0.1:3/postgres",
                container_id="0123456789abcdef",
            )
        }
    )
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "txmq brokers: auto (skipping tests whose broker is missing)",
            "  rabbitmq: rabbitmq://guest:***@127.0.0.1:1/ (from $TXMQ_TEST_RABBITMQ_URL)",
            "  kafka: a container or processes started for this session when a test asks",
            "  postgres: postgresql+psycopg://postgres:***@127.0.0.1:3/postgres (from `txmq "
            f"brokers up`: container 0123456789ab, state file {state_dir}/state.json; "
            "reused if it still runs)",
        ]
    )
    assert "s3cret" not in result.stdout.str()


def test_report_header_in_env_mode_names_the_missing_variables(
    pytester: pytest.Pytester, state_dir: str
) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest("--txmq-brokers=env")
    result.stdout.fnmatch_lines(["  kafka: none (TXMQ_TEST_KAFKA_URL is not set)"])


def test_terminal_summary_says_which_brokers_were_used_and_from_where(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, state_dir: str
) -> None:
    """A broker reused from another session's state file is named, not silently used."""
    monkeypatch.setenv("TXMQ_TEST_KAFKA_URL", "kafka://127.0.0.1:2")
    reused = Running(
        broker="postgres", mode="process", url="postgres://u:s3cret@127.0.0.1:3/db", pgids=(42,)
    )
    monkeypatch.setattr(provision, "status", lambda: [(reused, True)])
    monkeypatch.setattr(
        provision,
        "start",
        lambda broker, mode, ports, owner=None: Running(
            broker=broker,
            mode="container",
            url="rabbitmq://g:s3cret@127.0.0.1:4/",
            container_id="c1",
        ),
    )
    monkeypatch.setattr(provision, "stop", lambda record: None)
    pytester.makepyfile(
        """
        def test_uses_all(kafka_url, database_url, rabbitmq_url):
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*- txmq brokers used -*",
            "kafka: kafka://127.0.0.1:2 ($TXMQ_TEST_KAFKA_URL)",
            "postgres: postgres://u:***@127.0.0.1:3/db (`txmq brokers up`: process group(s) 42, "
            f"state file {state_dir}/state.json)",
            "rabbitmq: rabbitmq://g:***@127.0.0.1:4/ (started for this session: container c1)",
        ]
    )
    assert "s3cret" not in result.stdout.str()


def test_no_summary_when_no_broker_was_used(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest()
    assert "txmq brokers used" not in result.stdout.str()
