"""Start Django for a benchmark script: production settings (DEBUG off), served over plain HTTP to
the test client. Scripts run as `python benchmarks/NAME.py`, so this module is importable as is."""

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup():
    sys.path.insert(0, str(ROOT))
    # Benchmarks serve no static files; collectstatic's output is not needed.
    warnings.filterwarnings("ignore", message="No directory at")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "katalon_admin.settings")
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key-long-enough-to-look-real-0123456789")
    os.environ["DEBUG"] = "false"
    os.environ["SECURE_SSL_REDIRECT"] = "false"
    os.environ["ALLOWED_HOSTS"] = "testserver,localhost"
    import django

    django.setup()
