from datetime import date

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from licenses import errors
from organizations.models import Organization
from sessions_app import actions
from sessions_app.forms import LAST_EXPIRY_DAY_MESSAGE, end_of_day


class Command(BaseCommand):
    help = "Create an API key for a user and print it once, alone, on the last line."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--org", dest="org_id", help="Restrict the key to this organization id.")
        parser.add_argument("--name", default="Created by an operator")
        parser.add_argument("--expires", help="The last day the key works (YYYY-MM-DD, UTC).")

    def handle(self, *args, email, org_id, name, expires, **options):
        user = get_user_model().objects.filter(email__iexact=email).first()
        if user is None:
            raise CommandError(f"Unknown user: {email}")
        organization = None
        if org_id is not None:
            organization = Organization.objects.filter(public_id=org_id).first()
            if organization is None:
                raise CommandError(f"Unknown organization: {org_id}")
        expires_at = None
        if expires is not None:
            try:
                day = date.fromisoformat(expires)
            except ValueError:
                raise CommandError(f"--expires must be a date like 2027-12-31, not {expires!r}") from None
            if day >= date.max:
                raise CommandError(LAST_EXPIRY_DAY_MESSAGE)
            expires_at = end_of_day(day)
        try:
            api_key, raw_key = actions.create_api_key(
                user=user, name=name, organization=organization, expires_at=expires_at, actor=None, ip_address=None
            )
        except errors.LicenseRefusal as refusal:
            raise CommandError(refusal.message) from None
        scope = f"for {organization.name}" if organization else "for all of the user's organizations"
        self.stderr.write(f"Created API key {api_key.name!r} ({api_key.prefix}…) of {user.email} {scope}.")
        self.stdout.write(raw_key)
