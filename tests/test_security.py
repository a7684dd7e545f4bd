import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_pages_carry_a_strict_content_security_policy(client, db):
    """Scripts may come only from the portal itself: no inline script, no eval."""
    response = client.get("/accounts/login/")
    policy = response.headers["Content-Security-Policy"]
    script_src = next(part for part in policy.split(";") if part.strip().startswith("script-src"))
    assert "'self'" in script_src
    assert "unsafe-inline" not in policy
    assert "unsafe-eval" not in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["X-Frame-Options"] == "DENY"


def test_unknown_page_is_the_portals_404_not_a_debug_page(client, db):
    """Production settings never show Django's debug page."""
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "Not found" in body
    assert "Traceback" not in body and "URLconf" not in body


def _manage(*args, **env):
    # The suite's own environment (tests.testenv) is not a deployment's: start from the bare one.
    test_only = {"DEBUG", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "DJANGO_ALLOW_ASYNC_UNSAFE", "EMAIL_URL"}
    environment = {k: v for k, v in os.environ.items() if k not in test_only}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_production_settings():
    """With DEBUG off and a real secret key, `check --deploy` prints no warning."""
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="false",
        SECRET_KEY="a-real-production-secret-" + "x" * 40,
        ALLOWED_HOSTS="licenses.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stdout + result.stderr


def test_production_refuses_the_development_secret_key():
    """Forgetting SECRET_KEY in production stops the portal instead of running with a public key."""
    environment = {"DEBUG": "false", "ALLOWED_HOSTS": "licenses.example.com"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "SECRET_KEY"} | environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


@pytest.mark.parametrize("header", ["Strict-Transport-Security"])
def test_hsts_is_on_when_debug_is_off(header):
    """Without DEBUG, HSTS defaults to one year (checked through the settings a real deployment gets)."""
    result = _manage(
        "shell",
        "-c",
        "from django.conf import settings; print(settings.SECURE_HSTS_SECONDS, settings.SECURE_SSL_REDIRECT, "
        "settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)",
        DEBUG="false",
        SECRET_KEY="a-real-production-secret-" + "x" * 40,
        ALLOWED_HOSTS="licenses.example.com",
    )
    assert result.stdout.splitlines()[-1].split() == ["31536000", "True", "True", "True"], result.stderr
