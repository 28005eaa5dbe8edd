"""The benchmarks' throwaway Loupe leaves nothing behind: no var/secret-key.txt in the checkout
(the settings' single-machine default) and no temporary folder holding its imported images."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_python


def test_throwaway_site_writes_no_secret_key_file_and_removes_its_folder():
    code = (
        "import sys\n"
        "def guard(event, args):\n"
        "    if event == 'open' and 'secret-key' in str(args[0]):\n"
        "        raise RuntimeError(f'opened {args[0]}')\n"
        "sys.addaudithook(guard)\n"
        "from benchmarks.throwaway import throwaway_site\n"
        "tmp, user = throwaway_site('loupe-test-throwaway-')\n"
        "from django.conf import settings\n"
        "assert settings.SECRET_KEY and user.is_superuser\n"
        "print(tmp)\n"
    )
    done = run_python(code, drop_env=("SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DATABASE_URL"))
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("loupe-test-throwaway-")
    assert not folder.exists()
