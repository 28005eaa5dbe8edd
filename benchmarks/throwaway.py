"""The benchmarks' own Loupe: a temporary SQLite database and media folder, migrated, so a run
touches nothing of the developer's (``var/``) and needs no server."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def throwaway_site(prefix: str):
    """Set Django up on a new temporary folder; returns (the folder, a superuser 'bench')."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["MEDIA_ROOT"] = str(tmp / "media")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inspection.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return tmp, get_user_model().objects.create_superuser("bench", "", "bench-password-1")
