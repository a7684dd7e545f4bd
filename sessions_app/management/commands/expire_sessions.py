from django.core.management.base import BaseCommand

from sessions_app import actions


class Command(BaseCommand):
    help = (
        "End sessions whose lease ran out, deregister machines past their pool's idle limit and mark queue "
        "tickets whose engines stopped polling. "
        "Safe to run from cron every minute on any number of hosts at once."
    )

    def handle(self, *args, **options):
        done = actions.expire_sessions()
        self.stdout.write(
            f"Expired {done.sessions_expired} sessions, deregistered {done.machines_deregistered} idle machines, "
            f"deleted {done.idempotency_records_deleted} idempotency records and "
            f"marked {done.queue_tickets_lapsed} queue tickets whose engines stopped polling."
        )
