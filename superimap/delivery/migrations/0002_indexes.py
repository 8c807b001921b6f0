# The indexes and constraints of delivery's tables, a migration after the tables.
#
# Not in 0001: Django creates a foreign key's index at the END of the migration that adds
# the key (deferred SQL), after that migration's AddIndex statements. SQLite's planner, among
# indexes it rates equal, takes the one created last: with the partial indexes in 0001 the
# plain user_id index was newest and the delivery claim's per-user probes used it instead of
# delivery_pending_by_user / delivery_disconnect_by_user, scanning every delivery of the user
# (the worker's backlog fell from ~2,400 to ~320 deliveries/s in bench.delivery). Here they
# are created after the key indexes, as in the migrations this squash replaced.
# tests/delivery/test_claim_plan.py checks the plans.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('delivery', '0001_initial'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(fields=['status', 'next_attempt_at', 'id', 'partner', 'kind'], name='delivery_due_by_endpoint'),
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(condition=models.Q(('status', 'pending')), fields=['user', 'id'], name='delivery_pending_by_user'),
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(condition=models.Q(('kind', 'user_disconnected')), fields=['user', 'id'], name='delivery_disconnect_by_user'),
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(condition=models.Q(('kind', 'new_mail'), ('payload_purged_at__isnull', True), ('status', 'delivered')), fields=['delivered_at'], name='delivery_delivered_payloads'),
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(condition=models.Q(('kind', 'new_mail'), ('payload_purged_at__isnull', True), ('status', 'failed')), fields=['created_at'], name='delivery_failed_payloads'),
        ),
        migrations.AddConstraint(
            model_name='delivery',
            constraint=models.UniqueConstraint(condition=models.Q(('kind', 'new_mail'), models.Q(('dedup_key', ''), _negated=True)), fields=('user', 'dedup_key'), name='delivery_unique_new_mail_per_dedup_key'),
        ),
        migrations.AddConstraint(
            model_name='deliveryattempt',
            constraint=models.UniqueConstraint(fields=('delivery', 'number'), name='one_row_per_attempt'),
        ),
        migrations.AddConstraint(
            model_name='endpointhealth',
            constraint=models.UniqueConstraint(fields=('partner', 'kind'), name='one_health_per_endpoint'),
        ),
    ]
