"""The training and inspection job bodies, run in this process on tiny images with a real model."""

import pytest
from django.core.files.storage import default_storage
from django.test import Client

from annotations.models import Suggestion
from inspection.models import Image, ImageHeatmap, Job, ModelVersion
from inspection.services.inspections import inspection_run_start, model_version_train
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db


def test_train_then_inspect_with_a_deleted_image(
    team, client_for, upload, django_capture_on_commit_callbacks
):
    from workers.tasks.anomaly import run_inspection, train_anomaly_model
    from workers.tasks.runner import run_job

    project, admin = team["project"], team["admin"]
    normals = [upload(f"n{i}.png", image_bytes(size=(96, 96), seed=i)) for i in range(4)]
    client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": normals, "is_normal": "true"},
        format="multipart",
    )
    r = client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {
            "files": [
                upload("t1.png", image_bytes(size=(96, 96), seed=10)),
                upload("t2.png", image_bytes(size=(96, 96), seed=11)),
                upload("t3.png", image_bytes(size=(96, 96), seed=12)),
            ]
        },
        format="multipart",
    )
    t1, t2, t3 = (f["image_id"] for f in r.json()["files"])

    version = model_version_train(
        user=admin, project=project, architecture="padim", params={"input_size": 64}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "succeeded"
    version.refresh_from_db()
    assert version.status == "ready" and version.is_active and version.artifact.endswith(".pt")
    assert "model_id" in version.metrics
    # exported for CPU workers, stored beside the weights: the inspection runs it on OpenVINO
    assert version.metrics["exports"] == {"onnx": True}
    folder = version.artifact.rsplit("/", 1)[0]
    assert default_storage.exists(f"{folder}/model.onnx")
    page = Client()
    page.force_login(admin)
    assert "CPU runtime: OpenVINO<" in page.get(f"/projects/{project.pk}/models/").content.decode()

    run = inspection_run_start(
        user=team["reviewer"], project=project, scope="selected", image_ids=[t1, t2, t3]
    )
    Image.objects.filter(pk=t2).delete()  # deleted while the run waits in the queue
    damaged = Image.objects.get(pk=t3)  # its file damaged on disk since the upload
    with default_storage.open(damaged.file.name, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n damaged")
    assert run_job(str(run.job_id), run_inspection.body) == "succeeded"
    run.refresh_from_db()
    assert "deleted" in run.results[str(t2)]["error"]
    assert run.results[str(t3)]["error"] == "t3.png: cannot decode image (Truncated File Read)"
    assert run.results[str(t1)]["score"] >= 0
    assert ImageHeatmap.objects.filter(run=run, image_id=t1).count() == 1
    job = Job.objects.get(pk=run.job_id)
    assert job.result["failed"] == 2 and job.result["images"] == 1
    assert Image.objects.get(pk=t1).status in ("inspected", "new")
    heat = client_for(team["annotator"]).get(f"/api/images/{t1}/heatmap.png")
    assert heat.status_code == 200
    assert (
        Suggestion.objects.filter(image_id=t1, model_version=version).count()
        == run.results[str(t1)]["suggestions"]
    )


def test_training_failure_marks_the_version_failed(team, client_for, upload):
    from workers.tasks.anomaly import train_anomaly_model
    from workers.tasks.runner import run_job

    project, admin = team["project"], team["admin"]
    normals = [upload(f"n{i}.png", image_bytes(size=(96, 96), seed=i)) for i in range(2)]
    client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": normals, "is_normal": "true"},
        format="multipart",
    )
    version = model_version_train(
        user=admin, project=project, architecture="padim", params={"input_size": 50}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "failed"
    version.refresh_from_db()
    job = Job.objects.get(pk=version.job_id)
    assert version.status == ModelVersion.Status.FAILED and not version.is_active
    assert "input_size" in job.error
