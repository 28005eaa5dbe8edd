"""The one Celery app. Queues: ``cpu`` and ``gpu`` (optionally prefixed by LOUPE_QUEUE_PREFIX).

Start a worker with ``celery -A workers.celery worker -Q cpu,gpu``.
"""

import os

from celery import Celery
from celery.signals import worker_ready

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

app = Celery("loupe")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Every job kind's module; each registers its task with the runner.
app.conf.imports = (
    "workers.tasks.pyramid",
    "workers.tasks.imports",
    "workers.tasks.anomaly",
    "workers.tasks.datasets",
)


@worker_ready.connect
def _sweep_stale_jobs_on_start(**_kwargs) -> None:
    """A worker that starts after a crash re-queues the jobs the dead worker left 'running'."""
    from annotations.datasets import dataset_exports_prune
    from inspection.services.jobs import jobs_requeue_stale

    jobs_requeue_stale()
    dataset_exports_prune()
