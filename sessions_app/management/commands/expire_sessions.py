from django.core.management.base import BaseCommand

from licenses.usage import roll_up_every_pool
from sessions_app import actions


class Command(BaseCommand):
    help = (
        "End sessions whose lease ran out, deregister machines past their pool's idle limit, mark queue "
        "tickets whose engines stopped polling and roll finished hours of usage up for the usage page. "
        "Safe to run from cron every minute on any number of hosts at once."
    )

    def handle(self, *args, **options):
        done = actions.expire_sessions()
        self.stdout.write(
            f"Expired {done.sessions_expired} sessions, deregistered {done.machines_deregistered} idle machines, "
            f"deleted {done.idempotency_records_deleted} idempotency records and "
            f"marked {done.queue_tickets_lapsed} queue tickets whose engines stopped polling."
        )
        self.stdout.write(f"Rolled up {roll_up_every_pool()} hours of usage.")
