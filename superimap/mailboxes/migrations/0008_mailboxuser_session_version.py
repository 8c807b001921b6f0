from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailboxes", "0007_used_link"),
    ]

    operations = [
        migrations.AddField(
            model_name="mailboxuser",
            name="session_version",
            field=models.CharField(blank=True, default="", editable=False, max_length=32),
        ),
    ]
