"""The generic Job: enqueue, cancel, progress, finish, and the stale-job sweep.

How a job runs (see workers/tasks/runner.py): the Job row is created, and on commit its id is
sent to the queue its kind belongs to. A worker claims it (queued -> running), writes a heartbeat
every LOUPE_JOB_HEARTBEAT_SECONDS, and finishes it once. Celery acks the message only after the
task returns (acks_late), so a worker that dies mid-job leaves the message to be delivered again.

Stale jobs: a 'running' job whose heartbeat is older than LOUPE_JOB_STALE_SECONDS lost its worker.
``jobs_requeue_stale`` (run when any worker starts, by ``manage.py loupe_jobs --sweep``, and (at most every 30 s) each
time the job list is read) puts it back in its queue, up to LOUPE_JOB_MAX_ATTEMPTS tries, after
which it fails with a plain message. A redelivered message for a job that is already running
elsewhere or finished is ignored, so a job never runs twice at once.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from inspection.models import Job, Project, Role
from inspection.permissions import has_role, is_site_admin, require_role

log = logging.getLogger(__name__)

# Job kind -> queue. GPU work (training, inference) goes to 'gpu'; everything else to 'cpu'.
JOB_QUEUES: dict[str, str] = {
    "pyramid": "cpu",
    "import_mvtec": "cpu",
    "export": "cpu",
    "dataset_import": "cpu",
    "anomaly_train": "gpu",
    "anomaly_inspect": "gpu",
    "detection_train": "gpu",
    "detection_predict": "gpu",
}

JOB_LABELS: dict[str, str] = {
    "pyramid": "Image pyramids",
    "import_mvtec": "MVTec AD import",
    "export": "Dataset export",
    "anomaly_train": "Anomaly model training",
    "anomaly_inspect": "Inspection run",
    "detection_train": "Detector training",
    "detection_predict": "Detection run",
    "dataset_import": "Dataset import",
}


def task_name(kind: str) -> str:
    return f"loupe.job.{kind}"


def queue_name(kind: str) -> str:
    return settings.LOUPE_QUEUE_PREFIX + JOB_QUEUES[kind]


def job_enqueue(
    *, kind: str, user=None, project: Project | None = None, payload: dict | None = None
) -> Job:
    """Create a job and send it to its queue once the surrounding transaction commits."""
    if kind not in JOB_QUEUES:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job.objects.create(
        kind=kind,
        queue=JOB_QUEUES[kind],
        project=project,
        created_by=user if user is not None and user.is_authenticated else None,
        payload=payload or {},
        message="Waiting for a worker",
    )
    transaction.on_commit(lambda: _send(job))
    return job


def _send(job: Job) -> None:
    from workers.celery import app

    app.send_task(task_name(job.kind), args=[str(job.id)], queue=queue_name(job.kind))


def job_visible_to(user, job: Job) -> bool:
    if is_site_admin(user):
        return True
    if job.project_id is None:
        return job.created_by_id == user.id
    return has_role(user, job.project, Role.ANNOTATOR)


def job_cancel(*, user, job: Job) -> Job:
    """Cancel a job: at once when queued; cooperatively (at its next progress report) when running."""
    if job.project_id is not None:
        require_role(user, job.project, Role.ANNOTATOR)
    elif not (is_site_admin(user) or job.created_by_id == user.id):
        raise PermissionDenied("Only its starter or a site admin can cancel this job.")
    is_admin = is_site_admin(user) or (
        job.project_id is not None and has_role(user, job.project, Role.ADMIN)
    )
    if job.created_by_id != user.id and not is_admin:
        raise PermissionDenied(
            "Only the person who started a job or a project admin can cancel it."
        )
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.is_finished:
            raise ValidationError(f"This job already {job.status}; there is nothing to cancel.")
        job.cancel_requested = True
        if job.status == Job.Status.QUEUED:
            job.status = Job.Status.CANCELLED
            job.finished_at = timezone.now()
            job.message = f"Cancelled by {user.username} before it started"
        else:
            job.message = f"Cancelling (asked by {user.username})"
        job.save(update_fields=["cancel_requested", "status", "finished_at", "message"])
    return job


def jobs_requeue_stale(*, now=None) -> list[Job]:
    """Re-queue (or fail, after too many tries) running jobs whose worker stopped heart-beating."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.LOUPE_JOB_STALE_SECONDS)
    touched: list[Job] = []
    stale_ids = list(
        Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff).values_list(
            "id", flat=True
        )
    )
    for job_id in stale_ids:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update()
                .filter(pk=job_id, status=Job.Status.RUNNING, heartbeat_at__lt=cutoff)
                .first()
            )
            if job is None:
                continue
            if job.cancel_requested:
                job.status = Job.Status.CANCELLED
                job.finished_at = now
                job.message = "Cancelled (its worker stopped)"
            elif job.attempts >= settings.LOUPE_JOB_MAX_ATTEMPTS:
                job.status = Job.Status.FAILED
                job.finished_at = now
                job.error = (
                    f"The worker running this job stopped responding {job.attempts} times "
                    "(killed or out of memory?); giving up."
                )
                job.message = "Failed: worker lost"
            else:
                job.status = Job.Status.QUEUED
                job.message = f"Re-queued: its worker {job.worker or ''} stopped responding".strip()
                transaction.on_commit(lambda j=job: _send(j))
            job.save()
            log.warning("stale job %s -> %s", job.id, job.status)
            touched.append(job)
    return touched


_last_sweep = 0.0


def jobs_requeue_stale_throttled(every_seconds: float = 30.0) -> None:
    """The stale sweep, at most once per ``every_seconds`` per process (job lists poll often)."""
    import time

    global _last_sweep
    now = time.monotonic()
    if now - _last_sweep >= every_seconds:
        _last_sweep = now
        jobs_requeue_stale()
