"""The generic Job: the job-kind registry, enqueue, cancel, and the stale-job sweep.

Job kinds: each kind is registered once, where its task is defined (``@job_task(kind, queue=...,
label=...)`` in ``workers/tasks/``), through :func:`job_kind_register`. The registry keeps the
kind's queue, its label and how to send it; enqueueing looks the kind up there, so a kind without
a task cannot be enqueued. The ``workers.tasks`` Django app imports every task module when Django
starts, so the web process, the worker and management commands all see the same table (task
modules import the ML libraries only inside job bodies: the web process never loads torch).

How a job runs (see workers/tasks/runner.py): the Job row is created, and on commit its id is
sent to the queue its kind belongs to. A worker claims it (queued -> running), writes a heartbeat
every LOUPE_JOB_HEARTBEAT_SECONDS, and finishes it once. Celery acks the message only after the
task returns (acks_late), so a worker that dies mid-job leaves the message to be delivered again.

Stale jobs: a 'running' job whose heartbeat is older than LOUPE_JOB_STALE_SECONDS lost its worker.
``jobs_requeue_stale`` (a maintenance hook: run by Celery beat, when a worker starts and by
``manage.py loupe_jobs --sweep``) puts it back in its queue, up to LOUPE_JOB_MAX_ATTEMPTS tries,
after which it fails with a plain message. Jobs of a kind that no longer exists are failed by
``jobs_fail_unknown_kinds``. A redelivered message for a job that is already running
elsewhere or finished is ignored, so a job never runs twice at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from inspection.errors import BrokerUnavailable
from inspection.models import Job, Project, Role
from inspection.permissions import has_role, is_site_admin, require_role
from inspection.services.maintenance import maintenance_hook
from inspection.services.queue_health import worker_hosts

log = logging.getLogger(__name__)

QUEUES = ("cpu", "gpu")  # GPU work (training, inference) goes to 'gpu'; everything else to 'cpu'


@dataclass(frozen=True)
class JobKind:
    """One kind of background work: where it runs, what people call it, how it is sent."""

    kind: str
    queue: str
    label: str
    send: Callable[[Job], None]
    # The job stores images as it goes (imports): images it stored may still wait for the
    # pyramid job it starts at its end (see images_without_pyramid).
    stores_images: bool = False


_KINDS: dict[str, JobKind] = {}


def job_kind_register(
    *,
    kind: str,
    queue: str,
    label: str,
    send: Callable[[Job], None],
    stores_images: bool = False,
) -> JobKind:
    """Add a job kind to the registry (called by ``@job_task``; a kind is registered once)."""
    if queue not in QUEUES:
        raise ValueError(f"job kind {kind!r}: queue must be one of {QUEUES}, not {queue!r}")
    if kind in _KINDS:
        raise ValueError(f"job kind {kind!r} is registered twice")
    _KINDS[kind] = JobKind(kind, queue, label, send, stores_images)
    return _KINDS[kind]


def job_kind(kind: str) -> JobKind:
    """The registered kind, or ValueError naming the kinds that exist."""
    try:
        return _KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(_KINDS)) or "none (is the workers.tasks app installed?)"
        raise ValueError(f"unknown job kind {kind!r}; registered kinds: {known}") from None


def job_kinds() -> list[JobKind]:
    return sorted(_KINDS.values(), key=lambda k: k.kind)


def job_label(kind: str) -> str:
    """What people call a kind (rows of a kind that no longer exists show its name)."""
    found = _KINDS.get(kind)
    return found.label if found else kind


def queue_name(queue: str) -> str:
    return settings.LOUPE_QUEUE_PREFIX + queue


def job_enqueue(
    *, kind: str, user=None, project: Project | None = None, payload: dict | None = None
) -> Job:
    """Create a job and send it to its queue once the surrounding transaction commits."""
    entry = job_kind(kind)
    job = Job.objects.create(
        kind=kind,
        queue=entry.queue,
        project=project,
        created_by=user if user is not None and user.is_authenticated else None,
        payload=payload or {},
        message="Waiting for a worker",
    )
    transaction.on_commit(lambda: job_send(job))
    return job


def job_send(job: Job) -> None:
    """Send the job's message to its queue and note when (``sent_at``). When the broker does not
    take it, the job stays queued with ``sent_at`` empty and says so, the sweep
    (:func:`jobs_send_unsent`) sends it once the broker answers, and
    :class:`~inspection.errors.BrokerUnavailable` (503) tells the caller."""
    try:
        job_kind(job.kind).send(job)
    except Exception as exc:  # noqa: BLE001 - kombu/redis raise many kinds for "not reachable"
        log.warning("job %s not sent: %s: %s", job.pk, type(exc).__name__, exc)
        Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(message=NOT_SENT)
        raise BrokerUnavailable(
            f"Loupe's job queue (Redis) is not answering, so '{job_label(job.kind)}' could not "
            "be started now. What you sent is kept and the job starts by itself once the queue "
            "answers again; if it does not within minutes, ask whoever runs Loupe to check Redis."
        ) from None
    Job.objects.filter(pk=job.pk).update(sent_at=timezone.now())


NOT_SENT = "Waiting for the job queue (Redis not answering); sent again when it answers"


@maintenance_hook("send jobs the broker never took")
def jobs_send_unsent(*, now=None) -> int:
    """The outbox: queued jobs whose message never reached the broker (it was down when they
    were made) are sent, oldest first, once they are ``LOUPE_JOB_SEND_GRACE_SECONDS`` old (a
    job being sent right now is not sent twice). Stops at the first refusal (the broker is still
    down). Returns how many were sent."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.LOUPE_JOB_SEND_GRACE_SECONDS)
    unsent = Job.objects.filter(
        status=Job.Status.QUEUED, sent_at__isnull=True, created_at__lt=cutoff, kind__in=list(_KINDS)
    ).order_by("created_at")
    sent = 0
    for job in unsent.iterator():
        try:
            job_send(job)
        except BrokerUnavailable:
            break
        Job.objects.filter(pk=job.pk, message=NOT_SENT).update(message="Waiting for a worker")
        sent += 1
    return sent


def job_ended_unfinished() -> None:
    """Call when a job ends without its body finishing it (cancelled before a worker took it,
    cancelled or given up by the stale sweep, failed, of a removed kind): once the transaction
    commits, the model version it was training fails and loses its files at once, not at the
    next maintenance run. The rule itself is ``model_versions_fail_orphans`` (its one owner)."""
    from inspection.services.inspections import model_versions_fail_orphans

    transaction.on_commit(model_versions_fail_orphans)


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
            job_ended_unfinished()
        else:
            job.message = f"Cancelling (asked by {user.username})"
        job.save(update_fields=["cancel_requested", "status", "finished_at", "message"])
    return job


def worker_label() -> str:
    """What a job records as its worker: this machine and this process."""
    return f"{socket.gethostname()} pid {os.getpid()}"[:200]


def worker_gone(label: str, heartbeat_at=None) -> bool:
    """Whether the process a job recorded as its worker (:func:`worker_label`) is known to be
    dead: it ran on this machine and no process has its pid any more; or it ran on another
    machine that has no live worker any more (no presence key in Redis names it: a worker
    killed there, or the machine down, is seen within ``PRESENCE_TTL``) and the job's
    heartbeat has missed two beats (so a Redis hiccup alone never passes for a lost worker).
    Unknown (Redis not answering, an older label) is not "gone": the heartbeat's stale timeout
    decides those."""
    host, _, pid = (label or "").rpartition(" pid ")
    if not host or not pid.isdigit():
        return False
    if host != socket.gethostname():
        quiet = timezone.now() - timedelta(seconds=2 * settings.LOUPE_JOB_HEARTBEAT_SECONDS)
        if heartbeat_at is None or heartbeat_at >= quiet:
            return False
        hosts = worker_hosts()
        return hosts is not None and host not in hosts
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


@maintenance_hook("requeue stale jobs")
def jobs_requeue_stale(*, now=None) -> list[Job]:
    """Re-queue (or fail, after too many tries) running jobs whose worker is lost: its heartbeat
    is older than LOUPE_JOB_STALE_SECONDS, or its worker is known to be gone (:func:`worker_gone`:
    a killed worker's job on this machine goes back at the next sweep, e.g. its restarted
    worker's; on another machine once that machine has no live worker left)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.LOUPE_JOB_STALE_SECONDS)
    touched: list[Job] = []
    running = Job.objects.filter(status=Job.Status.RUNNING, kind__in=list(_KINDS))
    stale_ids = list(running.filter(heartbeat_at__lt=cutoff).values_list("id", flat=True))
    stale_ids += [
        pk
        for pk, worker, beat in running.exclude(pk__in=stale_ids).values_list(
            "id", "worker", "heartbeat_at"
        )
        if worker_gone(worker, beat)
    ]
    for job_id in stale_ids:
        with transaction.atomic():
            job = (
                Job.objects.select_for_update().filter(pk=job_id, status=Job.Status.RUNNING).first()
            )
            if job is None or not (
                (job.heartbeat_at and job.heartbeat_at < cutoff)
                or worker_gone(job.worker, job.heartbeat_at)
            ):
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
                job.sent_at = None  # sent again on commit; the outbox retries if that fails
                transaction.on_commit(lambda j=job: _send_quietly(j))
            job.save()
            if job.status != Job.Status.QUEUED:
                job_ended_unfinished()
            log.warning("stale job %s -> %s", job.id, job.status)
            touched.append(job)
    return touched


def _send_quietly(job: Job) -> None:
    """For sweeps: a job the broker refuses now is left to :func:`jobs_send_unsent`."""
    with contextlib.suppress(BrokerUnavailable):
        job_send(job)


@maintenance_hook("fail jobs of removed kinds")
def jobs_fail_unknown_kinds(*, now=None) -> int:
    """Fail queued or running jobs of a kind this version no longer has (left by an upgrade):
    no worker would ever take them. Returns how many."""
    failed = (
        Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
        .exclude(kind__in=list(_KINDS))
        .update(
            status=Job.Status.FAILED,
            finished_at=now or timezone.now(),
            error="This version of Loupe has no job of this kind any more (renamed or removed "
            "in an upgrade); start the work again.",
            message="Failed: unknown kind",
        )
    )
    if failed:
        job_ended_unfinished()
    return failed
