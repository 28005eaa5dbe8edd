"""manage.py loupe_station NAME: run one line station (docs/stations.md)."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Inspect a station's camera, stream, video or folder with its project's active model, "
        "until stopped (SIGTERM / Ctrl+C). One process per station."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the station's name (its page shows it)")
        parser.add_argument(
            "--until-idle",
            action="store_true",
            help="stop when the video ended or the folder has no new file (one-off runs)",
        )

    def handle(self, *args, name: str, until_idle: bool, **options):
        # before torch is imported (by the first model load): as for the Celery worker
        # (workers/celery.py), half the cores unless LOUPE_WORKER_THREADS / OMP_NUM_THREADS say,
        # and idle OpenMP threads that sleep instead of spinning
        os.environ.setdefault(
            "OMP_NUM_THREADS",
            os.environ.get("LOUPE_WORKER_THREADS") or str(max(1, (os.cpu_count() or 2) // 2)),
        )
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from workers.tasks.stations import StationProcess

        process = StationProcess(name, until_idle=until_idle, log=self._log)
        raise SystemExit(process.run())

    def _log(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()
