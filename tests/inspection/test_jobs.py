"""Jobs as people see them: the job-kind registry (one place per kind, no kind without a task),
who may cancel and who sees tracebacks, and the maintenance hooks (run by beat and the sweep
command, never by a read)."""

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from inspection.models import Job
from inspection.services import maintenance
from inspection.services.jobs import job_enqueue, job_kind_register, job_kinds, job_label
from tests.conftest import run_python

pytestmark = pytest.mark.django_db

KINDS = {
    "pyramid": ("cpu", "Image pyramids"),
    "dataset_import": ("cpu", "Dataset import"),
    "export": ("cpu", "Dataset export"),
    "anomaly_train": ("gpu", "Anomaly model training"),
    "anomaly_inspect": ("gpu", "Inspection run"),
    "detection_train": ("gpu", "Detector training"),
    "detection_inspect": ("gpu", "Detection run"),
    "reference_align": ("cpu", "Reference alignment"),
    "reference_propose": ("cpu", "Reference proposal"),
    "change_calibrate": ("gpu", "Change detector calibration"),
    "change_inspect": ("gpu", "Change run"),
    "anomaly_compare": ("gpu", "Anomaly model comparison"),
}


def test_every_kind_is_registered_once_with_its_task_queue_and_label():
    from workers.celery import app

    assert {k.kind: (k.queue, k.label) for k in job_kinds()} == KINDS
    for kind in KINDS:
        assert f"loupe.job.{kind}" in app.tasks  # the task that @job_task made with the entry
    assert [k.kind for k in job_kinds() if k.stores_images] == ["dataset_import"]
    with pytest.raises(ValueError, match="registered twice"):
        job_kind_register(kind="pyramid", queue="cpu", label="again", send=lambda job: None)
    with pytest.raises(ValueError, match="queue must be one of"):
        job_kind_register(kind="retrain", queue="tpu", label="x", send=lambda job: None)


def test_a_kind_without_a_task_cannot_be_enqueued(team):
    with pytest.raises(ValueError, match="unknown job kind 'retrain'; registered kinds: "):
        job_enqueue(kind="retrain", user=team["admin"], project=team["project"])
    assert not Job.objects.exists()
    # rows of a kind that no longer exists still show (by name)
    assert job_label("import_mvtec") == "import_mvtec" and job_label("export") == "Dataset export"


def test_a_fresh_web_process_knows_every_kind_without_loading_torch():
    code = (
        "import os, sys, django\n"
        "os.environ['DJANGO_SETTINGS_MODULE'] = 'inspection.settings'\n"
        "django.setup()\n"
        "import inspection.urls, inspection.wsgi\n"
        "from django.urls import resolve\n"
        "resolve('/api/projects/1/images/'); resolve('/projects/1/review/')\n"
        "from inspection.services.jobs import job_kinds\n"
        "print(sorted(k.kind for k in job_kinds()))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'anomalib', 'openvino')))\n"
    )
    out = run_python(code)
    kinds, heavy = out.stdout.strip().splitlines()[-2:]
    assert kinds == str(sorted(KINDS)) and heavy == "[]"


def make_job(team, **fields) -> Job:
    job = job_enqueue(kind="pyramid", user=team["admin"], project=team["project"])
    Job.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def test_who_may_cancel(team, client_for):
    job = make_job(team)
    assert client_for(team["outsider"]).post(f"/api/jobs/{job.pk}/cancel/").status_code == 404
    r = client_for(team["annotator"]).post(f"/api/jobs/{job.pk}/cancel/")
    assert r.status_code == 403 and "started a job" in r.json()["error"]
    assert client_for(team["admin"]).post(f"/api/jobs/{job.pk}/cancel/").status_code == 200


def test_job_list_and_traceback_only_for_admins(team, client_for):
    job = make_job(team, status="failed", error="boom", traceback="Traceback: secret path")
    mine = client_for(team["annotator"]).get("/api/jobs/").json()["results"]
    assert [j["id"] for j in mine] == [str(job.pk)]
    assert mine[0]["error"] == "boom" and mine[0]["traceback"] is None
    assert mine[0]["created_by"] == "padmin"
    admin_view = client_for(team["admin"]).get(f"/api/jobs/{job.pk}/").json()
    assert admin_view["traceback"] == "Traceback: secret path"
    assert client_for(team["outsider"]).get("/api/jobs/").json()["results"] == []
    assert (
        client_for(team["annotator"]).get("/api/jobs/", {"status": "queued"}).json()["results"]
        == []
    )


def stale_job(team, **fields) -> Job:
    job = job_enqueue(kind="pyramid", user=team["admin"], project=team["project"])
    Job.objects.filter(pk=job.pk).update(
        status="running",
        heartbeat_at=timezone.now() - timedelta(hours=1),
        attempts=1,
        **fields,
    )
    return job


def test_reading_the_job_list_writes_nothing(team, client_for):
    job = stale_job(team)
    for url in ("/api/jobs/", f"/api/jobs/{job.pk}/", "/api/jobs/?active=true"):
        assert client_for(team["admin"]).get(url).status_code == 200
    job.refresh_from_db()
    assert job.status == "running"  # only the maintenance hooks re-queue it


def test_the_sweep_command_runs_every_hook(team):
    job = stale_job(team)
    out = io.StringIO()
    call_command("loupe_jobs", "--sweep", stdout=out)
    job.refresh_from_db()
    assert job.status == "queued"
    assert f"requeue stale jobs: pyramid {job.pk} (queued)" in out.getvalue()
    assert set(maintenance.maintenance_hooks()) == {
        "send jobs the broker never took",
        "requeue stale jobs",
        "fail jobs of removed kinds",
        "fail model versions whose training ended",
        "delete expired export zips",
        "retrain detectors",
    }


def test_a_failing_hook_is_reported_and_the_others_still_run(team, monkeypatch):
    ran = []

    def broken():
        raise OSError("storage is down")

    hooks = {"broken": broken, **maintenance.maintenance_hooks(), "last": lambda: ran.append(1)}
    monkeypatch.setattr(maintenance, "_HOOKS", hooks)
    job = stale_job(team)
    out = maintenance.maintenance_run()
    assert out["broken"] == {"error": "OSError: storage is down"} and ran == [1]
    job.refresh_from_db()
    assert job.status == "queued"


def test_jobs_of_a_kind_that_no_longer_exists_fail_with_a_reason(team):
    """An upgrade that renames a kind (import_mvtec became dataset_import) leaves rows no worker
    would take: queued ones would wait forever, running ones could not be re-sent."""
    stale = stale_job(team)
    queued = job_enqueue(kind="pyramid", user=team["admin"], project=team["project"])
    fine = job_enqueue(kind="pyramid", user=team["admin"], project=team["project"])
    Job.objects.filter(pk__in=[stale.pk, queued.pk]).update(kind="import_mvtec")
    maintenance.maintenance_run()
    for job in (stale, queued):
        job.refresh_from_db()
        assert job.status == "failed" and "no job of this kind any more" in job.error
        assert job.finished_at
    fine.refresh_from_db()
    assert fine.status == "queued"


def training_detector(team):
    """A detector version whose training job is queued."""
    from inspection.services.inspections import model_version_create

    return model_version_create(
        user=team["admin"],
        project=team["project"],
        kind="detector",
        architecture="ppyoloe-sod-s",
        params={},
        image_ids=[],
    )


def test_a_version_whose_training_job_ended_without_it_fails_and_loses_its_files(team):
    """Cancelled before a worker took it, or given up after lost workers: the job body never
    ran to say so, and a detector's checkpoint would stay forever."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from inspection.models import ModelVersion
    from inspection.services.inspections import model_version_folder

    version = training_detector(team)
    folder = model_version_folder(version)
    default_storage.save(f"{folder}/checkpoint-e3.pt", ContentFile(b"weights"))
    maintenance.maintenance_run()
    version.refresh_from_db()
    assert version.status == "training"  # its job is still queued: nothing to say yet
    Job.objects.filter(pk=version.job_id).update(status="cancelled")
    maintenance.maintenance_run()
    version.refresh_from_db()
    assert version.status == "failed"
    assert not default_storage.exists(f"{folder}/checkpoint-e3.pt")
    assert ModelVersion.objects.filter(status="training").count() == 0


def test_a_versions_status_follows_its_job_at_once(
    team, client_for, settings, django_capture_on_commit_callbacks
):
    """Not at the next maintenance run: the models page must not say "training" for a job that
    was cancelled before it started, or given up after its workers were lost."""
    from inspection.models import ModelVersion
    from inspection.services.jobs import jobs_requeue_stale
    from workers.tasks.runner import run_job

    cancelled = training_detector(team)
    with django_capture_on_commit_callbacks(execute=True):
        r = client_for(team["admin"]).post(f"/api/jobs/{cancelled.job_id}/cancel/")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    cancelled.refresh_from_db()
    assert cancelled.status == "failed"
    from django.test import Client

    browser = Client()
    browser.force_login(team["admin"])
    page = browser.get(f"/projects/{team['project'].pk}/models/").content.decode()
    assert "Cancelled by padmin before it started" in page

    lost = training_detector(team)
    Job.objects.filter(pk=lost.job_id).update(
        status="running",
        heartbeat_at=timezone.now() - timedelta(hours=1),
        attempts=settings.LOUPE_JOB_MAX_ATTEMPTS,
    )
    with django_capture_on_commit_callbacks(execute=True):
        jobs_requeue_stale()
    lost.refresh_from_db()
    assert lost.status == "failed" and Job.objects.get(pk=lost.job_id).status == "failed"

    # a job body that fails outside its own handling (here: a kind whose body raises)
    crashed = training_detector(team)

    def body(job, ctx):
        raise RuntimeError("disk full")

    with django_capture_on_commit_callbacks(execute=True):
        assert run_job(str(crashed.job_id), body) == "failed"
    crashed.refresh_from_db()
    assert crashed.status == "failed"
    assert ModelVersion.objects.filter(status="training").count() == 0


def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_workers_job_goes_back_at_once_not_after_the_stale_timeout(team):
    """Its heartbeat is still fresh, but its process on this machine is gone (killed for
    memory, say): the next sweep re-queues it, and a redelivered message may claim it."""
    import os
    import socket

    from inspection.services.jobs import jobs_requeue_stale
    from workers.tasks.runner import run_job

    host = socket.gethostname()
    fresh = timezone.now()
    killed = make_job(
        team, status="running", heartbeat_at=fresh, attempts=1, worker=f"{host} pid {dead_pid()}"
    )
    alive = make_job(
        team, status="running", heartbeat_at=fresh, attempts=1, worker=f"{host} pid {os.getppid()}"
    )
    elsewhere = make_job(
        team, status="running", heartbeat_at=fresh, attempts=1, worker="other-host pid 1"
    )
    touched = jobs_requeue_stale()
    assert [j.pk for j in touched] == [killed.pk]
    for job, status in ((killed, "queued"), (alive, "running"), (elsewhere, "running")):
        job.refresh_from_db()
        assert job.status == status, job
    assert "stopped responding" in killed.message

    # a message delivered again at once claims the job whose worker died, and only that one
    Job.objects.filter(pk=killed.pk).update(status="running", worker=f"{host} pid {dead_pid()}")
    assert run_job(str(killed.pk), lambda job, ctx: {"message": "done"}) == "succeeded"
    assert run_job(str(alive.pk), lambda job, ctx: {"message": "done"}) == "skipped"
    killed.refresh_from_db()
    assert killed.worker == f"{host} pid {os.getpid()}" and killed.attempts == 2


def test_a_job_on_a_machine_with_no_worker_left_goes_back_before_the_stale_timeout(team, settings):
    """Issue #18: a worker killed on another machine (or the machine gone) left its job for the
    stale timeout (2 min, then the next sweep). Workers keep a presence key in Redis naming
    their machine: once no key names the job's machine and its heartbeat has missed two beats,
    the sweep re-queues it. A live worker there, a fresh heartbeat (Redis may just have lost
    the key) or a Redis that does not answer leave it running."""
    import json
    from datetime import timedelta

    import redis

    from inspection.services.jobs import jobs_requeue_stale
    from inspection.services.queue_health import PRESENCE_TTL, presence_key

    settings.LOUPE_JOB_HEARTBEAT_SECONDS, settings.LOUPE_JOB_STALE_SECONDS = 10, 120  # defaults
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    for key in client.scan_iter(match=presence_key("*")):
        client.delete(key)
    quiet = timezone.now() - timedelta(seconds=3 * settings.LOUPE_JOB_HEARTBEAT_SECONDS)
    assert quiet > timezone.now() - timedelta(seconds=settings.LOUPE_JOB_STALE_SECONDS)
    lost = make_job(team, status="running", heartbeat_at=quiet, attempts=1, worker="gpu-7 pid 41")
    busy = make_job(team, status="running", heartbeat_at=quiet, attempts=1, worker="gpu-8 pid 41")
    beating = make_job(
        team, status="running", heartbeat_at=timezone.now(), attempts=1, worker="gpu-9 pid 41"
    )
    # gpu-8 still runs a worker (its key as workers/tasks/maintenance.py writes it)
    client.set(
        presence_key("celery@gpu-8"),
        json.dumps({"queues": ["gpu"], "host": "gpu-8"}),
        ex=PRESENCE_TTL,
    )
    broker = settings.CELERY_BROKER_URL
    try:
        # Redis not answering: nobody can tell, nothing moves
        settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
        assert jobs_requeue_stale() == []
        settings.CELERY_BROKER_URL = broker
        touched = jobs_requeue_stale()
    finally:
        client.delete(presence_key("celery@gpu-8"))
    assert [j.pk for j in touched] == [lost.pk]
    for job, status in ((lost, "queued"), (busy, "running"), (beating, "running")):
        job.refresh_from_db()
        assert job.status == status, job
    assert lost.message == "Re-queued: its worker gpu-7 pid 41 stopped responding"


def test_deleting_a_version_that_trains_cancels_its_job(team, client_for):
    version = training_detector(team)
    Job.objects.filter(pk=version.job_id).update(status="running")
    assert client_for(team["admin"]).delete(f"/api/models/{version.pk}/").status_code == 204
    job = Job.objects.get(pk=version.job_id)
    assert job.cancel_requested and job.status == "running"  # it stops at its next report
