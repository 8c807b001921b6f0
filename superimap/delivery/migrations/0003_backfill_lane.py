# Backfilled new_mail (design.md 4.12) go in a lane of their own: the claim's index leads
# with (status, backfill) so each lane is one range.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('delivery', '0002_indexes'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='delivery',
            name='delivery_due_by_endpoint',
        ),
        migrations.AddField(
            model_name='delivery',
            name='backfill',
            field=models.BooleanField(default=False),
        ),
        migrations.AddIndex(
            model_name='delivery',
            index=models.Index(fields=['status', 'backfill', 'next_attempt_at', 'id', 'partner', 'kind'], name='delivery_due_by_endpoint'),
        ),
    ]
