from django.contrib import admin, messages

from licenses import actions as license_actions
from licenses.usage import forget_rollup
from organizations.audit import client_ip

from . import actions
from .models import ApiKey, EngineSession, Machine


@admin.register(Machine)
class MachineAdmin(admin.ModelAdmin):
    list_display = ["machine_id", "pool", "hostname", "user", "ephemeral", "last_seen_at", "deactivated_at"]
    list_filter = ["pool__product", "ephemeral", ("deactivated_at", admin.EmptyFieldListFilter)]
    search_fields = ["machine_id", "hostname", "user__email", "pool__organization__name"]
    list_select_related = ["pool__organization", "user"]
    actions = ["deactivate"]

    # Registering by hand would skip the machine quota, and deactivating by hand would leave the
    # machine's sessions running: machines are registered by activations and deactivated below.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Deactivate the selected machines (their sessions end)")
    def deactivate(self, request, queryset):
        deactivated = sum(
            license_actions.deactivate_machine(machine=machine, actor=request.user, ip_address=client_ip(request))
            for machine in queryset
        )
        self.message_user(request, f"Deactivated {deactivated} machine(s).", messages.SUCCESS)


@admin.register(EngineSession)
class EngineSessionAdmin(admin.ModelAdmin):
    """Read-mostly: sessions are written by the engine API and ended by the license pages."""

    list_display = ["public_id", "pool", "machine", "user", "started_at", "lease_expires_at", "ended_at", "end_reason"]
    list_filter = ["pool__product", "end_reason"]
    search_fields = ["public_id", "machine__machine_id", "hostname", "user__email"]
    list_select_related = ["pool__organization", "machine", "user"]
    date_hierarchy = "started_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    # A deleted session leaves the pool's past usage: the rolled-up hours are recomputed.
    def delete_model(self, request, obj):
        forget_rollup([obj.pool_id])
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        forget_rollup(set(queryset.values_list("pool_id", flat=True)))
        super().delete_queryset(request, queryset)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """The hash is never shown: it is useless to a person and only helps someone guessing keys."""

    list_display = ["name", "prefix", "user", "organization", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "prefix", "user__email"]
    list_select_related = ["user", "organization"]
    fields = ["name", "prefix", "user", "organization", "created_at", "last_used_at", "expires_at", "revoked_at"]
    readonly_fields = ["prefix", "user", "organization", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Keys are made with the page or `manage.py create_api_key`, which show the key once.
        return False

    @admin.action(description="Revoke the selected API keys")
    def revoke(self, request, queryset):
        revoked = sum(
            actions.revoke_api_key(api_key=api_key, actor=request.user, ip_address=client_ip(request))
            for api_key in queryset.select_related("user", "organization")
        )
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
