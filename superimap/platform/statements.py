"""Cursors for the hot plain-SQL paths (the engine's group commit, the worker's claim and
record): on PostgreSQL their statements are prepared once per connection and then only
bound and run (design.md 5.10, "Prepared statements").

Django's psycopg 3 backend binds parameters on the client (ClientCursor: the values are
quoted into the text, sent as one simple query) and turns psycopg's prepared statements off
(``prepare_threshold=None``, for connection poolers), so PostgreSQL parsed and analysed
every statement anew, 4-5 per group commit and per claim, and lexed every payload as a
quoted literal. ``statement_cursor()`` gives the same Django cursor wrapper (errors
wrapped, queries logged in DEBUG) around a server-binding psycopg cursor: the values go as
parameters, and a statement text seen PREPARE_THRESHOLD times on the connection is
prepared (psycopg's cache, up to 100 per connection; an executemany prepares at once). The
callers keep their texts stable on PostgreSQL (``= ANY(%s::bigint[])``, unnest() of
arrays for many rows): one text per statement, whatever the number of rows.

Each run is planned with its values all the same (settings.py: plan_cache_mode): a
generic plan made on a nearly empty table's statistics would outlive the table's growth.

Only these cursors prepare: Django's own (the ORM, the admin) stay client-side, so a
statement text never depends on the values' types outside these paths. Behind a
connection pooler in transaction mode, use PgBouncer 1.21+ with max_prepared_statements.
SQLite: Django's cursor (sqlite3 caches its prepared
statements by text already).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

# psycopg's default: five runs of a text on a connection before it is prepared (a text
# run once, a DDL or a rare statement, costs no PREPARE round trip).
PREPARE_THRESHOLD = 5


@contextmanager
def statement_cursor() -> Iterator:
    """A cursor of the default connection; on PostgreSQL binding on the server and
    preparing the texts it runs often."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield cursor
        return
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = PREPARE_THRESHOLD
    with connection.wrap_database_errors:
        cursor = connection._prepare_cursor(ServerBindingCursor(raw))
    with cursor:
        yield cursor


def any_of(column: str, values, sql_type: str = "bigint") -> tuple[str, list]:
    """``column`` is one of ``values``: PostgreSQL ``column = ANY(%s::bigint[])`` with one
    array (one text for any count), SQLite ``column IN (%s, ...)``.

    The cast is the column's type: psycopg sends a list of ints as the smallest array type
    that holds them (int2[], int4[], int8[]), and each type is a prepared statement of its
    own."""
    if connection.vendor == "postgresql":
        return f"{column} = ANY(%s::{sql_type}[])", [list(values)]
    values = list(values)
    return f"{column} IN ({', '.join(['%s'] * len(values))})", values


def unnest_insert(table: str, columns: tuple[str, ...], types: tuple[str, ...]) -> str:
    """PostgreSQL: INSERT of many rows as one statement of one text, each column an array
    parameter (``types``: the columns' SQL types): ``[list(c) for c in zip(*rows)]``."""
    arrays = ", ".join(f"%s::{sql_type}[]" for sql_type in types)
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})"


def arrays(rows) -> list[list]:
    """Rows (tuples of equal length) as one list per column: unnest_insert's parameters."""
    return [list(column) for column in zip(*rows, strict=True)]


def column_types(model, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The PostgreSQL types of ``model``'s ``columns`` (by column name), for unnest_insert.
    Without a varchar's length: a cast to varchar(n) would cut a longer value where the
    column refuses it (as a plain INSERT does)."""
    by_column = {field.column: field for field in model._meta.concrete_fields}
    return tuple(
        re.sub(r"^varchar\(\d+\)$", "varchar", by_column[column].db_type(connection))
        for column in columns
    )
