"""Keep the usage rollup true when an operator deletes what sessions hang on."""

from django.contrib.auth import get_user_model
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from licenses.usage import forget_rollup

from .models import EngineSession, Machine


@receiver(pre_delete, sender=get_user_model(), dispatch_uid="forget_rollup_of_deleted_user")
def forget_usage_of_user(sender, instance, **kwargs):
    # Their sessions go with them (CASCADE), and with those sessions the pools' past usage.
    pools = set(EngineSession.objects.filter(user=instance).values_list("pool_id", flat=True).distinct())
    if pools:
        forget_rollup(pools)


@receiver(pre_delete, sender=Machine, dispatch_uid="forget_rollup_of_deleted_machine")
def forget_usage_of_machine(sender, instance, **kwargs):
    if EngineSession.objects.filter(machine=instance).exists():
        forget_rollup([instance.pool_id])
