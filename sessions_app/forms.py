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


RETRY_MESSAGE = "Retries must be a whole number from 0 to 100."
WAIT_MESSAGE = "Write the wait like 90s, 30m, 2h or 1h30m, or leave it empty to fail at once when the pool is full."
# What katalon-license's --wait reads (client/src/katalon_license/durations.py); the browser checks
# the same pattern, so both forms of the command agree on what is valid.
WAIT_PATTERN = r"[0-9]+|([0-9]+h)?([0-9]+m)?([0-9]+s)?"


def path_field(label, initial):
    message = f"Enter the {label.lower()} (up to 1000 characters)."
    return forms.CharField(
        max_length=1000,
        label=label,
        initial=initial,
        error_messages={"required": message, "max_length": message},
        widget=forms.TextInput(attrs={"data-invalid-message": message}),
    )


class CommandForm(forms.Form):
    """The choices behind both commands the generator writes. An invalid choice yields no command
    rather than a quietly corrected one: a command that differs from what was typed would run the
    wrong thing."""

    org = forms.ModelChoiceField(
        queryset=Organization.objects.none(),
        to_field_name="public_id",
        label="Organization",
        empty_label=None,
        help_text="Only organizations with Runtime Engine licenses.",
    )
    project_path = path_field("Project path", "/path/to/project.prj")
    test_suite_path = path_field("Test suite path", "Test Suites/Smoke")
    browser = forms.ChoiceField(choices=[(b, b) for b in BROWSERS], initial="Chrome (headless)", label="Browser")
    retry = forms.IntegerField(
        min_value=0,
        max_value=100,
        initial=0,
        label="Retries",
        error_messages={key: RETRY_MESSAGE for key in ("required", "invalid", "min_value", "max_value")},
        widget=forms.NumberInput(attrs={"data-invalid-message": RETRY_MESSAGE}),
    )
    release_previous = forms.BooleanField(
        required=False,
        label="Release the previous session on this machine first",
        help_text="Adds -licenseRelease=true (--release-previous when wrapped).",
    )
    wait = forms.RegexField(
        regex=rf"^({WAIT_PATTERN})$",
        max_length=20,
        required=False,
        label="Wait for a free license (wrapped form)",
        help_text="e.g. 30m: wait in the pool's line instead of failing at once.",
        error_messages={"invalid": WAIT_MESSAGE, "max_length": WAIT_MESSAGE},
        widget=forms.TextInput(
            attrs={"pattern": WAIT_PATTERN, "data-invalid-message": WAIT_MESSAGE, "placeholder": "30m"}
        ),
    )
    ephemeral = forms.BooleanField(
        required=False,
        label="Deregister the machine when the run ends (wrapped form)",
        help_text="For CI containers that never come back: adds --ephemeral.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["org"].queryset = (
            Organization.objects.for_user(user).filter(pools__product=Product.RE).distinct().order_by("name")
        )
        for name, field in self.fields.items():
            described_by = [f"id_{name}_error"] + ([f"id_{name}_helptext"] if field.help_text else [])
            field.widget.attrs["aria-describedby"] = " ".join(described_by)

    def choices(self):
        """The values the commands are made from: the submitted ones when valid, the defaults
        before anything is submitted, and None when something submitted is invalid."""
        if not self.is_bound:
            return {name: self.initial.get(name, field.initial) for name, field in self.fields.items()}
        return self.cleaned_data if self.is_valid() else None

    def commands(self, *, server_url, raw_key=None):
        """The plain katalonc command, and the same run wrapped in katalon-license."""
        chosen = self.choices()
        if chosen is None:
            return None
        organization = chosen["org"] or self.fields["org"].queryset.first()
        org_id = organization.public_id if organization else shlex.quote("<organization-id>")
        api_key = raw_key or shlex.quote(KEY_PLACEHOLDER)
        run = [
            "katalonc",
            "-noSplash",
            "-runMode=console",
            f"-projectPath={shell_quote(chosen['project_path'])}",
            f"-retry={int(chosen['retry'] or 0)}",
            f"-testSuitePath={shell_quote(chosen['test_suite_path'])}",
            f"-browserType={shell_quote(chosen['browser'])}",
        ]
        plain = [*run, f"-apiKey={api_key}", f"-orgID={org_id}", f"-serverUrl={shell_quote(server_url)}"]
        if chosen["release_previous"]:
            plain.append("-licenseRelease=true")
        wrapper = ["katalon-license", "run", "--org", org_id]
        if chosen["ephemeral"]:
            wrapper.append("--ephemeral")
        if chosen["release_previous"]:
            wrapper.append("--release-previous")
        if chosen["wait"]:
            wrapper += ["--wait", chosen["wait"]]
        wrapped = "\n".join(
            [
                f"export KATALON_ADMIN_URL={shell_quote(server_url)}",
                f"export KATALON_API_KEY={api_key}",
                " ".join([*wrapper, "--", *run]),
            ]
        )
        return {"plain": " ".join(plain), "wrapped": wrapped}
