from django.core.management.base import BaseCommand
from django.utils import timezone

from notifications import periodic


class Command(BaseCommand):
    help = (
        "Find the events time causes (subscriptions ending, offline licenses expiring, quota warnings), "
        "make yesterday's daily digests and hand the worker again what a crash left behind. "
        "Safe to run from cron every minute on any number of hosts at once."
    )

    def handle(self, *args, **options):
        report = periodic.run(timezone.now())
        self.stdout.write(f"Notifications: {report}.")
