"""gunicorn's settings for the portal (README, Production): `gunicorn katalon_admin.wsgi -c gunicorn.conf.py`.

The figures behind these choices are in docs/PERFORMANCE.md (engine API benchmark, worker sweep).
Every setting can still be overridden on the command line or with GUNICORN_CMD_ARGS.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# The engine API spends its time in Python and waits on the database for a fraction of it: on the
# measured 2-core machine a few more processes than cores keep the CPUs busy while one waits.
workers = int(os.environ.get("WEB_CONCURRENCY", (os.cpu_count() or 1) * 2))
worker_class = "sync"
# Load the application once in the master: workers start faster and share its memory.
preload_app = True
timeout = 30
graceful_timeout = 30
