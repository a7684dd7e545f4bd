from datetime import UTC, timedelta

from django import forms
from django.core.validators import RegexValidator
from django.utils import timezone

from organizations.models import Membership, User

from .models import MACHINE_ID_PATTERN, LicensePool, Product, end_of_day, pool_term_errors


class UserIdsField(forms.ModelMultipleChoiceField):
    def clean(self, value):
        # SQLite cannot bind an integer beyond 64 bits and Django does not catch that for `pk__in`:
        # such an id is refused like any other that names nobody, instead of failing the request.
        for pk in value or ():
            try:
                out_of_range = not -(2**63) <= int(pk) < 2**63
            except (TypeError, ValueError):
                continue  # Not a number at all: Django's own check refuses it.
            if out_of_range:
                raise forms.ValidationError(self.error_messages["invalid_pk_value"], code="invalid_pk_value")
        return super().clean(value)


class MemberChoiceField(UserIdsField):
    def label_from_instance(self, user):
        return f"{user.name} ({user.email})" if user.name else user.email


class GrantForm(forms.Form):
    users = MemberChoiceField(
        queryset=User.objects.none(),
        label="Members to license",
        error_messages={
            "required": "Choose at least one member.",
            "invalid_choice": "Only active members of this organization can be licensed.",
            "invalid_pk_value": "Only active members of this organization can be licensed.",
        },
    )

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        # Any active member validates; the action decides who already holds a license.
        self.fields["users"].queryset = User.objects.filter(
            pk__in=Membership.objects.active().for_org(organization).values("user")
        )


class ChooserSearchForm(forms.Form):
    q = forms.CharField(
        label="Search members",
        required=False,
        max_length=254,  # an email address's length: no name or address is longer
        error_messages={"max_length": "Search for at most %(limit_value)d characters (you typed %(show_value)d)."},
        help_text="By name or email address.",
    )
    page = forms.IntegerField(required=False, min_value=1, max_value=1_000_000)


class RevokeForm(forms.Form):
    users = UserIdsField(
        queryset=User.objects.none(),
        error_messages={
            "required": "Choose at least one licensed user.",
            "invalid_choice": "That person no longer holds a license here.",
            "invalid_pk_value": "That person no longer holds a license here.",
        },
    )

    def __init__(self, *args, pool, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["users"].queryset = User.objects.filter(pk__in=pool.licensed_users.active().values("user"))


class OfflineLicenseForm(forms.Form):
    machine_id = forms.CharField(
        label="Machine id",
        max_length=128,
        validators=[
            RegexValidator(
                MACHINE_ID_PATTERN,
                "Use 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'.",
                code="invalid_machine_id",
            )
        ],
        help_text="Up to 128 characters, as Katalon shows it on the machine that will use the license.",
    )
    expires_on = forms.DateField(
        label="Expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="The license runs to the end of this day (UTC), at the latest to the end of the subscription.",
    )

    def __init__(self, *args, pool, **kwargs):
        super().__init__(*args, **kwargs)
        self.pool = pool
        last_day = pool.expires_at.astimezone(UTC).date()
        self.fields["expires_on"].widget.attrs["max"] = last_day.isoformat()
        if not self.is_bound:
            self.initial["expires_on"] = min(timezone.now().date() + timedelta(days=30), last_day)

    def clean_machine_id(self):
        # The regex's {1,128} is anchored here: RegexValidator searches, it does not fullmatch.
        machine_id = self.cleaned_data["machine_id"]
        if not MACHINE_ID_PATTERN.fullmatch(machine_id):
            raise forms.ValidationError(
                "Use 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':' or '-'.", code="invalid_machine_id"
            )
        return machine_id

    def clean_expires_on(self):
        # The action refuses this too, under the pool's lock; here it is refused before the
        # confirmation asks about a license that could not be made.
        day = self.cleaned_data["expires_on"]
        if day > self.pool.expires_at.astimezone(UTC).date():
            raise forms.ValidationError(
                f"An offline license cannot outlast the subscription, which ends on "
                f"{self.pool.expires_at:%Y-%m-%d %H:%M} UTC.",
                code="after_subscription",
            )
        return day

    @property
    def expires_at(self):
        """The chosen day's end; on the subscription's last day, the subscription's own end."""
        day = self.cleaned_data["expires_on"]
        if day == self.pool.expires_at.astimezone(UTC).date():
            return self.pool.expires_at
        return end_of_day(day)


class LicensePoolAdminForm(forms.ModelForm):
    """The admin's form: the same checks as provision_license, so the admin cannot save terms the
    command would refuse."""

    class Meta:
        model = LicensePool
        fields = [
            "organization",
            "product",
            "quota",
            "machine_quota",
            "starts_at",
            "expires_at",
            "lease_seconds",
            "machine_idle_days",
            "machine_allow_list",
        ]

    def clean(self):
        cleaned = super().clean()
        errors = pool_term_errors(
            quota=cleaned.get("quota"),
            machine_quota=cleaned.get("machine_quota"),
            starts_at=cleaned.get("starts_at"),
            expires_at=cleaned.get("expires_at"),
            lease_seconds=cleaned.get("lease_seconds"),
            machine_idle_days=cleaned.get("machine_idle_days"),
        )
        for field, message in errors.items():
            if field not in self.errors:
                self.add_error(field, message)
        pool = self.instance
        if pool.pk is not None and pool.product == Product.KSE and "quota" not in self.errors:
            # The action checks again under the pool's lock; this shows the refusal on the form.
            refusal = pool.usage().kse_quota_refusal(cleaned["quota"], pool.organization)
            if refusal:
                self.add_error("quota", refusal)
        return cleaned
