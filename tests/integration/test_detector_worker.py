"""Detector training through a real Celery worker: killed after an epoch, it resumes there."""

import time

import pytest

from annotations.services.detectors import detector_train
from inspection.models import Job, ModelVersion
from tests.conftest import wait_for_job
from tests.workers.tasks.test_detection import TINY, squares_version

pytestmark = pytest.mark.integration


def test_a_worker_killed_mid_training_resumes_from_the_last_epoch(
    team, tmp_path, celery_worker, start_worker, settings
):
    """A 2-hour CPU training must not restart from zero when its worker dies."""
    settings.LOUPE_JOB_STALE_SECONDS = 3
    version = squares_version(team, tmp_path)
    model = detector_train(
        user=team["admin"],
        project=team["project"],
        version=version,
        params={**TINY, "epochs": 3, "iterations_per_epoch": 6},
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        history = ModelVersion.objects.get(pk=model.pk).metrics.get("history", [])
        if history:
            break
        time.sleep(0.1)
    assert history and history[-1]["epoch"] < 3, (history, open(celery_worker.log_path).read())
    celery_worker.kill()  # SIGKILL: no handler runs, the job stays 'running'
    celery_worker.wait(timeout=10)
    done_before = len(history)
    start_worker(LOUPE_JOB_STALE_SECONDS="3", OMP_NUM_THREADS="1")
    job = wait_for_job(model.job_id, timeout=600)
    assert job.status == "succeeded" and job.attempts == 2, job.error
    model.refresh_from_db()
    epochs = [h["epoch"] for h in model.metrics["history"]]
    assert epochs == [1, 2, 3], epochs  # none trained twice, none lost
    assert model.status == "ready" and model.is_active
    # it went on from the checkpoint of an epoch the first worker finished, not from zero
    resumed = Job.objects.get(pk=model.job_id).result["resumed_after_epoch"]
    assert resumed >= done_before >= 1 and model.metrics["resumed_after_epoch"] == resumed
