# Fewer indexes to write per Delivery row, and room for HOT updates (design.md 5.11).
#
# - next_attempt_at's own index: no query used it (pg_stat_user_indexes over bench.e2e: 0
#   scans); every query of next_attempt_at also says status = 'pending' and goes through
#   delivery_due_by_endpoint. DeliveryAttempt.delivery's own index: the unique
#   (delivery, number) leads with the same column. Each was one more entry per INSERT, and on
#   PostgreSQL one more per UPDATE that is not HOT.
# - PostgreSQL: fillfactor 80 on delivery_delivery. Rows were packed into full pages, so the
#   claim's UPDATE (attempts, claimed_by, lease_until: no indexed column) found no room on
#   its page and wrote a new entry in every index (0.4 % HOT in bench.e2e).
#
# Plain DROP INDEX, not AlterField's SQL: on SQLite that rebuilds the whole table and
# recreates every index in a new order (SQLite's planner prefers the newest of equal
# indexes: tests/delivery/test_claim_plan.py). The index names are Django's, the same on
# both databases.

from django.db import migrations, models
import django.db.models.deletion

NEXT_ATTEMPT_AT = "delivery_delivery_next_attempt_at_7b7a6d8e"
ATTEMPT_DELIVERY = "delivery_deliveryattempt_delivery_id_f298a498"


def set_fillfactor(apps, schema_editor, value=80):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"ALTER TABLE delivery_delivery SET (fillfactor = {value})")


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE delivery_delivery RESET (fillfactor)")


class Migration(migrations.Migration):

    dependencies = [
        ('delivery', '0004_changes_kinds'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='delivery',
                    name='next_attempt_at',
                    field=models.DateTimeField(),
                ),
                migrations.AlterField(
                    model_name='deliveryattempt',
                    name='delivery',
                    field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='attempt_log', to='delivery.delivery'),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX "{NEXT_ATTEMPT_AT}"',
                    f'CREATE INDEX "{NEXT_ATTEMPT_AT}" ON "delivery_delivery" ("next_attempt_at")',
                ),
                migrations.RunSQL(
                    f'DROP INDEX "{ATTEMPT_DELIVERY}"',
                    f'CREATE INDEX "{ATTEMPT_DELIVERY}" ON "delivery_deliveryattempt" ("delivery_id")',
                ),
            ],
        ),
        migrations.RunPython(set_fillfactor, reset_fillfactor),
    ]
