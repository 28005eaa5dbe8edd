"""The one job runner. Every job kind goes through ``run_job``, which claims the Job row, keeps its
heartbeat, reports progress, honours cancellation, and records the outcome exactly once.

A task body is ``fn(job, ctx) -> dict``: ``ctx.progress(fraction, message)`` updates the bar (and
raises JobCancelled when someone pressed cancel); the returned dict becomes ``job.result``.
Raise ``JobError("plain words")`` for failures a user can act on; anything else is recorded with
its type and message, and the traceback is kept for admins.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from inspection.models import Job
from inspection.services.jobs import (
    job_ended_unfinished,
    job_kind_register,
    queue_name,
    worker_gone,
    worker_label,
)
from workers.celery import app

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job when its cancellation was requested."""


class JobError(Exception):
    """A failure whose message is meant for the user as it is."""


class JobContext:
    """Handed to job bodies: progress reporting and cooperative cancellation."""

    def __init__(self, job: Job, *, min_interval: float = 0.5) -> None:
        self.job = job
        self._last_write = 0.0
        self._min_interval = min_interval

    def progress(self, fraction: float, message: str = "", *, force: bool = False) -> None:
        value = round(max(0.0, min(1.0, fraction)) * 100, 1)
        now = time.monotonic()
        if not force and now - self._last_write < self._min_interval and value < 100:
            return
        self._last_write = now
        fields = {"progress": value, "heartbeat_at": timezone.now()}
        if message:
            fields["message"] = message[:500]
        Job.objects.filter(pk=self.job.pk).update(**fields)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
            raise JobCancelled()


def _claim(job_id: str) -> Job | None:
    """Move the job to 'running' unless it is finished or alive on another worker."""
    stale = timezone.now() - timezone.timedelta(seconds=settings.LOUPE_JOB_STALE_SECONDS)
    now = timezone.now()
    with transaction.atomic():
        job = (
            Job.objects.select_for_update()
            .filter(pk=job_id, status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
            .first()
        )
        if job is None or (
            job.status == Job.Status.RUNNING
            and job.heartbeat_at is not None
            and job.heartbeat_at >= stale
            and not worker_gone(job.worker, job.heartbeat_at)
        ):
            return None  # finished, or alive on another worker
        if job.cancel_requested:
            job.status = Job.Status.CANCELLED
            job.finished_at = now
            job.save(update_fields=["status", "finished_at"])
            job_ended_unfinished()
            return None
        job.status = Job.Status.RUNNING
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.attempts += 1
        job.worker = worker_label()
        job.message = "Started"
        job.save(
            update_fields=["status", "started_at", "heartbeat_at", "attempts", "worker", "message"]
        )
        return job


class _Heartbeat(threading.Thread):
    def __init__(self, job_id) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id = job_id
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.wait(settings.LOUPE_JOB_HEARTBEAT_SECONDS):
                try:
                    Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except DatabaseError:  # a busy database must not kill the job; retry next beat
                    log.warning("heartbeat of job %s not written", self.job_id, exc_info=True)
        finally:
            connection.close()


def _finish(job: Job, **fields) -> None:
    fields["finished_at"] = timezone.now()
    with transaction.atomic():
        Job.objects.filter(pk=job.pk).update(**fields)
        if fields["status"] != Job.Status.SUCCEEDED:
            job_ended_unfinished()


def run_job(job_id: str, fn: Callable[[Job, JobContext], dict | None]) -> str:
    """Run ``fn`` for the job; return the final status (or 'skipped')."""
    job = _claim(job_id)
    if job is None:
        log.info(
            "job %s not claimable (finished, cancelled, or running elsewhere); skipping", job_id
        )
        return "skipped"
    beat = _Heartbeat(job.pk)
    beat.start()
    ctx = JobContext(job)
    try:
        result = fn(job, ctx) or {}
    except JobCancelled:
        _finish(job, status=Job.Status.CANCELLED, message="Cancelled")
        return Job.Status.CANCELLED
    except JobError as exc:
        _finish(
            job,
            status=Job.Status.FAILED,
            error=str(exc),
            traceback=traceback.format_exc(),
            message="Failed",
        )
        return Job.Status.FAILED
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _finish(
            job,
            status=Job.Status.FAILED,
            error=f"Unexpected error: {type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            message="Failed",
        )
        return Job.Status.FAILED
    finally:
        beat.stop.set()
        beat.join(timeout=5)
    _finish(
        job,
        status=Job.Status.SUCCEEDED,
        progress=100.0,
        result=result,
        # cut as progress messages are: Job.message holds 500 characters (a longer one fails
        # the final save on PostgreSQL, after all the work)
        message=str(result.get("message", "Done"))[:500],
    )
    return Job.Status.SUCCEEDED


def job_task(kind: str, *, queue: str, label: str, stores_images: bool = False):
    """Register ``fn(job, ctx)`` as job kind ``kind``: its Celery task and its registry entry
    (queue ``cpu`` or ``gpu``, the label people see) in one place."""

    def decorator(fn: Callable[[Job, JobContext], dict | None]):
        name = f"loupe.job.{kind}"

        @app.task(name=name, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
        def _task(job_id: str) -> str:
            return run_job(job_id, fn)

        def send(job: Job) -> None:
            app.send_task(name, args=[str(job.id)], queue=queue_name(queue))

        job_kind_register(
            kind=kind, queue=queue, label=label, send=send, stores_images=stores_images
        )
        _task.body = fn
        return _task

    return decorator
