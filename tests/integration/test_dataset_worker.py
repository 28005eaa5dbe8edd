"""A dataset export through a real Celery worker on the cpu queue, downloaded through the API."""

import io
import zipfile

import pytest

from tests.annotations.test_dataset_transfer import make_project
from tests.conftest import wait_for_job

pytestmark = pytest.mark.integration


def test_export_runs_on_a_real_worker(team, tmp_path, client_for, celery_worker):
    version = make_project(team, tmp_path / "src")
    client = client_for(team["admin"])
    r = client.post(
        f"/api/projects/{version.project_id}/datasets/{version.number}/exports/",
        {"format": "yolo_detect"},
        format="json",
    )
    assert r.status_code == 202, r.content
    job = wait_for_job(r.json()["id"], timeout=90)
    assert job.status == "succeeded", (job.error, open(celery_worker.log_path).read()[-3000:])
    assert job.queue == "cpu" and job.progress == 100.0 and job.attempts == 1
    assert job.result["images"] == 5 and job.result["version"] == 1
    got = client.get(f"/api/dataset-exports/{job.pk}/download/")
    assert got.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(b"".join(got.streaming_content))).namelist()
    assert "data.yaml" in names and "labels/train/good.txt" in names
