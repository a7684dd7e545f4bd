import re

from django.db import migrations, models

DIGIT_RUN = re.compile(r"\d+")


def natural_sort_key(text):
    # A copy of organizations.models.natural_sort_key as it was when this migration was written:
    # a migration must not change when the model's code does.
    def number(match):
        digits = match.group().lstrip("0") or "0"
        return f"{min(len(digits), 99):02d}{digits}"

    return DIGIT_RUN.sub(number, text.casefold())[:255]


def fill_sort_keys(apps, schema_editor):
    User = apps.get_model("organizations", "User")
    batch = []
    for user in User.objects.only("pk", "name", "email").iterator(chunk_size=2000):
        user.sort_key = natural_sort_key(user.name or user.email)
        batch.append(user)
        if len(batch) == 2000:
            User.objects.bulk_update(batch, ["sort_key"])
            batch = []
    User.objects.bulk_update(batch, ["sort_key"])


class Migration(migrations.Migration):
    dependencies = [
        ("organizations", "0002_audit_indexes"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="sort_key",
            field=models.CharField(blank=True, db_index=True, editable=False, max_length=255),
        ),
        migrations.RunPython(fill_sort_keys, migrations.RunPython.noop, elidable=True),
    ]
