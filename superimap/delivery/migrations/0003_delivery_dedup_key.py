# new_mail dedup: one delivery per user and dedup key (Message-ID + size + Date), no
# longer per Message-ID: a different message with a repeated Message-ID is delivered.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0002_user_error_and_recovered_kinds"),
        ("mailboxes", "0004_maillog_skips_and_identity"),
        ("partners", "0005_connection_smtp"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="delivery",
            name="delivery_unique_new_mail_per_message",
        ),
        migrations.AddField(
            model_name="delivery",
            name="dedup_key",
            field=models.CharField(blank=True, max_length=40),
        ),
        migrations.AddConstraint(
            model_name="delivery",
            constraint=models.UniqueConstraint(
                condition=models.Q(
                    ("kind", "new_mail"), models.Q(("dedup_key", ""), _negated=True)
                ),
                fields=("user", "dedup_key"),
                name="delivery_unique_new_mail_per_dedup_key",
            ),
        ),
    ]
