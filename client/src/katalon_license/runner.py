"""`katalon-license run`: a license around one command.

activate (waiting in line if asked) -> start the command with the license in its environment ->
heartbeat while it runs -> release, however the run ends -> exit with the command's code.

The command runs in its own process group, so a signal the client passes on reaches everything the
command started (a test engine's browsers too), and a Ctrl-C meant for the client reaches the command
once, not twice. When the client runs in the foreground of a terminal it hands the terminal to that
group, as a shell does, so an interactive command still reads its keyboard.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from .durations import format_duration
from .errors import EX_UNAVAILABLE, ClientError, Interrupted
from .licensing import ActivationRequest, Heartbeat, License, Licensing, Loss
from .output import Output

FORWARDED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
COMMAND_NOT_FOUND, COMMAND_NOT_EXECUTABLE = 127, 126  # what shells exit with


class SignalCatcher:
    """Holds SIGINT, SIGTERM and SIGHUP for as long as the client runs. Before the command starts a
    signal ends any wait (`sleep` raises Interrupted); while it runs, the signal goes on to the
    command's process group; after, it cuts the release's retries short."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.child: subprocess.Popen | None = None
        self._event = threading.Event()
        self._previous: dict = {}

    def __enter__(self) -> SignalCatcher:
        for number in FORWARDED_SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame) -> None:
        self.received.append(number)
        self._event.set()
        if self.child is not None:
            send_to_command(self.child, number)

    def sleep(self, seconds: float) -> None:
        if self._event.wait(seconds):
            raise Interrupted(self.received[-1])

    def check(self) -> None:
        if self.received:
            raise Interrupted(self.received[-1])

    def rearm(self) -> None:
        """Forget the signals so far, so that only a new one interrupts what comes next."""
        self._event.clear()


def send_to_command(child: subprocess.Popen, number: int) -> None:
    try:
        if os.name == "posix":
            os.killpg(child.pid, number)
        elif number == getattr(signal, "SIGKILL", None):
            child.kill()
        else:
            child.send_signal(number)
    except OSError:
        pass  # it is gone already


def start_command(command: list[str], environment: dict[str, str]) -> subprocess.Popen:
    options: dict = {}
    if os.name == "posix":
        if sys.version_info >= (3, 11):
            options["process_group"] = 0
        else:
            # No other thread runs yet (the heartbeat starts after), which is when preexec_fn is safe.
            options["preexec_fn"] = os.setpgrp
    return subprocess.Popen(command, env=environment, **options)  # noqa: S603 (the user's own command)


def give_terminal_to(child: subprocess.Popen) -> int | None:
    """Make the command's group the terminal's foreground group, when the client holds it; returns
    the terminal's descriptor to take it back from."""
    if os.name != "posix":
        return None
    try:
        descriptor = sys.stdin.fileno()
        if not os.isatty(descriptor) or os.tcgetpgrp(descriptor) != os.getpgrp():
            return None
        os.tcsetpgrp(descriptor, child.pid)
        return descriptor
    except (OSError, ValueError, AttributeError):
        return None


def take_terminal_back(descriptor: int | None) -> None:
    if descriptor is None:
        return
    # A background group asking for the terminal gets SIGTTOU unless it ignores it for the moment.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(descriptor, os.getpgrp())
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, previous)


def exit_status(returncode: int) -> int:
    """A shell's $? for the command: its exit code, or 128 + the signal that killed it."""
    return returncode if returncode >= 0 else 128 - returncode


@dataclass
class RunOptions:
    request: ActivationRequest
    command: list[str]
    wait: int | None = None
    stop_on_loss: bool = False
    kill_after: float = 10.0


def take_license(licensing: Licensing, request: ActivationRequest, wait: int | None, signals: SignalCatcher) -> License:
    """activate, giving a license straight back if a signal came while the portal granted it."""
    granted = licensing.activate(request, wait=wait)
    if signals.received:
        signals.rearm()
        release(licensing, granted, signals, output=None)
        signals.check()
    return granted


def release(
    licensing: Licensing,
    granted: License,
    signals: SignalCatcher,
    output: Output | None,
    lease_deadline: float | None = None,
) -> bool:
    """Give the license back, retrying while the portal is unreachable, but not past --connect-timeout
    nor past the lease's end (by then it has freed itself), and not after a new signal."""
    deadline = lease_deadline if lease_deadline is not None else granted.lease_deadline
    budget = max(0.0, min(licensing.connect_timeout, deadline - licensing.clock()))
    try:
        licensing.release(granted.session_id, budget=budget, sleep=signals.sleep)
    except ClientError as failure:
        if output is not None:
            output.warning(
                f"could not release session {granted.session_id} ({failure}); its license frees itself when "
                "the lease runs out"
            )
        return False
    if output is not None:
        output.info(f"released session {granted.session_id}")
    return True


def run(licensing: Licensing, options: RunOptions, output: Output) -> int:
    if shutil.which(options.command[0]) is None:
        # Checked before activating, so a typo costs no license.
        output.error(f"command not found: {options.command[0]}")
        return COMMAND_NOT_FOUND
    with SignalCatcher() as signals:
        licensing.sleep = signals.sleep
        try:
            granted = take_license(licensing, options.request, options.wait, signals)
        except Interrupted as interruption:
            output.info("stopped before the command started; nothing is held")
            return interruption.exit_code
        output.info(granted.describe())
        return _run_licensed(licensing, granted, options, output, signals)


def _run_licensed(
    licensing: Licensing, granted: License, options: RunOptions, output: Output, signals: SignalCatcher
) -> int:
    environment = dict(os.environ)
    environment.update(granted.environment())
    seen = len(signals.received)
    try:
        child = start_command(options.command, environment)
    except OSError as failure:
        output.error(f"cannot run {options.command[0]}: {failure.strerror or failure}")
        release(licensing, granted, signals, output)
        return COMMAND_NOT_FOUND if isinstance(failure, FileNotFoundError) else COMMAND_NOT_EXECUTABLE
    signals.child = child
    for number in signals.received[seen:]:  # came while the command was starting
        send_to_command(child, number)
    terminal = give_terminal_to(child)

    heartbeat = Heartbeat(
        licensing,
        granted,
        on_loss=_on_loss(child, options, output),
        on_renew=lambda response: output.debug(
            f"heartbeat: lease of {granted.session_id} runs until {response.body['session']['lease_expires_at']}"
        ),
    )
    heartbeat.start()
    try:
        returncode = child.wait()
    finally:
        take_terminal_back(terminal)
        heartbeat.stop()
        signals.child = None
        signals.rearm()
        if heartbeat.loss is None or heartbeat.loss.code != "session_terminated":
            release(licensing, granted, signals, output, heartbeat.lease_deadline)
    if heartbeat.loss is not None and options.stop_on_loss:
        return EX_UNAVAILABLE
    return exit_status(returncode)


def _on_loss(child: subprocess.Popen, options: RunOptions, output: Output) -> Callable[[Loss], None]:
    def on_loss(loss: Loss) -> None:
        output.error(f"license lost: {loss.code}: {loss.message} (reason: {loss.reason})")
        if not options.stop_on_loss:
            output.warning("the command goes on without a license (--stop-on-loss would stop it)")
            return
        stop_command(child, options.kill_after, output)

    return on_loss


def stop_command(child: subprocess.Popen, kill_after: float, output: Output) -> None:
    output.info(f"stopping the command: SIGTERM now, SIGKILL after {format_duration(kill_after)}")
    send_to_command(child, signal.SIGTERM)
    try:
        child.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        output.warning(f"the command did not stop within {format_duration(kill_after)}; sending SIGKILL")
        send_to_command(child, getattr(signal, "SIGKILL", signal.SIGTERM))
