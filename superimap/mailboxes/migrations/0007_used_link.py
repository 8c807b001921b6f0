from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mailboxes", "0006_checkpoint_folder"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsedLink",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("nonce", models.CharField(max_length=64, unique=True)),
                ("used_at", models.DateTimeField(db_index=True)),
            ],
        ),
    ]
