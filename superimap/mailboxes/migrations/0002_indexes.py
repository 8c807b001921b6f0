# The indexes and constraints of mailboxes's tables, a migration after the tables.
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
        ('mailboxes', '0001_initial'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='mailboxuser',
            index=models.Index(fields=['archived', 'connected_at'], name='mailboxes_m_archive_e35f08_idx'),
        ),
        migrations.AddIndex(
            model_name='mailboxuser',
            index=models.Index(fields=['owner_node', 'updated_at'], name='mailbox_owner_changed'),
        ),
        migrations.AddIndex(
            model_name='mailboxuser',
            index=models.Index(fields=['updated_at'], name='mailbox_changed'),
        ),
        migrations.AddConstraint(
            model_name='mailboxuser',
            constraint=models.UniqueConstraint(condition=models.Q(('archived', False)), fields=('connection', 'tag'), name='unique_active_tag_per_connection'),
        ),
        migrations.AddConstraint(
            model_name='foldercheckpoint',
            constraint=models.UniqueConstraint(fields=('user', 'folder'), name='one_checkpoint_per_folder'),
        ),
        migrations.AddIndex(
            model_name='maillog',
            index=models.Index(fields=['user', 'sha1'], name='mailboxes_m_user_id_25b18c_idx'),
        ),
        migrations.AddIndex(
            model_name='maillog',
            index=models.Index(fields=['user', 'identity'], name='maillog_user_identity'),
        ),
        migrations.AddConstraint(
            model_name='maillog',
            constraint=models.UniqueConstraint(fields=('user', 'folder', 'uid_validity', 'uid'), name='maillog_one_row_per_uid'),
        ),
    ]
