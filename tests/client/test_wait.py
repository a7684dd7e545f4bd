"""--wait: a full pool makes the run wait for a license instead of failing.

These tests hold whether or not the portal keeps a queue (contract: "Waiting for a license"): a
portal without one answers the queue request with 409, and the client asks again until the wait is
over; one with a queue answers 202 and the client polls its ticket. The queue's own end-to-end tests
(first come, first served; fifty engines against a quota of ten) come with the server side."""

import os
import signal

from sessions_app.models import EngineSession
from tests import factories

from .conftest import read_report


def test_a_waiting_run_starts_when_another_releases(katalon, portal):
    """With the pool full, a run with --wait says it is waiting, and starts once the holder's run
    ends and gives its license back."""
    factories.EngineSessionFactory(pool=portal.pool, user=portal.user)  # one of the two licenses
    holder_child, holder_report = katalon.child("holder", wait_for=katalon.tmp_path / "holder-done")
    holder = katalon.start("run", "--", *holder_child)
    read_report(holder_report)

    waiter_child, waiter_report = katalon.child("waiter")
    waiter = katalon.start("run", "--wait", "1m", "--", *waiter_child)
    waiter.wait_for_stderr(r"waiting|asking again")
    assert not waiter_report.exists()

    (katalon.tmp_path / "holder-done").touch()
    assert holder.finish() == 0
    assert waiter.finish() == 0, waiter.stderr
    started = read_report(waiter_report)["env"]["KATALON_LICENSE_SESSION_ID"]
    assert EngineSession.objects.get(public_id=started).end_reason == "released"


def test_a_wait_that_runs_out_fails_with_69(katalon, portal):
    """When no license frees up within --wait, the run fails with 69 and says it waited."""
    factories.EngineSessionFactory.create_batch(2, pool=portal.pool, user=portal.user)
    child, report_path = katalon.child()
    process = katalon.run("run", "--wait", "2s", "--", *child)

    assert process.process.returncode == 69
    assert "no license became free within the wait" in process.stderr
    assert not report_path.exists()


def test_a_signal_while_waiting_stops_the_wait_and_holds_nothing(katalon, portal):
    """SIGTERM during the wait ends it at once with 143; the command never starts."""
    factories.EngineSessionFactory.create_batch(2, pool=portal.pool, user=portal.user)
    child, report_path = katalon.child()
    process = katalon.start("run", "--wait", "10m", "--", *child)
    process.wait_for_stderr(r"waiting|asking again")

    os.kill(process.pid, signal.SIGTERM)

    assert process.finish() == 128 + signal.SIGTERM
    assert "stopped before the command started" in process.stderr
    assert not report_path.exists()
    assert EngineSession.objects.live().count() == 2
