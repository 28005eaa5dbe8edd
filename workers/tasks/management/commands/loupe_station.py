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
        # before torch and OpenVINO are imported (by the first model load): a station machine
        # runs the station and little else, so every core unless LOUPE_STATION_THREADS (or
        # OMP_NUM_THREADS) says otherwise — 256 px PaDiM on OpenVINO took 52.5 ms per 1080p
        # frame with one thread of the 2-core dev machine, 42.5 ms with two (docs/stations.md,
        # benchmarks/station.py). Idle OpenMP threads sleep instead of spinning, as in the
        # worker (workers/celery.py).
        os.environ.setdefault(
            "OMP_NUM_THREADS",
            os.environ.get("LOUPE_STATION_THREADS") or str(os.cpu_count() or 1),
        )
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from workers.tasks.stations import StationProcess

        process = StationProcess(name, until_idle=until_idle, log=self._log)
        raise SystemExit(process.run())

    def _log(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()
