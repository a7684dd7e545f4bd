"""Loaded with -p before Django reads its settings: the suite runs with production-like
settings (DEBUG off), but over plain HTTP on localhost."""

import os

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-that-is-long-enough-to-look-real-0123456789")
os.environ["DEBUG"] = "false"
os.environ["SECURE_SSL_REDIRECT"] = "false"
os.environ["SECURE_HSTS_SECONDS"] = "0"
os.environ["ALLOWED_HOSTS"] = "localhost,127.0.0.1,testserver"
# Playwright's sync API runs an event loop in the test thread; the database calls the tests
# make beside it are still synchronous.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
# Rate limits count in this process's memory unless a test points them at Redis itself; a CACHE_URL
# in a developer's .env must not send the suite's counters (or a clear()) to a shared server.
os.environ["CACHE_URL"] = "locmemcache://"
