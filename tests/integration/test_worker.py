"""A real Celery worker on the real Redis: upload -> pyramid job -> tiles, end to end."""

import signal
import time
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from inspection.models import Image, Job
from tests.conftest import image_bytes, wait_for_job

pytestmark = pytest.mark.integration


def test_upload_builds_pyramids_through_a_real_worker(team, client_for, upload, celery_worker):
    client = client_for(team["reviewer"])
    big = image_bytes("JPEG", size=(3000, 2000), seed=5, quality=85)
    r = client.post(
        f"/api/projects/{team['project'].pk}/images/",
        {
            "files": [
                upload("part.jpg", big),
                upload("small.png", image_bytes(seed=6)),
                upload("junk.png", b"zz"),
            ]
        },
        format="multipart",
    )
    assert r.status_code == 201, r.content
    job = wait_for_job(r.json()["job"], timeout=120)
    assert job.status == "succeeded", (job.error, open(celery_worker.log_path).read()[-3000:])
    assert job.progress == 100.0 and job.started_at and job.finished_at and job.attempts == 1
    assert job.created_by == team["reviewer"]
    assert job.result["message"] == "2 pyramid(s) built"
    image = Image.objects.get(original_name="part.jpg")
    assert image.pyramid_status == "ready"
    # the descriptor and its tiles come through the API
    dzi = client.get(f"/api/images/{image.pk}/dzi/image.dzi")
    assert dzi.status_code == 200
    size = ET.fromstring(b"".join(dzi.streaming_content))[0].attrib
    assert (size["Width"], size["Height"]) == ("3000", "2000")
    tile = client.get(f"/api/images/{image.pk}/dzi/image_files/12/11_7.jpg")
    assert tile.status_code == 200 and b"".join(tile.streaming_content)[:2] == b"\xff\xd8"
    assert client.get(f"/api/images/{image.pk}/dzi/image_files/12/99_99.jpg").status_code == 404
    assert client.get(f"/api/images/{image.pk}/thumbnail/").status_code == 200
    assert default_storage.exists(image.thumbnail_path)
    # a non-member gets nothing, not even a tile
    outsider = client_for(team["outsider"])
    assert outsider.get(f"/api/images/{image.pk}/dzi/image_files/12/0_0.jpg").status_code == 404


def test_a_killed_worker_leaves_the_job_redeliverable(
    team, client_for, upload, celery_worker, start_worker, settings
):
    """Kill the worker mid-job: the job is found stale, re-queued, and a new worker finishes it."""
    settings.LOUPE_JOB_STALE_SECONDS = 3
    files = [
        upload(f"p{i}.jpg", image_bytes("JPEG", size=(4000, 3000), seed=20 + i)) for i in range(6)
    ]
    r = client_for(team["admin"]).post(
        f"/api/projects/{team['project'].pk}/images/", {"files": files}, format="multipart"
    )
    job_id = r.json()["job"]
    deadline = time.time() + 60
    while Job.objects.get(pk=job_id).progress < 5 and time.time() < deadline:
        time.sleep(0.1)
    job = Job.objects.get(pk=job_id)
    assert job.status == "running"
    celery_worker.send_signal(signal.SIGKILL)
    celery_worker.wait(timeout=10)
    time.sleep(3.5)
    job.refresh_from_db()
    assert job.status == "running"  # what a dead worker leaves behind...
    # ...until a new worker starts: it runs the maintenance hooks, which re-queue stale jobs
    start_worker(LOUPE_JOB_STALE_SECONDS="3")
    job = wait_for_job(job_id, timeout=180)
    assert job.status == "succeeded" and job.attempts == 2
    assert Image.objects.filter(project=team["project"], pyramid_status="ready").count() == 6


def test_beat_in_the_worker_runs_the_maintenance_hooks(team, start_worker, tmp_path):
    """The embedded beat of ``./loupe run`` (worker -B): a job whose worker died after this
    worker started is re-queued by the periodic maintenance task and then finished."""
    worker = start_worker(
        "-B",
        "--schedule",
        str(tmp_path / "beat-schedule"),
        LOUPE_MAINTENANCE_SECONDS="1",
        LOUPE_JOB_STALE_SECONDS="2",
    )
    # as a worker that died mid-job leaves it: claimed, then silent, its message consumed (no
    # message is sent here: only the maintenance task can bring it back)
    job = Job.objects.create(
        kind="pyramid",
        queue="cpu",
        project=team["project"],
        payload={"image_ids": []},
        status="running",
        attempts=1,
        worker="gone@host",
        heartbeat_at=timezone.now() - timedelta(minutes=10),
    )
    done = wait_for_job(job.pk, timeout=60)
    log = open(worker.log_path).read()
    assert done.status == "succeeded" and done.attempts == 2, log[-3000:]
    assert "loupe.maintenance" in log
