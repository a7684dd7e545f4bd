from django.contrib import admin, messages
from django.http import HttpResponseRedirect

from organizations.audit import client_ip

from . import actions
from .errors import LicenseRefusal
from .forms import LicensePoolAdminForm
from .models import LicensedUser, LicensePool, OfflineLicense, SigningKey


@admin.register(LicensePool)
class LicensePoolAdmin(admin.ModelAdmin):
    form = LicensePoolAdminForm
    list_display = ["organization", "product", "quota", "machine_quota", "starts_at", "expires_at", "status"]
    list_filter = ["product"]
    search_fields = ["organization__name", "organization__public_id"]
    list_select_related = ["organization"]

    def get_readonly_fields(self, request, obj=None):
        # A pool belongs to one organization and product for life; renewals change its terms.
        return ["organization", "product"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        # Through the action, like provision_license: the pool row is locked, sessions over a lowered
        # quota end, and the change is in the audit log. The form ran the action's checks, so a
        # refusal here means something changed meanwhile (a grant, say): shown as a message, with
        # nothing saved, logged or announced as saved (see the overrides below).
        data = form.cleaned_data
        try:
            result = actions.provision_pool(
                organization=obj.organization,
                product=obj.product,
                quota=data["quota"],
                machine_quota=data["machine_quota"],
                starts_at=data["starts_at"],
                expires_at=data["expires_at"],
                lease_seconds=data["lease_seconds"],
                machine_idle_days=data["machine_idle_days"] or 0,
                machine_allow_list=data["machine_allow_list"],
                actor=request.user,
                ip_address=client_ip(request),
            )
        except LicenseRefusal as refusal:
            request.pool_refused = True
            messages.error(request, f"Nothing was saved: {refusal.message}")
            return
        obj.pk = result.pool.pk
        obj.refresh_from_db()
        if result.sessions_ended:
            messages.warning(request, f"Ended {result.sessions_ended} sessions over the new quota (quota_reduced).")

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def log_addition(self, request, obj, message):
        if not getattr(request, "pool_refused", False):
            super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        if not getattr(request, "pool_refused", False):
            super().log_change(request, obj, message)

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(request, "pool_refused", False):
            return HttpResponseRedirect(request.path)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        if getattr(request, "pool_refused", False):
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)


@admin.register(LicensedUser)
class LicensedUserAdmin(admin.ModelAdmin):
    list_display = ["user", "pool", "granted_at", "granted_by", "revoked_at"]
    list_filter = ["pool__product"]
    search_fields = ["user__email", "pool__organization__name"]
    list_select_related = ["user", "pool__organization", "granted_by"]
    readonly_fields = ["pool", "user", "granted_at", "granted_by", "revoked_at", "revoked_by"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        # Seats are granted on the Licenses page, where the quota is checked under the pool lock.
        return False

    def has_delete_permission(self, request, obj=None):
        # A deleted seat would leave its holder's session running, unaudited: revoke it instead.
        return False

    @admin.action(description="Revoke the selected licenses (their sessions end)", permissions=["change"])
    def revoke(self, request, queryset):
        revoked = 0
        for seat in queryset.active().select_related("pool__organization", "user"):
            try:
                revoked += len(
                    actions.revoke_licenses(
                        pool=seat.pool, users=[seat.user], actor=request.user, ip_address=client_ip(request)
                    )
                )
            except LicenseRefusal as refusal:
                self.message_user(request, f"{seat} was not revoked: {refusal.message}", messages.ERROR)
        if revoked:
            self.message_user(request, f"Revoked {revoked} license(s).", messages.SUCCESS)


@admin.register(OfflineLicense)
class OfflineLicenseAdmin(admin.ModelAdmin):
    list_display = ["license_id", "machine_id", "pool", "issued_at", "expires_at", "issued_by"]
    search_fields = ["license_id", "machine_id", "pool__organization__name"]
    list_select_related = ["pool__organization", "issued_by"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # An issued file keeps working offline; deleting its record would only hide it from the quota.
        return False


@admin.register(SigningKey)
class SigningKeyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "created_at"]
    fields = ["created_at"]
    readonly_fields = ["created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
