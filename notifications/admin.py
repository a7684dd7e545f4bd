from django.contrib import admin

from .models import Endpoint, Event, Mail, WebhookDelivery


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["public_id", "type", "organization", "created_at", "fanned_out_at"]
    list_filter = ["type"]
    search_fields = ["public_id", "organization__name", "organization__public_id"]
    list_select_related = ["organization"]
    readonly_fields = [field.name for field in Event._meta.fields]


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "organization", "created_at", "failing_since", "disabled_at"]
    search_fields = ["url", "organization__name", "organization__public_id"]
    list_select_related = ["organization"]
    # Secrets are never shown, not even encrypted; owners and admins roll them on their page.
    exclude = ["secret_encrypted", "previous_secret_encrypted"]
    readonly_fields = ["organization", "created_by", "created_at", "previous_secret_expires_at"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ["event", "endpoint", "status", "attempts", "response_status", "next_attempt_at"]
    list_filter = ["status"]
    list_select_related = ["event", "endpoint"]
    readonly_fields = [field.name for field in WebhookDelivery._meta.fields]


@admin.register(Mail)
class MailAdmin(admin.ModelAdmin):
    list_display = ["subject", "recipient", "kind", "status", "attempts", "created_at"]
    list_filter = ["kind", "status"]
    list_select_related = ["recipient"]
    readonly_fields = [field.name for field in Mail._meta.fields]
