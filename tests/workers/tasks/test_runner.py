"""The job runner: routing by kind, claim, progress, success, failure in plain words, cooperative
cancellation, re-running a stale job."""

from datetime import timedelta

import pytest
from django.utils import timezone

from inspection.models import Job
from inspection.services.jobs import job_cancel, job_enqueue, jobs_requeue_stale
from workers.tasks.runner import JobCancelled, JobError, run_job

pytestmark = pytest.mark.django_db


def make_job(team, kind="pyramid", **fields):
    job = job_enqueue(
        kind=kind, user=team["admin"], project=team["project"], payload={"image_ids": []}
    )
    Job.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def test_jobs_are_routed_by_kind(team, django_capture_on_commit_callbacks, settings):
    settings.LOUPE_QUEUE_PREFIX = "t-"
    sent = []
    from workers.celery import app

    original = app.send_task
    app.send_task = lambda name, args, queue: sent.append((name, args, queue))
    try:
        with django_capture_on_commit_callbacks(execute=True):
            cpu = job_enqueue(kind="pyramid", user=team["admin"], project=team["project"])
            gpu = job_enqueue(kind="anomaly_train", user=team["admin"], project=team["project"])
    finally:
        app.send_task = original
    assert sent == [
        ("loupe.job.pyramid", [str(cpu.id)], "t-cpu"),
        ("loupe.job.anomaly_train", [str(gpu.id)], "t-gpu"),
    ]
    with pytest.raises(ValueError, match="unknown job kind"):
        job_enqueue(kind="nonsense")


def test_success_records_progress_timings_and_result(team):
    job = make_job(team)

    def body(job, ctx):
        ctx.progress(0.5, "half way", force=True)
        assert Job.objects.get(pk=job.pk).progress == 50.0
        return {"message": "all good", "n": 3}

    assert run_job(str(job.pk), body) == "succeeded"
    job.refresh_from_db()
    assert (job.status, job.progress, job.result["n"], job.message) == (
        "succeeded",
        100.0,
        3,
        "all good",
    )
    assert job.started_at and job.finished_at and job.attempts == 1 and job.worker
    # a redelivered message for a finished job does nothing
    assert run_job(str(job.pk), body) == "skipped"


def test_a_long_final_message_is_cut_not_lost(team):
    """A job's message holds 500 characters: a longer one from the job's result (a comparison
    naming a kind made of several long label categories, say) is cut, and the job still
    succeeds with its whole result."""
    job = make_job(team)
    long = "best: padim v1; weakest on " + " + ".join(["a-very-long-category-name" * 3] * 8)
    assert len(long) > 500
    assert run_job(str(job.pk), lambda j, c: {"message": long}) == "succeeded"
    job.refresh_from_db()
    assert job.status == "succeeded" and job.message == long[:500]
    assert job.result["message"] == long


def test_failures_in_plain_words_with_traceback(team):
    job = make_job(team)

    def body(job, ctx):
        raise JobError("The model file is missing: run distill-teacher first.")

    assert run_job(str(job.pk), body) == "failed"
    job.refresh_from_db()
    assert job.error == "The model file is missing: run distill-teacher first."
    assert "JobError" in job.traceback

    job2 = make_job(team)
    assert run_job(str(job2.pk), lambda j, c: 1 / 0) == "failed"
    job2.refresh_from_db()
    assert job2.error == "Unexpected error: ZeroDivisionError: division by zero"


def test_cancel_queued_and_running(team, client_for):
    queued = make_job(team)
    r = client_for(team["admin"]).post(f"/api/jobs/{queued.pk}/cancel/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert run_job(str(queued.pk), lambda j, c: {}) == "skipped"

    running = make_job(team)
    seen = []

    def body(job, ctx):
        ctx.progress(0.1, "working", force=True)
        job_cancel(user=team["admin"], job=Job.objects.get(pk=job.pk))  # someone presses cancel
        seen.append("asked")
        ctx.progress(0.2, "still working", force=True)  # raises JobCancelled
        seen.append("not reached")

    assert run_job(str(running.pk), body) == "cancelled"
    assert seen == ["asked"]
    running.refresh_from_db()
    assert running.status == "cancelled" and running.finished_at
    r = client_for(team["admin"]).post(f"/api/jobs/{running.pk}/cancel/")
    assert r.status_code == 400 and "nothing to cancel" in r.json()["error"]


def test_stale_running_jobs_are_requeued_then_failed(team, settings):
    settings.LOUPE_JOB_STALE_SECONDS = 60
    settings.LOUPE_JOB_MAX_ATTEMPTS = 2
    old = timezone.now() - timedelta(minutes=5)
    lost = make_job(team, status="running", heartbeat_at=old, attempts=1, worker="w1")
    alive = make_job(team, status="running", heartbeat_at=timezone.now(), attempts=1)
    jobs_requeue_stale()
    lost.refresh_from_db()
    alive.refresh_from_db()
    assert lost.status == "queued" and "stopped responding" in lost.message
    assert alive.status == "running"
    # the re-sent message is claimed and runs to the end
    assert run_job(str(lost.pk), lambda j, c: {"message": "done"}) == "succeeded"
    lost.refresh_from_db()
    assert lost.attempts == 2

    again = make_job(team, status="running", heartbeat_at=old, attempts=2)
    jobs_requeue_stale()
    again.refresh_from_db()
    assert again.status == "failed" and "stopped responding 2 times" in again.error


def test_a_message_for_a_job_alive_elsewhere_is_ignored(team):
    job = make_job(team, status="running", heartbeat_at=timezone.now(), attempts=1)
    assert run_job(str(job.pk), lambda j, c: {}) == "skipped"


def test_cancelled_exception_is_library_agnostic(team):
    job = make_job(team)

    def body(job, ctx):
        raise JobCancelled()

    assert run_job(str(job.pk), body) == "cancelled"
