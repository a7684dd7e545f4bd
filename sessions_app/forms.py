import shlex
from datetime import UTC, date, datetime, time, timedelta

from django import forms
from django.utils import timezone

from licenses.models import Product
from organizations.models import Organization

# Katalon Runtime Engine's -browserType values.
BROWSERS = [
    "Chrome",
    "Chrome (headless)",
    "Firefox",
    "Firefox (headless)",
    "Edge Chromium",
    "Edge Chromium (headless)",
    "Safari",
    "Remote",
    "Web Service",
]
KEY_PLACEHOLDER = "<your-api-key>"


# The last day a date can hold has no next midnight, so it cannot be an expiry date.
LAST_EXPIRY_DAY_MESSAGE = f"The expiry date must be before {date.max}."


def end_of_day(day):
    """A key given an expiry date works through that whole day (UTC)."""
    return datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What the key is for, e.g. “Jenkins agents”.")
    organization = forms.ModelChoiceField(
        queryset=Organization.objects.none(),
        required=False,
        empty_label="Any of my organizations",
        help_text="Restrict the key to one organization.",
    )
    expires = forms.DateField(
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional; the key works through this day (UTC).",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization"].queryset = Organization.objects.for_user(user).order_by("name")
        self.fields["organization"].to_field_name = "public_id"

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the key a name.", code="required")
        return name

    def clean_expires(self):
        day = self.cleaned_data.get("expires")
        if day is not None and day >= date.max:
            raise forms.ValidationError(LAST_EXPIRY_DAY_MESSAGE, code="too_late")
        if day is not None and end_of_day(day) <= timezone.now():
            raise forms.ValidationError("The expiry date must be today or later.", code="past")
        return day

    @property
    def expires_at(self):
        day = self.cleaned_data.get("expires")
        return end_of_day(day) if day else None


def shell_quote(value):
    """Quote for a POSIX shell. Plain values get the double quotes Katalon's docs show; anything a
    shell would expand inside double quotes ($, `, \\, ", !) gets single quotes instead."""
    if any(char in value for char in '"$`\\!\n'):
        return shlex.quote(value)
    return f'"{value}"'


class CommandForm(forms.Form):
    org = forms.ModelChoiceField(
        queryset=Organization.objects.none(),
        to_field_name="public_id",
        label="Organization",
        empty_label=None,
        help_text="Only organizations with Runtime Engine licenses.",
    )
    project_path = forms.CharField(
        max_length=1000, required=False, label="Project path", initial="/path/to/project.prj"
    )
    test_suite_path = forms.CharField(
        max_length=1000, required=False, label="Test suite path", initial="Test Suites/Smoke"
    )
    browser = forms.ChoiceField(choices=[(b, b) for b in BROWSERS], initial="Chrome (headless)", label="Browser")
    retry = forms.IntegerField(min_value=0, max_value=100, initial=0, required=False, label="Retries")
    release_previous = forms.BooleanField(
        required=False,
        label="Release the previous session on this machine first",
        help_text="Adds -licenseRelease=true.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["org"].queryset = (
            Organization.objects.for_user(user).filter(pools__product=Product.RE).distinct().order_by("name")
        )

    def value(self, name):
        """The cleaned value, or the field's initial one while it is empty or invalid, so the
        command stays whole as the person types."""
        if self.is_bound:
            self.is_valid()
            value = self.cleaned_data.get(name)
            if value not in (None, ""):
                return value
            if name == "release_previous":
                return False
        return self.initial.get(name, self.fields[name].initial)

    def command(self, *, server_url, raw_key=None):
        organization = self.value("org") or self.fields["org"].queryset.first()
        parts = [
            "katalonc",
            "-noSplash",
            "-runMode=console",
            f"-projectPath={shell_quote(self.value('project_path'))}",
            f"-retry={int(self.value('retry') or 0)}",
            f"-testSuitePath={shell_quote(self.value('test_suite_path'))}",
            f"-browserType={shell_quote(self.value('browser'))}",
            f"-apiKey={raw_key or shlex.quote(KEY_PLACEHOLDER)}",
            f"-orgID={organization.public_id if organization else shlex.quote('<organization-id>')}",
            f"-serverUrl={shell_quote(server_url)}",
        ]
        if self.value("release_previous"):
            parts.append("-licenseRelease=true")
        return " ".join(parts)
