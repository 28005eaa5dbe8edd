"""The job-kind registry and the maintenance hooks: one place per kind, no kind without a task,
housekeeping run by beat and the sweep command, never by a read."""

import io
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from inspection.models import Job
from inspection.services import maintenance
from inspection.services.jobs import job_enqueue, job_kind_register, job_kinds, job_label
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db

KINDS = {
    "pyramid": ("cpu", "Image pyramids"),
    "dataset_import": ("cpu", "Dataset import"),
    "export": ("cpu", "Dataset export"),
    "anomaly_train": ("gpu", "Anomaly model training"),
    "anomaly_inspect": ("gpu", "Inspection run"),
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
        job_kind_register(kind="detection_train", queue="tpu", label="x", send=lambda job: None)


def test_a_kind_without_a_task_cannot_be_enqueued(team):
    with pytest.raises(ValueError, match="unknown job kind 'detection_train'; registered kinds: "):
        job_enqueue(kind="detection_train", user=team["admin"], project=team["project"])
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
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    kinds, heavy = out.stdout.strip().splitlines()[-2:]
    assert kinds == str(sorted(KINDS)) and heavy == "[]"


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
    assert job.status == "queued" and f"{job.pk} pyramid: queued" in out.getvalue()
    assert set(maintenance.maintenance_hooks()) == {
        "requeue stale jobs",
        "delete expired export zips",
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


def test_a_stale_job_of_a_kind_that_no_longer_exists_fails_with_a_reason(team):
    job = stale_job(team)
    Job.objects.filter(pk=job.pk).update(kind="import_mvtec")
    maintenance.maintenance_run()
    job.refresh_from_db()
    assert job.status == "failed" and "no job kind 'import_mvtec'" in job.error


def test_beat_sends_the_maintenance_task_to_the_cpu_queue(settings):
    from workers.celery import app

    entry = app.conf.beat_schedule["loupe-maintenance"]
    assert entry["task"] == "loupe.maintenance" and entry["task"] in app.tasks
    assert entry["schedule"] == settings.LOUPE_MAINTENANCE_SECONDS
    assert entry["options"]["queue"].endswith("cpu")
