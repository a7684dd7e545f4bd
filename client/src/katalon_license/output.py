"""Everything the client writes: one-line messages on stderr, JSON on stdout. Every line passes
through `redact`, so the API key cannot reach a log even if some message were to carry it."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

PREFIX = "katalon-license: "
REDACTED = "[redacted]"


class Output:
    def __init__(
        self,
        *,
        secrets: tuple[str, ...] = (),
        verbose: bool = False,
        quiet: bool = False,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ):
        self.secrets = tuple(secret for secret in secrets if secret)
        self.verbose = verbose
        self.quiet = quiet
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        # The heartbeat thread writes too; lines must not interleave.
        self._lock = threading.Lock()

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _line(self, text: str) -> None:
        one_line = " ".join(self.redact(text).split())
        with self._lock:
            try:
                self.stderr.write(PREFIX + one_line + "\n")
                self.stderr.flush()
            except (OSError, ValueError):
                # stderr closed (a CI runner that went away): the run itself must go on.
                pass

    def info(self, text: str) -> None:
        if not self.quiet:
            self._line(text)

    def debug(self, text: str) -> None:
        if self.verbose:
            self._line(text)

    def warning(self, text: str) -> None:
        self._line("warning: " + text)

    def error(self, text: str) -> None:
        self._line("error: " + text)

    def json(self, document: Any) -> None:
        with self._lock:
            self.stdout.write(self.redact(json.dumps(document, indent=2, ensure_ascii=False)) + "\n")
            self.stdout.flush()
