"""Partner names unique ignoring case; imap_host/smtp_host validated as host names.

Existing partners whose names differ only in case keep the oldest one's name; the others
get " (2)", " (3)", ... so the constraint can be added without losing any partner.
"""

import django.db.models.functions.text
from django.db import migrations, models

import superimap.platform.validation

NAME_MAX = 200


def rename_duplicate_names(apps, schema_editor):
    Partner = apps.get_model("partners", "Partner")
    partners = list(Partner.objects.order_by("created_at", "id").only("id", "name"))
    # Every name in use stays taken, so a renamed partner never takes another's name.
    taken = {partner.name.lower() for partner in partners}
    kept: set[str] = set()
    for partner in partners:
        key = partner.name.lower()
        if key not in kept:
            kept.add(key)  # the oldest partner of each name keeps it
            continue
        number = 2
        while True:
            suffix = f" ({number})"
            name = partner.name[: NAME_MAX - len(suffix)] + suffix
            if name.lower() not in taken:
                break
            number += 1
        taken.add(name.lower())
        kept.add(name.lower())
        Partner.objects.filter(id=partner.id).update(name=name)


class Migration(migrations.Migration):
    dependencies = [
        ("partners", "0011_connection_folders"),
    ]

    operations = [
        migrations.AlterField(
            model_name="connection",
            name="imap_host",
            field=models.CharField(
                blank=True, max_length=255, validators=[superimap.platform.validation.validate_host_name]
            ),
        ),
        migrations.AlterField(
            model_name="connection",
            name="smtp_host",
            field=models.CharField(
                blank=True, max_length=255, validators=[superimap.platform.validation.validate_host_name]
            ),
        ),
        migrations.AlterField(
            model_name="imapprovider",
            name="imap_host",
            field=models.CharField(
                blank=True, max_length=255, validators=[superimap.platform.validation.validate_host_name]
            ),
        ),
        migrations.AlterField(
            model_name="imapprovider",
            name="smtp_host",
            field=models.CharField(
                blank=True, max_length=255, validators=[superimap.platform.validation.validate_host_name]
            ),
        ),
        migrations.RunPython(rename_duplicate_names, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="partner",
            constraint=models.UniqueConstraint(
                django.db.models.functions.text.Lower("name"),
                name="partner_name_unique_ignoring_case",
                violation_error_message=(
                    "A partner with this name exists already (names are compared ignoring case)."
                ),
            ),
        ),
    ]
