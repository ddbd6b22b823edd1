"""``txmq saga``: operators list, show, retry and abort sagas without writing code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine
from typer.testing import CliRunner

from txmq.cli.root import app
from txmq.saga import SagaInstance, SagaState, SagaStore, make_saga_event_table, make_saga_table

runner = CliRunner()


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sagas.db'}"


@pytest.fixture
def store(database: str) -> SagaStore:
    engine: Engine = create_engine(database)
    metadata = MetaData()
    table = make_saga_table(metadata)
    make_saga_event_table(metadata)
    metadata.create_all(engine)
    return SagaStore(engine, table)


def add(store: SagaStore, saga_id: str, state: SagaState, op: str = "action") -> None:
    instance = SagaInstance(
        id=saga_id,
        saga_name="order",
        state=state,
        step_index=1,
        op=op,
        attempt=3,
        deadline=None,
        data={"order": 1},
        last_error="refund timed out" if state is SagaState.PARKED else None,
    )
    instance.note("payment", op, "started")
    with store.engine.begin() as connection:
        store.insert(connection, instance)


def saga(*args: str, database: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["saga", *args, "--database", database])
    return result.exit_code, result.stdout, result.stderr


def test_list_shows_sagas_by_state_in_text_and_json(store: SagaStore, database: str) -> None:
    add(store, "s-1", SagaState.RUNNING)
    add(store, "s-2", SagaState.PARKED, op="compensation")
    code, out, _ = saga("list", "--state", "PARKED", database=database)
    assert code == 0
    assert out.startswith("s-2  order  PARKED  step=1 compensation attempt=3")
    assert "refund timed out" in out
    code, out, _ = saga("list", "--json", database=database)
    assert sorted(json.loads(line)["id"] for line in out.splitlines()) == ["s-1", "s-2"]
    code, out, err = saga("list", "--state", "FAILED", database=database)
    assert (code, out, err.strip()) == (0, "", "no sagas")


def test_show_prints_an_instance_with_its_history(store: SagaStore, database: str) -> None:
    add(store, "s-1", SagaState.RUNNING)
    code, out, _ = saga("show", "s-1", "--json", database=database)
    assert code == 0
    shown = json.loads(out)
    assert (shown["state"], shown["data"], shown["history"][0]["event"]) == (
        "RUNNING",
        {"order": 1},
        "started",
    )
    code, out, _ = saga("show", "s-1", database=database)
    assert "payment action: started" in out


def test_show_reconstructs_a_choreographed_saga_from_its_events(
    store: SagaStore, database: str
) -> None:
    events = make_saga_event_table(MetaData())
    with store.engine.begin() as connection:
        for n, topic in enumerate(("ORDER_CREATED", "BILLED_ORDER")):
            connection.execute(
                events.insert().values(
                    saga_id="c-1",
                    message_id=f"m{n}",
                    saga_name="order",
                    topic=topic,
                    data="{}",
                    seen_at=datetime.now(UTC),
                )
            )
    code, out, _ = saga("show", "c-1", "--json", database=database)
    assert code == 0
    assert [e["topic"] for e in json.loads(out)["events"]] == ["ORDER_CREATED", "BILLED_ORDER"]


def test_retry_and_abort_hand_the_saga_to_the_orchestrator(store: SagaStore, database: str) -> None:
    add(store, "parked", SagaState.PARKED, op="compensation")
    add(store, "running", SagaState.RUNNING)
    code, out, _ = saga("retry", "parked", "--json", database=database)
    assert code == 0
    retried = json.loads(out)
    assert (retried["state"], retried["attempt"], retried["nudged_at"] is not None) == (
        "COMPENSATING",
        0,
        True,
    )
    code, out, _ = saga("abort", "running", "--json", database=database)
    assert (code, json.loads(out)["state"], json.loads(out)["op"]) == (0, "COMPENSATING", "abort")


def test_an_unknown_or_ineligible_saga_is_one_clear_error(store: SagaStore, database: str) -> None:
    add(store, "running", SagaState.RUNNING)
    assert saga("show", "nope", database=database)[0::2] == (1, "error: no saga 'nope'\n")
    code, _, err = saga("retry", "running", database=database)
    assert (code, err) == (1, "error: no PARKED saga 'running'\n")
