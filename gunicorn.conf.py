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
