from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from . import actions, errors
from .audit import client_ip
from .forms import UserChangeAdminForm, UserCreationAdminForm
from .models import AuditEvent, Invitation, Membership, Organization, User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserChangeAdminForm
    add_form = UserCreationAdminForm
    list_display = ["email", "name", "is_staff", "is_superuser", "is_active", "last_login", "date_joined"]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "name"]
    ordering = ["sort_key", "email"]  # natural order of names, as the pages list people
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Personal info", {"fields": ["name"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Important dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [
        (None, {"classes": ["wide"], "fields": ["email", "name", "usable_password", "password1", "password2"]}),
    ]


# Removing a member is remove_member's work (seats revoked, sessions ended, machines and keys
# deactivated, their invitations revoked, audited; the owner is never removed). A membership marked
# removed or deleted here would skip all of that, so neither is possible: the Remove action calls
# remove_member.
MEMBERSHIP_REMOVAL_FIELDS = ["removed_at", "removed_by"]


class MembershipInline(admin.TabularInline):
    model = Membership
    fk_name = "organization"
    extra = 0
    raw_id_fields = ["user"]
    readonly_fields = MEMBERSHIP_REMOVAL_FIELDS
    can_delete = False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = ["name", "public_id", "created_at"]
    search_fields = ["name", "public_id"]
    readonly_fields = ["public_id", "created_at"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "joined_at", "removed_at"]
    list_filter = ["role", ("removed_at", admin.EmptyFieldListFilter)]
    search_fields = ["user__email", "organization__name", "organization__public_id"]
    list_select_related = ["user", "organization"]
    raw_id_fields = ["user", "organization"]
    readonly_fields = MEMBERSHIP_REMOVAL_FIELDS
    actions = ["remove_members"]

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(
        description="Remove the selected members (their licenses, sessions, machines and keys there end)",
        permissions=["change"],
    )
    def remove_members(self, request, queryset):
        removed = 0
        for membership in queryset.select_related("user", "organization").filter(removed_at__isnull=True):
            try:
                actions.remove_member(
                    organization=membership.organization,
                    actor=request.user,
                    membership_id=membership.pk,
                    ip_address=client_ip(request),
                )
            except errors.MembershipRefusal as refusal:
                self.message_user(
                    request,
                    f"{membership.user} was not removed from {membership.organization}: {refusal.message}",
                    messages.ERROR,
                )
            else:
                removed += 1
        if removed:
            self.message_user(request, f"Removed {removed} member(s).", messages.SUCCESS)


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "sent_at", "expires_at", "accepted_at", "revoked_at"]
    search_fields = ["email", "organization__name"]
    list_select_related = ["organization"]
    raw_id_fields = ["organization", "invited_by", "accepted_by"]
    readonly_fields = ["token"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The log is evidence: nobody edits or deletes it, not even an operator."""

    list_display = ["created_at", "organization", "actor_label", "action", "target_label", "ip_address"]
    list_filter = ["action"]
    search_fields = ["actor_label", "target_label", "organization__name"]
    list_select_related = ["organization"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
