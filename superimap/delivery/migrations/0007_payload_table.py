# The webhook payload in a table of its own, delivery_payload (design.md 5.11).
#
# On SQLite a Delivery row carried its ~2.3 KB payload, so every row filled a 4 KB page of
# its own, and the worker's claim UPDATE and outcome UPDATE each wrote that page to the WAL
# again. In delivery_payload the payload is written once (with its delivery), read by id
# for the rows a claim keeps, and deleted by retention; Delivery's rows are ~200 bytes.
# PostgreSQL: the same table (one schema). Its rows are never updated, so the payload stays
# in its row, compressed (lz4 where the server has it) once above the TOAST threshold:
# the claim reads it without the TOAST index. delivery_delivery keeps fillfactor 50 and
# drops 0006's toast_tuple_target (no column of it is large now).
#
# Existing payloads are copied by id range, BATCH ids per statement, with a progress line
# per ~5 % (a production database may hold millions of rows); purged ones
# (payload_purged_at set, payload {}) get no row: a missing row reads as {}. Then the
# column is dropped: ALTER TABLE ... DROP COLUMN on both databases (Django does not rebuild
# the SQLite table for it, so the indexes keep their order, tests/delivery/test_claim_plan.py).
# SQLite rewrites each row without the column (its freed pages are reused; VACUUM shrinks the
# file); PostgreSQL only marks the column dropped: the old values' space (0006's TOAST table)
# is given back by a rewrite of delivery_delivery (VACUUM FULL, pg_repack), reused otherwise.
# Not reversible.

import time

import django.db.models.deletion
from django.db import migrations, models

BATCH = 20_000

LZ4 = "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"


def copy_payloads(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT MIN(id), MAX(id) FROM delivery_delivery")
        low, high = cursor.fetchone()
        if low is None:
            return
        print(f"\n  delivery_payload: copying payloads of ids {low}-{high}")
        started = time.monotonic()
        copied = 0
        step = max(1, (high - low + 1) // 20)
        reported = low
        for start in range(low, high + 1, BATCH):
            cursor.execute(
                "INSERT INTO delivery_payload (delivery_id, payload) "
                "SELECT id, payload FROM delivery_delivery "
                "WHERE id >= %s AND id < %s AND payload_purged_at IS NULL",
                [start, start + BATCH],
            )
            copied += cursor.rowcount
            if start + BATCH - reported >= step or start + BATCH > high:
                reported = start + BATCH
                done = min(high, start + BATCH - 1)
                print(
                    f"  delivery_payload: {copied} copied, ids up to {done} of {high} "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )


def postgres_settings(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("ALTER TABLE delivery_delivery RESET (toast_tuple_target)")
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(LZ4)
        lz4 = cursor.fetchone() is not None
    if lz4:
        schema_editor.execute(
            "ALTER TABLE delivery_payload ALTER COLUMN payload SET COMPRESSION lz4"
        )


def postgres_settings_back(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("ALTER TABLE delivery_delivery SET (toast_tuple_target = 128)")  # 0006's


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0006_pgrow_payload_toast"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeliveryPayload",
            fields=[
                (
                    "delivery",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="stored_payload",
                        serialize=False,
                        to="delivery.delivery",
                    ),
                ),
                ("payload", models.JSONField()),
            ],
            options={
                "db_table": "delivery_payload",
            },
        ),
        # Not reversible: the column would come back NOT NULL on a table of rows.
        migrations.RunPython(copy_payloads),
        migrations.RunPython(postgres_settings, postgres_settings_back),
        migrations.RemoveField(
            model_name="delivery",
            name="payload",
        ),
    ]
