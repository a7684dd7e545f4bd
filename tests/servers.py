"""Real servers for the reliability proofs (docs/RELIABILITY.md): the portal in gunicorn, a throwaway
PostgreSQL cluster the test may stop, start and cut connections of, and plain-HTTP callers.

Ports come from RELIABILITY_PORTS (gunicorn, default 8400-8499) and RELIABILITY_PG_PORTS (throwaway
clusters, default 55400-55499), so parallel runs on one machine can be given ranges of their own."""

import contextlib
import glob
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import psycopg2

ROOT = Path(__file__).resolve().parent.parent


def _port_range(variable, default):
    first, _, last = os.environ.get(variable, default).partition("-")
    return range(int(first), int(last or first) + 1)


def bound_socket(variable="RELIABILITY_PORTS", default="8400-8499"):
    """A listening socket on the first free port of the range, for gunicorn to take over (fd://)."""
    for port in _port_range(variable, default):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(2048)
        return sock
    raise RuntimeError(f"no free port in {variable}={os.environ.get(variable, default)}")


def free_port(variable, default):
    sock = bound_socket(variable, default)
    port = sock.getsockname()[1]
    sock.close()
    return port


class Gunicorn:
    """The portal in gunicorn (the repository's gunicorn.conf.py) with `workers` processes of
    `threads` threads, its database `database_url`. Stop it before the database goes away."""

    def __init__(self, database_url, log_path, *, workers=2, threads=4, environment=None):
        self.listener = bound_socket()
        self.port = self.listener.getsockname()[1]
        self.log_path = Path(log_path)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_SETTINGS_MODULE": "tests.served_settings",
            **(environment or {}),
        }
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    *("-m", "gunicorn", "katalon_admin.wsgi:application", "-c", "gunicorn.conf.py"),
                    *("--bind", f"fd://{self.listener.fileno()}", "--graceful-timeout", "3"),
                ],
                cwd=ROOT,
                env=env,
                pass_fds=(self.listener.fileno(),),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_up(workers)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, characters=4000):
        return self.log_path.read_text(errors="replace")[-characters:]

    def _wait_until_up(self, workers, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited at start:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if len(self.worker_pids()) >= workers and call(self.port, "GET", "/api/v1/openapi.json").status == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"gunicorn did not come up:\n{self.log_tail()}")

    def worker_pids(self):
        pids = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    pids.append(int(stat.split("/")[2]))
        return pids

    def worker_serving(self, client_port):
        """The worker process holding the accepted connection whose peer is our `client_port`."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    columns = line.split()
                    local_port, remote_port = (int(column.rsplit(":", 1)[1], 16) for column in columns[1:3])
                    inode = columns[9]
                    if local_port == self.port and remote_port == client_port:
                        inodes.add(f"socket:[{inode}]")
        for pid in self.worker_pids():
            for descriptor in glob.glob(f"/proc/{pid}/fd/*"):
                with contextlib.suppress(OSError):
                    if os.readlink(descriptor) in inodes:
                        return pid
        return None

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.listener.close()


@dataclass
class Answer:
    status: int  # 0: no HTTP answer at all (the connection was dropped)
    headers: dict = field(default_factory=dict)
    body: bytes = b""
    error: str = ""
    set_cookies: list = field(default_factory=list)

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def code(self):
        body = self.json()
        return body.get("error", {}).get("code") if isinstance(body, dict) else None


def call(port, method, path, body=None, headers=None, timeout=120, on_connected=None):
    """One request on a new connection; an Answer, with status 0 if the server dropped it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
        all_headers.update(headers or {})
        connection.connect()
        if on_connected is not None:
            on_connected(connection.sock.getsockname()[1])
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
            set_cookies=[v for k, v in response.getheaders() if k.lower() == "set-cookie"],
        )
    except (OSError, http.client.HTTPException) as error:
        return Answer(0, error=f"{type(error).__name__}: {error}")
    finally:
        connection.close()


def activate(port, raw_key, machine_id, idempotency_key=None, **fields):
    headers = {"Authorization": f"Bearer {raw_key}"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return call(port, "POST", "/api/v1/engine/activate", {"product": "RE", "machine_id": machine_id, **fields}, headers)


def all_at_once(calls):
    """Each call from its own thread, released together by a barrier; the answers in order."""
    barrier = threading.Barrier(len(calls))
    answers = [None] * len(calls)

    def run(index):
        barrier.wait()
        try:
            answers[index] = calls[index]()
        except Exception as error:  # a bug in the test's own call, kept to be reported
            answers[index] = Answer(0, error=repr(error))

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


class Browser:
    """A person at the pages over HTTP: cookies kept, the CSRF token read from each form."""

    CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')

    def __init__(self, port):
        self.port = port
        self.cookies = {}
        self.csrf_token = None

    def request(self, method, path, form=None):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode({"csrfmiddlewaretoken": self.csrf_token, **form}, doseq=True).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Origin"] = f"http://127.0.0.1:{self.port}"
        answer = call(self.port, method, path, body, headers)
        for header in answer.set_cookies:
            cookie = SimpleCookie()
            cookie.load(header)
            self.cookies.update({name: morsel.value for name, morsel in cookie.items()})
        match = self.CSRF_FIELD.search(answer.body.decode(errors="replace"))
        if match:
            self.csrf_token = match.group(1)
        return answer

    def sign_in(self, email, password):
        self.request("GET", "/accounts/login/")
        answer = self.request("POST", "/accounts/login/", {"username": email, "password": password})
        assert answer.status == 302, (answer.status, answer.body[:2000])
        assert "sessionid" in self.cookies


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own, in a temporary directory on a free port of
    RELIABILITY_PG_PORTS (default 55400-55499), that a test may stop and start: never the shared server.
    As root, the server runs as the `postgres` OS user (PostgreSQL refuses to run as root)."""

    def __init__(self):
        self.bin = self.find_bin()
        self.directory = Path(tempfile.mkdtemp(prefix="katalon-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port("RELIABILITY_PG_PORTS", "55400-55499")
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres")
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    @staticmethod
    def find_bin():
        if os.environ.get("PG_BIN"):
            return Path(os.environ["PG_BIN"])
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if found:
            return Path(found[-1]).parent
        initdb = shutil.which("initdb")
        return Path(initdb).parent if initdb else None

    def _run(self, program, *arguments):
        kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}
        result = subprocess.run(
            [str(self.bin / program), *map(str, arguments)], capture_output=True, text=True, timeout=120, **kwargs
        )
        if result.returncode != 0:
            raise AssertionError(f"{program} failed: {result.stdout}{result.stderr}\n{self.log_tail()}")

    def log_tail(self):
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""

    def start(self):
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        self._run("pg_ctl", "-D", self.data, "-o", options, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database="postgres"):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database="postgres", autocommit=True):
        connection = psycopg2.connect(self.url(database), connect_timeout=5)
        connection.autocommit = autocommit
        return connection

    def query(self, sql, parameters=(), database="postgres"):
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, parameters)
                return cursor.fetchall() if cursor.description else None
        finally:
            connection.close()

    def destroy(self):
        with contextlib.suppress(AssertionError, OSError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
