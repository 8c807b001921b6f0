"""Migration delivery 0007 moves every payload still held into delivery_payload, by id
range in batches (ids further apart than a batch included), gives a purged delivery no
row, prints its progress, and drops Delivery's payload column."""

from __future__ import annotations

import json
import sqlite3

import psycopg

from tests.helpers.processes import run_cli, superimap_env

# (id, payload, purged): ids spread over several of the migration's batches (20,000 ids).
ROWS = [
    (1, {"sha1": "a" * 40, "rfc822": "Subject: one\r\n\r\nhi"}, False),
    (2, {}, True),
    (20_000, {"sha1": "b" * 40, "text": "x" * 3000}, False),
    (20_001, {"event": "user_connected", "user_tag": "t"}, False),
    (75_000, {"sha1": "c" * 40, "nested": {"a": [1, 2, None]}}, False),
]

INSERT = (
    "INSERT INTO delivery_delivery (id, event_id, kind, partner_id, message_id, dedup_key, "
    "payload, status, attempts, max_attempts, failures, next_attempt_at, claimed_by, "
    "last_error, created_at, payload_purged_at, backfill) VALUES "
    "({m}, {m}, 'new_mail', {m}, '', '', {m}, 'delivered', 1, 7, 0, {m}, '', '', {m}, {m}, {f})"
)


PARTNER = (
    "from superimap.partners.models import Partner; print(Partner.objects.create(name='p').id)"
)


def _insert_old_rows(database_url: str, partner_id: int) -> None:
    """Rows as the schema before 0007 held them."""
    when = "2026-12-01 10:00:00"
    sqlite = database_url.startswith("sqlite:///")
    for id_, payload, purged in ROWS:
        values = [id_, f"{id_:032x}", partner_id, json.dumps(payload), when, when]
        values.append(when if purged else None)
        if sqlite:
            with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
                db.execute(INSERT.format(m="?", f=0), values)
        else:
            with psycopg.connect(database_url, autocommit=True) as db:
                db.execute(INSERT.format(m="%s", f="FALSE"), values)


def _read(database_url: str, sql: str) -> list[tuple]:
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as db:
            return db.execute(sql).fetchall()
    with psycopg.connect(database_url, autocommit=True) as db:
        return db.execute(sql).fetchall()


def test_it_moves_every_payload_to_its_own_table_and_drops_the_column(database_url, tmp_path):
    env = superimap_env(database_url, tmp_path / "var")
    run_cli(env, "manage", "migrate", "delivery", "0006")
    run_cli(env, "manage", "migrate", "partners")
    partner_id = int(run_cli(env, "manage", "shell", "-c", PARTNER).split()[-1])
    _insert_old_rows(database_url, partner_id)
    out = run_cli(env, "manage", "migrate")
    assert "delivery_payload: copying payloads of ids 1-75000" in out
    assert "delivery_payload: 4 copied, ids up to 75000 of 75000" in out
    stored = {
        id_: payload if isinstance(payload, dict) else json.loads(payload)
        for id_, payload in _read(database_url, "SELECT delivery_id, payload FROM delivery_payload")
    }
    assert stored == {id_: payload for id_, payload, purged in ROWS if not purged}
    if database_url.startswith("sqlite:///"):
        columns = [row[1] for row in _read(database_url, "PRAGMA table_info(delivery_delivery)")]
    else:
        columns = [
            name
            for (name,) in _read(
                database_url,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'delivery_delivery'",
            )
        ]
    assert "payload" not in columns and "payload_purged_at" in columns
