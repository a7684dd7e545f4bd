from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import URLValidator, validate_email
from django.db import transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from organizations.actions import create_organization, get_or_create_user
from organizations.models import Organization, User

DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class Command(BaseCommand):
    help = (
        "Create an organization with its owner (creating the owner's account, without a password, when "
        "missing, and printing a one-time link to set it). Prints the organization id on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The organization's name.")
        parser.add_argument("--owner", required=True, help="The owner's email address.")
        parser.add_argument(
            "--owner-name",
            default="",
            help="The owner's name, as pages show it (for a new account; an existing account's name is set "
            "only when it has none). The owner can change it on their profile.",
        )
        parser.add_argument(
            "--base-url",
            default=DEFAULT_BASE_URL,
            help=f"The portal's address, for the set-password link (default {DEFAULT_BASE_URL}).",
        )

    def handle(self, *args, name, owner, owner_name, base_url, **options):
        name = name.strip()
        owner_name = owner_name.strip()
        email = owner.strip().lower()
        base_url = base_url.rstrip("/")
        if not name:
            raise CommandError("The organization's name must not be empty.")
        max_length = Organization._meta.get_field("name").max_length
        if len(name) > max_length:
            raise CommandError(f"The organization's name is longer than {max_length} characters.")
        name_limit = User._meta.get_field("name").max_length
        if len(owner_name) > name_limit:
            raise CommandError(f"--owner-name is longer than {name_limit} characters.")
        try:
            validate_email(email)
        except ValidationError:
            raise CommandError(f"--owner: {owner!r} is not a valid email address.") from None
        try:
            URLValidator(schemes=["http", "https"])(base_url)
        except ValidationError:
            raise CommandError(f"--base-url: {base_url!r} is not an http(s) address.") from None

        with transaction.atomic():
            user, created = get_or_create_user(email)
            if owner_name and not user.name:
                user.name = owner_name
                user.save(update_fields=["name"])
            organization = create_organization(name=name, owner=user)

        self.stdout.write(f"Created organization {organization.name!r} with owner {user.email}.")
        if created:
            uid = urlsafe_base64_encode(force_bytes(user.pk))
            token = default_token_generator.make_token(user)
            path = reverse("password_reset_confirm", kwargs={"uidb64": uid, "token": token})
            self.stdout.write(f"Created the account {user.email}. Its one-time link to set a password:")
            self.stdout.write(f"  {base_url}{path}")
        self.stdout.write(organization.public_id)
