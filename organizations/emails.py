"""Mail the portal sends about memberships. Sent after the transaction commits (see actions)."""

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string


def send_invitation_email(invitation, link):
    context = {"invitation": invitation, "organization": invitation.organization, "link": link}
    subject = render_to_string("organizations/email/invitation_subject.txt", context).strip()
    body = render_to_string("organizations/email/invitation_body.txt", context)
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email])
