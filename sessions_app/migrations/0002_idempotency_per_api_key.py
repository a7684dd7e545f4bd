import django.db.models.deletion
from django.db import migrations, models


def forget_stored_answers(apps, schema_editor):
    # A stored answer was kept per person; which of their keys made the request was not recorded,
    # so none can be scoped to its key. They are retry memory of at most 48 hours: a retry across
    # the upgrade is decided afresh, like a request with a new Idempotency-Key.
    apps.get_model("sessions_app", "IdempotencyRecord").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(forget_stored_answers, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name="idempotencyrecord",
            name="one_record_per_idempotency_key",
        ),
        migrations.RemoveField(
            model_name="idempotencyrecord",
            name="user",
        ),
        migrations.AddField(
            model_name="idempotencyrecord",
            name="api_key",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="sessions_app.apikey"
            ),
            preserve_default=False,
        ),
        migrations.AddConstraint(
            model_name="idempotencyrecord",
            constraint=models.UniqueConstraint(
                fields=("api_key", "key"), name="one_record_per_api_key_and_idempotency_key"
            ),
        ),
    ]
