"""HTTPS from the environment (`check --deploy` clean) and a Content-Security-Policy header."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HTTPS_WARNINGS = ("security.W004", "security.W008", "security.W012", "security.W016")


def deploy_check(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "LOUPE_HTTPS")}
    environ.update({"SECRET_KEY": "k" * 60 + "-not-a-default-" + "x" * 20, **env})
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    return done.stdout + done.stderr


def test_loupe_https_switches_on_what_check_deploy_asks_for():
    plain = deploy_check()
    assert all(w in plain for w in HTTPS_WARNINGS), plain  # the one-machine default: plain HTTP
    https = deploy_check(LOUPE_HTTPS="true", LOUPE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    assert not [w for w in HTTPS_WARNINGS if w in https], https
    # each setting also on its own
    one = deploy_check(SESSION_COOKIE_SECURE="true")
    assert "security.W012" not in one and "security.W008" in one


@pytest.mark.django_db
def test_https_redirects_and_trusts_the_proxy_header(settings, client):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    r = client.get("/login/")
    assert r.status_code == 301 and r["Location"].startswith("https://")
    r = client.get("/login/", HTTP_X_FORWARDED_PROTO="https")
    assert r.status_code == 200


@pytest.mark.django_db
def test_pages_carry_a_content_security_policy_with_a_nonce(team, client):
    client.force_login(team["admin"])
    r = client.get("/jobs/")
    policy = r["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "object-src 'none'" in policy
    assert "unsafe-eval" not in policy and "frame-ancestors 'self'" in policy
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    # the page's inline script carries it; nothing inline runs without it
    html = r.content.decode()
    assert f'<script nonce="{nonce}">' in html
    assert "<script>" not in html
    # only the drawing pages (PixiJS) may eval
    image_page = client.get(f"/projects/{team['project'].pk}/review/")
    assert "'unsafe-eval'" in image_page["Content-Security-Policy"]
