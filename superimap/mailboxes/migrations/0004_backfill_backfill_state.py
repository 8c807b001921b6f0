# A chosen backfill window (design.md 4.12). A sweep is a backfill of all mail: a pending
# sweep request (sweep_requested_at) becomes a pending backfill with no since.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('mailboxes', '0003_filters'),
    ]

    operations = [
        migrations.RenameField(
            model_name='mailboxuser',
            old_name='sweep_requested_at',
            new_name='backfill_requested_at',
        ),
        migrations.AddField(
            model_name='mailboxuser',
            name='backfill_since',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='mailboxuser',
            name='backfill_uid_validity',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='mailboxuser',
            name='backfill_until_uid',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='mailboxuser',
            name='backfill_position',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='mailboxuser',
            name='backfill_total',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='mailboxuser',
            name='backfill_done',
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='mailboxuser',
            name='backfill_finished_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
