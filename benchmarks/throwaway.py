"""The benchmarks' own Loupe: a temporary SQLite database and media folder, migrated, so a run
touches nothing of the developer's (``var/``) and needs no server."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from pathlib import Path


def throwaway_secret_key() -> None:
    """A random ``SECRET_KEY`` for this process unless one is set: without it, importing the
    settings makes ``var/secret-key.txt`` in the checkout (the single-machine default)."""
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))


def throwaway_site(prefix: str):
    """Set Django up on a new temporary folder, removed when the process exits (it holds the
    database and every imported image: a copy of the datasets); returns (the folder, a
    superuser 'bench')."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["MEDIA_ROOT"] = str(tmp / "media")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inspection.settings")
    throwaway_secret_key()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return tmp, get_user_model().objects.create_superuser("bench", "", "bench-password-1")
