import re

from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.forms import AdminUserCreationForm, PasswordResetForm, UserChangeForm
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db.models import Q

from .limits import shorten
from .models import Invitation, Membership, Role

MAX_INVITATIONS_AT_ONCE = 100
EMAIL_SEPARATORS = re.compile(r"[\s,;]+")


class InviteForm(forms.Form):
    emails = forms.CharField(
        label="Email addresses",
        # Room for the most addresses at once, each as long as an address can be, with separators.
        max_length=MAX_INVITATIONS_AT_ONCE * (254 + 2),
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="One or more, separated by commas, spaces or new lines.",
    )
    role = forms.ChoiceField(
        choices=[(Role.MEMBER, Role.MEMBER.label), (Role.ADMIN, Role.ADMIN.label)], initial=Role.MEMBER
    )

    def clean_emails(self):
        emails = list(dict.fromkeys(e.lower() for e in EMAIL_SEPARATORS.split(self.cleaned_data["emails"]) if e))
        if not emails:
            raise ValidationError("Enter at least one email address.", code="required")
        if len(emails) > MAX_INVITATIONS_AT_ONCE:
            raise ValidationError(
                f"At most {MAX_INVITATIONS_AT_ONCE} invitations at once; you entered {len(emails)}.", code="too_many"
            )
        max_length = Invitation._meta.get_field("email").max_length
        invalid = []
        for email in emails:
            try:
                validate_email(email)
            except ValidationError:
                invalid.append(email)
            else:
                if len(email) > max_length:
                    invalid.append(email)
        if invalid:
            raise ValidationError(
                [
                    ValidationError(f"{shorten(email)} is not a valid email address.", code="invalid")
                    for email in invalid
                ]
            )
        return emails


class MembersFilterForm(forms.Form):
    """The active members list's search and filters, from the query string (and, on a row's post,
    from the hidden copy that brings the person back to the same list)."""

    LICENSE_CHOICES = [("", "Any"), ("kse", "Holds a KSE license"), ("none", "No KSE license")]

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=254,  # an email address's length: no name or address is longer
        error_messages={"max_length": "Search for at most %(limit_value)d characters (you typed %(show_value)d)."},
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Name or email", "autocomplete": "off"}),
    )
    role = forms.ChoiceField(label="Role", required=False, choices=[("", "All roles"), *Role.choices])
    license = forms.ChoiceField(label="License", required=False, choices=LICENSE_CHOICES)
    page = forms.IntegerField(required=False, min_value=1, max_value=1_000_000)

    FIELDS = ("q", "role", "license", "page")

    def values(self):
        """The valid, non-empty filters in a fixed order; a field in error counts as not given."""
        self.is_valid()
        return {name: self.cleaned_data[name] for name in self.FIELDS if self.cleaned_data.get(name)}

    def filter(self, memberships):
        values = self.values()
        if query := values.get("q"):
            memberships = memberships.filter(Q(user__name__icontains=query) | Q(user__email__icontains=query))
        if role := values.get("role"):
            memberships = memberships.filter(role=role)
        if license := values.get("license"):
            memberships = memberships.filter(has_kse_seat=license == "kse")
        return memberships

    @property
    def is_filtering(self):
        return any(name in self.values() for name in ("q", "role", "license"))


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=[(Role.MEMBER, Role.MEMBER.label), (Role.ADMIN, Role.ADMIN.label)])


class TransferOwnershipForm(forms.Form):
    """The successor is named by email, so the page needs no list of every member. Handing the
    organization on cannot be undone by the one who does it, so it asks what GitHub asks before a
    dangerous setting: the organization's name typed out, and the owner's own password (a session
    left open on someone else's screen is not enough)."""

    email = forms.EmailField(label="New owner's email", max_length=254)
    organization_name = forms.CharField(label="Type the organization's name to confirm", max_length=200, strip=False)
    password = forms.CharField(
        label="Your password",
        strip=False,
        max_length=4096,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args, organization, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.organization = organization
        self.user = user

    def clean_organization_name(self):
        typed = self.cleaned_data["organization_name"]
        if typed.strip() != self.organization.name:
            raise ValidationError(
                f"Type the organization's name, {self.organization.name}, exactly as shown.", code="name_mismatch"
            )
        return typed

    def clean_password(self):
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise ValidationError("That is not your password.", code="wrong_password")
        return password

    def clean_email(self):
        email = self.cleaned_data["email"]
        membership = (
            Membership.objects.active()
            .filter(organization=self.organization, user__email__iexact=email)
            .select_related("user")
            .first()
        )
        if membership is None:
            raise ValidationError(f"{shorten(email)} is not an active member of this organization.", code="not_member")
        if membership.role == Role.OWNER:
            raise ValidationError("You are already the owner.", code="already_owner")
        self.cleaned_data["membership"] = membership
        return email


class SignUpForm(forms.Form):
    """A new person's account, made while accepting an invitation to `email`."""

    name = forms.CharField(max_length=150, label="Your name")
    password = forms.CharField(
        label="Password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    password_confirm = forms.CharField(
        label="Confirm password", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def __init__(self, *args, email, **kwargs):
        super().__init__(*args, **kwargs)
        self.email = email

    def clean(self):
        cleaned = super().clean()
        password = cleaned.get("password")
        if password and cleaned.get("password_confirm") != password:
            self.add_error("password_confirm", ValidationError("The two passwords differ.", code="password_mismatch"))
        elif password:
            try:
                password_validation.validate_password(
                    password, get_user_model()(email=self.email, name=cleaned.get("name", ""))
                )
            except ValidationError as error:
                self.add_error("password", error)
        return cleaned


class SetFirstPasswordResetForm(PasswordResetForm):
    """Password reset that also reaches accounts an operator made without a password, so a
    set-password link that ran out can be asked for again. The mail still goes only to the owner
    of the address."""

    def get_users(self, email):
        return get_user_model()._default_manager.filter(email__iexact=email, is_active=True)


class UserCreationAdminForm(AdminUserCreationForm):
    class Meta:
        model = get_user_model()
        fields = ("email", "name")
        field_classes = {}


class UserChangeAdminForm(UserChangeForm):
    class Meta:
        model = get_user_model()
        fields = "__all__"
        field_classes = {}


class ProfileForm(forms.ModelForm):
    """What a person may change about themselves on their profile: the name pages show."""

    class Meta:
        model = get_user_model()
        fields = ["name"]
        labels = {"name": "Your name"}
        help_texts = {"name": "How you appear to others in your organizations. Leave it empty to be shown by email."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limit = self.fields["name"].max_length
        self.fields["name"].error_messages["max_length"] = f"Use at most {limit} characters (you typed %(show_value)d)."
        self.fields["name"].widget.attrs["autocomplete"] = "name"
