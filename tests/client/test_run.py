"""katalon-license run: a license around a command, against a real portal."""

import os
import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from licenses.actions import withdraw_session
from sessions_app.models import EngineSession, Machine

from .conftest import read_report


@pytest.mark.parametrize("code", [0, 3])
def test_run_exits_with_the_commands_code_and_releases(katalon, portal, code):
    """The command runs with its session in the environment; the client exits with its code and
    the license is free again at once."""
    child, report_path = katalon.child(exit=code)
    process = katalon.run("run", "--ephemeral", "--verbose", "--", *child)

    assert process.process.returncode == code, process.stderr
    session = EngineSession.objects.get()
    environment = read_report(report_path)["env"]
    assert environment["KATALON_LICENSE_SESSION_ID"] == session.public_id
    assert environment["KATALON_LICENSE_ORG_ID"] == portal.organization.public_id
    assert environment["KATALON_LICENSE_ORG_NAME"] == "Acme QA"
    assert environment["KATALON_LICENSE_PRODUCT"] == "RE"
    assert environment["KATALON_LICENSE_MACHINE_ID"] == session.machine.machine_id
    assert environment["KATALON_LICENSE_HEARTBEAT_INTERVAL_SECONDS"] == "10"
    assert environment["KATALON_LICENSE_LEASE_EXPIRES_AT"].endswith("Z")
    assert session.end_reason == "released"
    assert not Machine.objects.registered().exists(), "an --ephemeral machine is deregistered with its session"
    assert f"session {session.public_id}" in process.stderr
    assert process.stdout == ""


def test_the_default_machine_id_is_stable_and_reveals_neither_host_nor_user(katalon, portal):
    """Two runs by one user on one host register one machine, under an id that is a hash."""
    for _ in range(2):
        child, _report = katalon.child()
        assert katalon.run("run", "--", *child).process.returncode == 0
    machine_ids = set(EngineSession.objects.values_list("machine__machine_id", flat=True))
    assert len(machine_ids) == 1
    (machine_id,) = machine_ids
    assert len(machine_id) == 40 and int(machine_id, 16) >= 0
    assert os.uname().nodename not in machine_id


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_reaches_the_command_and_the_license_is_released(katalon, number):
    """SIGTERM or SIGINT to the client goes on to the command; when it exits, the client releases
    the license and exits with the command's code."""
    child, report_path = katalon.child(wait_for="never", on_signal=42)
    process = katalon.start("run", "--", *child)
    read_report(report_path)

    os.kill(process.pid, number)

    assert process.finish() == 42
    assert (report_path.with_name(report_path.name + ".signals")).read_text() == signal.Signals(number).name + "\n"
    assert EngineSession.objects.get().end_reason == "released"


def test_heartbeats_keep_a_short_lease_alive(katalon, portal):
    """The client renews the lease at the portal's interval: a session whose lease would have run
    out during the run is still live when the command ends, and is released, not expired."""
    child, report_path = katalon.child(wait_for=katalon.tmp_path / "finish")
    process = katalon.start("run", "--verbose", "--", *child)
    read_report(report_path)
    # Bring the lease's end closer, as if most of it had passed: it runs out 13 s from now unless a
    # heartbeat renews it (the first is due 10 s after activation).
    with portal.quiet():
        EngineSession.objects.update(lease_expires_at=timezone.now() + timedelta(seconds=13))
        lease_ran_out_at = time.monotonic() + 13

    process.wait_for_stderr(r"heartbeat: lease of s_\S+ runs until")
    time.sleep(max(0.0, lease_ran_out_at - time.monotonic()) + 1)
    (katalon.tmp_path / "finish").touch()

    assert process.finish() == 0, process.stderr
    session = EngineSession.objects.get()
    assert session.end_reason == "released"
    assert session.last_heartbeat_at > session.started_at
    assert "license lost" not in process.stderr


def test_a_session_ended_by_an_admin_stops_the_command_with_stop_on_loss(katalon, portal):
    """When an admin ends the session, the client says why at its next heartbeat. With --stop-on-loss
    it stops the command (SIGTERM, then SIGKILL for one that ignores it) and exits 69; without, the
    command goes on and its own exit code stands."""
    stopped_child, stopped_report = katalon.child("stopped", ignore_sigterm=True, wait_for="never")
    stopped = katalon.start("run", "--stop-on-loss", "--kill-after", "1s", "--", *stopped_child)
    going_child, going_report = katalon.child("going", wait_for=katalon.tmp_path / "finish", exit=5)
    going_on = katalon.start("run", "--", *going_child)
    read_report(stopped_report)
    read_report(going_report)

    with portal.quiet():
        for session in EngineSession.objects.all():
            withdraw_session(organization=portal.organization, session=session, actor=portal.admin)

    assert stopped.finish() == 69
    assert "license lost: session_terminated" in stopped.stderr
    assert "(reason: withdrawn)" in stopped.stderr
    assert "sending SIGKILL" in stopped.stderr

    going_on.wait_for_stderr(r"license lost: session_terminated.*\(reason: withdrawn\)")
    assert going_on.process.poll() is None, "without --stop-on-loss the command goes on"
    (katalon.tmp_path / "finish").touch()
    assert going_on.finish() == 5


def test_a_command_that_does_not_exist_takes_no_license(katalon):
    """A typo in the command fails with the shell's 127 before any license is taken."""
    process = katalon.run("run", "--", "no-such-command-katalonc")
    assert process.process.returncode == 127
    assert "command not found: no-such-command-katalonc" in process.stderr
    assert not EngineSession.objects.exists()
