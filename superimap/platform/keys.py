"""Key rotation: re-encrypt every encrypted column with the first ENCRYPTION_KEY."""

from __future__ import annotations

from django.apps import apps
from django.db import transaction

from superimap.platform.fields import EncryptedTextField

BATCH = 500


def encrypted_fields() -> list[tuple[type, list[str]]]:
    result = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.fields if isinstance(f, EncryptedTextField)]
        if names:
            result.append((model, names))
    return result


def reencrypt_all(progress=None) -> int:
    total = 0
    for model, names in encrypted_fields():
        count = model.objects.count()
        done = 0
        ids = list(model.objects.order_by("pk").values_list("pk", flat=True))
        for start in range(0, len(ids), BATCH):
            with transaction.atomic():
                rows = list(
                    model.objects.filter(pk__in=ids[start : start + BATCH]).only("pk", *names)
                )
                # Reading decrypts with any key; saving encrypts with the first.
                model.objects.bulk_update(rows, names)
            done += len(rows)
            if progress:
                progress.write(f"\r{model.__name__}: {done}/{count}")
                progress.flush()
        if progress and count:
            progress.write("\n")
        total += done
    return total
