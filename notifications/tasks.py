"""The worker's tasks (Django's tasks framework, queued in the database by django-tasks-db).

A task only says "look at these rows now": what to send, and how far its attempts have got, lives in
the notification tables, and each row is claimed before it is worked on. So a task that runs twice,
runs late or is lost costs nothing: the second run finds the row done, a late one sends what waited,
and housekeeping (notifications.periodic) enqueues again whatever no task is going to reach."""

import logging

from django.tasks import task
from django.utils import timezone

from . import sending

logger = logging.getLogger(__name__)


@task
def fan_out(event_ids: list[int]) -> None:
    sending.fan_out(event_ids)


@task
def deliver_webhooks(delivery_ids: list[int]) -> None:
    for delivery_id in delivery_ids:
        sending.attempt_webhook(delivery_id)


@task
def send_mails(mail_ids: list[int]) -> None:
    for mail_id in mail_ids:
        sending.attempt_mail(mail_id)


def enqueue_fan_out(event_ids):
    fan_out.enqueue(list(event_ids))


def enqueue_deliveries(delivery_ids, *, at=None):
    """Ask the worker for these deliveries' next attempts, at `at` (a retry) or now."""
    _enqueue(deliver_webhooks, delivery_ids, at)


def enqueue_mails(mail_ids, *, at=None):
    _enqueue(send_mails, mail_ids, at)


def _enqueue(chosen_task, ids, at):
    if not ids:
        return
    if at is not None and at > timezone.now():
        # The backend keeps run_after in the database: a retry survives any restart.
        chosen_task = chosen_task.using(run_after=at)
    chosen_task.enqueue(list(ids))
