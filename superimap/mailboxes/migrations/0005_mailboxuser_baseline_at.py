# When the user's first baseline was taken: after a UIDVALIDITY change, mail with an
# INTERNALDATE before it is recorded as skipped (before_baseline), never sent as new.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailboxes", "0004_maillog_skips_and_identity"),
    ]

    operations = [
        migrations.AddField(
            model_name="mailboxuser",
            name="baseline_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
