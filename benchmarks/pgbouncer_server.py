"""A throwaway PgBouncer in transaction-pooling mode in front of a PostgreSQL server, for the engine API
benchmark and the suite's test that runs the concurrency tests through it.

It runs Debian's `pgbouncer` binary with a generated configuration on a free loopback port, as the
current user (as `nobody` when that is root, which PgBouncer refuses to run as), never the system
service, and removes everything when the `with` block ends."""

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

# Every web process holds one persistent connection to PgBouncer; PgBouncer holds at most this many
# to PostgreSQL for each database and user, and lends them out one transaction at a time.
POOL_SIZE = 20


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgBouncer:
    def __init__(self, server_url, pool_size=POOL_SIZE):
        """`server_url`: postgres://user[:password]@host:port/any — the PostgreSQL server to pool."""
        parts = urlsplit(server_url)
        self.user = parts.username or "postgres"
        self.password = parts.password or ""
        self.host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 5432
        self.pool_size = pool_size
        self.port = None
        self.process = None
        self.directory = None

    def url(self, database, **options):
        """A DATABASE_URL that reaches `database` through this PgBouncer, with the options pooling needs."""
        credentials = quote(self.user) + (":" + quote(self.password) if self.password else "")
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"postgres://{credentials}@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def __enter__(self):
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install -y pgbouncer)")
        self.directory = Path(tempfile.mkdtemp(prefix="katalon-pgbouncer-"))
        # Readable by the unprivileged user PgBouncer drops to when started as root.
        self.directory.chmod(0o755)
        self.port = free_port()
        users = self.directory / "users.txt"
        users.write_text(f'"{self.user}" "{self.password}"\n')
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.host} port={self.upstream_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nmax_client_conn = 500\n"
            # Drivers send it; PgBouncer cannot keep it per client, and it changes nothing Django relies on.
            "ignore_startup_parameters = extra_float_digits\n"
            # A test database is dropped at the end of a run: do not keep its server connections around.
            "server_idle_timeout = 5\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        for path in (users, config):
            path.chmod(0o644)
        command = [binary, str(config)]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        self.log = (self.directory / "pgbouncer.log").open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"pgbouncer did not start: {self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self):
        with contextlib.suppress(OSError):
            return (self.directory / "pgbouncer.log").read_text()[-2000:]
        return ""

    def __exit__(self, *exc_info):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.directory is not None:
            self.log.close()
            shutil.rmtree(self.directory, ignore_errors=True)
