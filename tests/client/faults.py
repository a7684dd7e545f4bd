"""Real faults for the retry tests: a TCP proxy to PostgreSQL that the test cuts and restores, and
the portal served by gunicorn in its own process through that proxy."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


class CuttableProxy:
    """Forwards TCP connections to `target`. `cut()` drops every open connection and closes each new
    one at once, as a database that went away does; `restore()` lets connections through again."""

    def __init__(self, target):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self._sockets = set()
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.open:
                downstream.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((downstream, upstream))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                self._drop(end)

    def _drop(self, end):
        with self._lock:
            self._sockets.discard(end)
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()

    def cut(self):
        self.open = False
        with self._lock:
            ends = list(self._sockets)
        for end in ends:
            self._drop(end)

    def restore(self):
        self.open = True

    def close(self):
        self.cut()
        self.listener.close()


class GunicornPortal:
    """The portal in a gunicorn process on a port the test bound (port 0, handed over as fd://),
    with `database_url` as its database."""

    def __init__(self, database_url, log_path):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        environment = {**os.environ, "DATABASE_URL": database_url}
        self.log = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "katalon_admin.wsgi",
                "--bind",
                f"fd://{self.listener.fileno()}",
                "--workers",
                "1",
                "--graceful-timeout",
                "2",
            ],
            cwd=PROJECT,
            env=environment,
            pass_fds=(self.listener.fileno(),),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self):
        self.process.send_signal(signal.SIGINT)  # gunicorn's quick shutdown
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.listener.close()
        self.log.close()
