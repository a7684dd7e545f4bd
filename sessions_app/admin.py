from django.contrib import admin, messages

from licenses import actions as license_actions
from licenses.errors import LicenseRefusal
from organizations.audit import client_ip

from . import actions
from .models import ApiKey, EngineSession, Machine, QueueTicket


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

    def has_delete_permission(self, request, obj=None):
        # Deleting would take the machine's sessions with it, unended and unaudited: deactivate it.
        return False

    @admin.action(description="Deactivate the selected machines (their sessions end)")
    def deactivate(self, request, queryset):
        deactivated = 0
        for machine in queryset.select_related("pool__organization"):
            try:
                deactivated += license_actions.deactivate_machine(
                    machine=machine, actor=request.user, ip_address=client_ip(request)
                )
            except LicenseRefusal as refusal:
                self.message_user(request, f"{machine} was not deactivated: {refusal.message}", messages.ERROR)
        if deactivated:
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

    def has_delete_permission(self, request, obj=None):
        # A deleted session frees its license without an end, a reason or an audit event; the
        # Licenses page ends sessions.
        return False


@admin.register(QueueTicket)
class QueueTicketAdmin(admin.ModelAdmin):
    """Read-only: tickets are written by the engine API; taking one out of the line is audited."""

    list_display = ["public_id", "pool", "user", "machine_id", "joined_at", "poll_before", "ended_at", "outcome"]
    list_filter = ["outcome"]
    search_fields = ["public_id", "machine_id", "hostname", "user__email"]
    list_select_related = ["pool__organization", "user"]
    date_hierarchy = "joined_at"
    actions = ["remove_from_line"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # The usage page's waits are the granted tickets; a waiting one is removed with the action.
        return False

    @admin.action(description="Take the selected engines out of the line")
    def remove_from_line(self, request, queryset):
        removed = 0
        for ticket in queryset.select_related("pool__organization", "user"):
            removed += license_actions.remove_ticket(
                organization=ticket.pool.organization, ticket=ticket, actor=request.user, ip_address=client_ip(request)
            )
        self.message_user(request, f"Took {removed} engine(s) out of the line.", messages.SUCCESS)


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
        revoked = 0
        for api_key in queryset.select_related("user", "organization"):
            try:
                revoked += actions.revoke_api_key(api_key=api_key, actor=request.user, ip_address=client_ip(request))
            except LicenseRefusal as refusal:
                self.message_user(request, f"{api_key} was not revoked: {refusal.message}", messages.ERROR)
        if revoked:
            self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)
