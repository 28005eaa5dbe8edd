"""A server database keeps each web thread's connection between requests (a new PostgreSQL
connection per request forks a server process: docs/benchmarks.md, "API under load")."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

READ = (
    "import json, django; django.setup(); from django.conf import settings; "
    "d = settings.DATABASES['default']; "
    "print(json.dumps([d['ENGINE'], d.get('CONN_MAX_AGE', 0), d.get('CONN_HEALTH_CHECKS')]))"
)


def database_settings(**env: str) -> list:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DB_CONN_MAX_AGE")}
    environ.update({"DJANGO_SETTINGS_MODULE": "inspection.settings", "SECRET_KEY": "x" * 60, **env})
    done = subprocess.run(
        [sys.executable, "-c", READ], cwd=ROOT, capture_output=True, text=True, env=environ
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_postgresql_connections_are_kept_and_checked_sqlite_ones_are_not():
    pg = "postgres://loupe@127.0.0.1:5432/loupe"
    assert database_settings(DATABASE_URL=pg) == ["django.db.backends.postgresql", 300, True]
    assert database_settings(DATABASE_URL=pg, DB_CONN_MAX_AGE="0")[1] == 0
    engine, age, _ = database_settings(DATABASE_URL="sqlite:////tmp/loupe-settings.sqlite3")
    assert engine == "django.db.backends.sqlite3" and age == 0
