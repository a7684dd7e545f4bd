"""gunicorn's settings for the portal (README, Production): `gunicorn katalon_admin.wsgi -c gunicorn.conf.py`.

Chosen by measurement (docs/PERFORMANCE.md, "gunicorn configuration"): an engine API request spends
more than half its time waiting on PostgreSQL, so threads overlap those waits within one process,
and keep-alive spares a proxy that reuses connections a TCP handshake per request; the same
machine served more heartbeats with 2 processes of 4 threads than with 2 to 6 sync processes.
Every setting can still be overridden on the command line or with GUNICORN_CMD_ARGS.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# One process per CPU, each with a few threads: each thread holds its own persistent database
# connection, so a host opens workers x threads connections (size PgBouncer or max_connections for it).
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
# Longer than a reverse proxy's idle upstream connections wait between two requests.
keepalive = 5
# Load the application once in the master: workers start faster and share its memory.
preload_app = True
timeout = 30
graceful_timeout = 30

# Prometheus metrics across workers (README, Production): with PROMETHEUS_MULTIPROC_DIR set, each worker
# counts in files of its own there and /metrics sums them. Files left by an earlier run would carry its
# counts over, so the directory is emptied when the server starts, and a dead worker's files are marked.
_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def on_starting(server):
    if _metrics_dir:
        os.makedirs(_metrics_dir, exist_ok=True)
        for name in os.listdir(_metrics_dir):
            if name.endswith(".db"):
                os.remove(os.path.join(_metrics_dir, name))


def child_exit(server, worker):
    if _metrics_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
