"""The one Celery app. Queues: ``cpu`` and ``gpu`` (optionally prefixed by LOUPE_QUEUE_PREFIX).

Start a worker with ``celery -A workers.celery worker -Q cpu,gpu``.
"""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inspection.settings")

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
    from inspection.services.jobs import jobs_requeue_stale

    jobs_requeue_stale()
