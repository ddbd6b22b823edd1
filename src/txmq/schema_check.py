"""How a database differs from the tables txmq expects: what ``txmq schema check`` prints.

Compared: each table's presence, its columns (presence and nullability), primary key,
unique constraints and named indexes (their columns), and on PostgreSQL the outbox's NOTIFY
trigger (:func:`txmq.sql.tables.notify_ddl`). Not compared: column types, which
dialects report differently from how they were declared, and the WHERE clause of a
partial index.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import Connection, Engine, Table, UniqueConstraint, inspect, text

from txmq.sql.tables import OutboxTables, each_table


def schema_differences(engine: Engine, tables: Iterable[Table | OutboxTables]) -> list[str]:
    """One line per way the database on ``engine`` differs from ``tables``; empty if none.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or inspected.
    """
    tables = list(tables)
    expected = each_table(tables)
    outboxes = {item.records.name for item in tables if isinstance(item, OutboxTables)}
    with engine.connect() as connection:
        return [
            line
            for table in expected
            for line in _table_differences(connection, table, notify=table.name in outboxes)
        ]


def _table_differences(connection: Connection, table: Table, *, notify: bool) -> Iterator[str]:
    inspector = inspect(connection)
    if not inspector.has_table(table.name, schema=table.schema):
        yield f"{table.fullname}: missing table"
        return
    columns = {c["name"]: c for c in inspector.get_columns(table.name, schema=table.schema)}
    for column in table.columns:
        found = columns.get(column.name)
        if found is None:
            yield f"{table.fullname}: missing column {column.name}"
        elif not column.primary_key and bool(found["nullable"]) != column.nullable:
            wanted = "NULL" if column.nullable else "NOT NULL"
            yield f"{table.fullname}: column {column.name} should be {wanted}"
    primary_key = inspector.get_pk_constraint(table.name, schema=table.schema)
    wanted_key = [c.name for c in table.primary_key.columns]
    if list(primary_key["constrained_columns"]) != wanted_key:
        yield f"{table.fullname}: primary key should be ({', '.join(wanted_key)})"
    # A unique constraint may be reported as a unique index instead (SQLite, MySQL).
    indexes = inspector.get_indexes(table.name, schema=table.schema)
    unique = {
        tuple(u["column_names"])
        for u in inspector.get_unique_constraints(table.name, schema=table.schema)
    } | {tuple(i["column_names"]) for i in indexes if i["unique"]}
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint):
            unique_columns = tuple(c.name for c in constraint.columns)
            if unique_columns not in unique:
                yield (
                    f"{table.fullname}: missing unique constraint on ({', '.join(unique_columns)})"
                )
    found_indexes = {i["name"]: list(i["column_names"]) for i in indexes}
    for index in sorted(table.indexes, key=lambda i: str(i.name)):
        names: list[str | None] = [c.name for c in index.columns]
        listed = ", ".join(str(n) for n in names)
        if index.name not in found_indexes:
            yield f"{table.fullname}: missing index {index.name} ({listed})"
        elif found_indexes[index.name] != names:
            yield f"{table.fullname}: index {index.name} should be on ({listed})"
    if notify and connection.dialect.name == "postgresql":
        yield from _trigger_differences(connection, table)


def _trigger_differences(connection: Connection, table: Table) -> Iterator[str]:
    found = set(
        connection.execute(
            text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:table) "
                "AND NOT tgisinternal"
            ),
            {"table": table.fullname},
        ).scalars()
    )
    for operation in ("insert", "update"):
        name = f"{table.name}_{operation}_notify"
        if name not in found:
            yield f"{table.fullname}: missing trigger {name} (NOTIFY of READY rows)"
