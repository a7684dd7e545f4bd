"""Real concurrency for the PostgreSQL tests: threads, each with its own database connection."""

import threading
from contextlib import contextmanager

from django.db import DatabaseError, connection, transaction

from licenses.models import LicensePool
from organizations.models import Organization

# PostgreSQL's default max_connections is 100 and the server is shared (CI, other test runs), so
# calls go through at most this many connections at a time: enough for every race to happen.
MAX_CONNECTIONS = 20


def run_together(calls):
    """Run every call from its own thread and connection (at most MAX_CONNECTIONS, each taking its
    share of the calls), all released at once by a barrier. Returns each call's result, or the
    exception it raised, in the calls' order."""
    workers = min(len(calls), MAX_CONNECTIONS)
    barrier = threading.Barrier(workers)
    outcomes = [None] * len(calls)

    def worker(first):
        try:
            barrier.wait()
            for index in range(first, len(calls), workers):
                try:
                    outcomes[index] = calls[index]()
                except Exception as error:
                    outcomes[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(first,)) for first in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def split(outcomes):
    """(results, errors) of run_together's outcomes."""
    errors = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    return [outcome for outcome in outcomes if not isinstance(outcome, Exception)], errors


def organization_row_is_free(organization):
    """Whether another connection can lock the organization's row right now, without waiting."""
    answer = []

    def probe():
        try:
            with transaction.atomic():
                Organization.objects.select_for_update(nowait=True).get(pk=organization.pk)
            answer.append(True)
        except DatabaseError:
            answer.append(False)
        finally:
            connection.close()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return answer[0]


@contextmanager
def pool_lock_unavailable(pool):
    """While another connection holds the pool's row and this one gives up a lock wait after
    200 ms: what needs the pool's lock here fails as with a database in trouble (the API's 503)."""
    locked, finished = threading.Event(), threading.Event()

    def hold_the_pool_row():
        try:
            with transaction.atomic():
                LicensePool.objects.select_for_update().get(pk=pool.pk)
                locked.set()
                finished.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_pool_row)
    holder.start()
    locked.wait(10)
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")
    try:
        yield
    finally:
        finished.set()
        holder.join()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
