# MailLog records skips (reason, subject, folder) and dedups on sha1 or identity
# (Message-ID + size + Date) instead of a unique Message-ID; one row per (uid_validity, uid).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailboxes", "0003_failing_since_and_tls_failed"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="maillog",
            name="maillog_unique_message_id",
        ),
        migrations.AddField(
            model_name="maillog",
            name="folder",
            field=models.CharField(blank=True, max_length=255),
        ),
        migrations.AddField(
            model_name="maillog",
            name="identity",
            field=models.CharField(blank=True, max_length=40),
        ),
        migrations.AddField(
            model_name="maillog",
            name="subject",
            field=models.CharField(blank=True, max_length=998),
        ),
        migrations.AlterField(
            model_name="maillog",
            name="message_id",
            field=models.CharField(blank=True, max_length=998),
        ),
        migrations.AlterField(
            model_name="maillog",
            name="sha1",
            field=models.CharField(blank=True, max_length=40),
        ),
        migrations.AddIndex(
            model_name="maillog",
            index=models.Index(fields=["user", "identity"], name="maillog_user_identity"),
        ),
        migrations.AddConstraint(
            model_name="maillog",
            constraint=models.UniqueConstraint(
                fields=("user", "uid_validity", "uid"), name="maillog_one_row_per_uid"
            ),
        ),
    ]
