"""The one Celery app and its configuration; nothing else (no app code is imported here).

Queues: ``cpu`` and ``gpu`` (optionally prefixed by LOUPE_QUEUE_PREFIX). Start a worker with
``celery -A workers.celery worker -Q cpu,gpu`` (add ``-B`` to run beat's maintenance schedule
in the same process). Celery's Django fixup sets Django up when the worker starts; the
``workers.tasks`` app then imports every job module, which registers its task on this app.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inspection.settings")
# torch, OpenVINO (which follows torch) and OpenBLAS size their thread pools from this when they
# are first imported, which in a worker is inside the first ML job. All cores' threads in a
# worker that shares its CPUs with the web server and libvips ran 30-100x slower on 2 cores
# (docs/operations.md): half the cores by default, LOUPE_WORKER_THREADS to choose, and an
# operator's own OMP_NUM_THREADS wins.
os.environ.setdefault(
    "OMP_NUM_THREADS",
    os.environ.get("LOUPE_WORKER_THREADS") or str(max(1, (os.cpu_count() or 2) // 2)),
)

# Idle OpenMP threads sleep instead of spinning: torch eager with 2 spinning threads next to
# another busy process burned 1.4-3.1 s of CPU per detector forward on the 2-core machine
# (docs/operations.md). An operator's own OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = Celery("loupe")
# CELERY_* settings, beat's schedule (CELERY_BEAT_SCHEDULE) included
app.config_from_object("django.conf:settings", namespace="CELERY")
