# PostgreSQL: a new_mail payload above the TOAST threshold is kept out of the row, so the
# claim's and the outcome's UPDATEs no longer copy it (design.md 5.11).
#
# A Delivery row above ~2 KB (PostgreSQL's TOAST_TUPLE_THRESHOLD, a compile-time constant:
# real mail, and bench.e2e's ~1.9 KB payloads) had its payload compressed (pglz) and kept
# in the row, ~1 KB. Every UPDATE wrote the whole row again with it, and with no room on its
# page for that copy most claims were not HOT (a new entry in every index).
# - toast_tuple_target = 128: once a row is toasted, its payload is moved out until the row
#   is below 128 bytes, i.e. always. An UPDATE that leaves the payload alone keeps its TOAST
#   pointer (18 bytes): the claim and the outcome write ~300-byte rows.
# - fillfactor 50 (0005: 80): with ~300-byte rows a page keeps room for a copy of each of
#   its rows, so the claim's UPDATE (no indexed column) is HOT: in bench.e2e 0.45 of
#   Delivery's updates were HOT (nearly every claim) against 0.12 at 80, and WAL per message
#   fell from 6.9-7.4 to 6.2-6.4 KB. The heap grew ~15 %: the rows are a quarter the size.
# - COMPRESSION lz4 (where the server has it): cheaper than pglz to compress at INSERT and
#   to decompress at claim (the worker reads payload::text).
# Rows below the threshold (lifecycle events, ~1 KB payloads) are stored as before:
# PostgreSQL considers toasting only above it, whatever toast_tuple_target says. The settings
# apply to rows written from then on. SQLite: nothing to do.

from django.db import migrations

LZ4 = (
    "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
    "AND 'lz4' = ANY(enumvals)"
)


def out_of_line(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "ALTER TABLE delivery_delivery SET (toast_tuple_target = 128, fillfactor = 50)"
    )
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(LZ4)
        lz4 = cursor.fetchone() is not None
    if lz4:
        schema_editor.execute(
            "ALTER TABLE delivery_delivery ALTER COLUMN payload SET COMPRESSION lz4"
        )


def in_line(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("ALTER TABLE delivery_delivery RESET (toast_tuple_target)")
    schema_editor.execute("ALTER TABLE delivery_delivery SET (fillfactor = 80)")  # 0005's
    if schema_editor.connection.pg_version >= 140000:  # COMPRESSION is PostgreSQL 14's
        schema_editor.execute(
            "ALTER TABLE delivery_delivery ALTER COLUMN payload SET COMPRESSION DEFAULT"
        )


class Migration(migrations.Migration):

    dependencies = [
        ("delivery", "0005_deliveryrow_indexes"),
    ]

    operations = [
        migrations.RunPython(out_of_line, in_line),
    ]
