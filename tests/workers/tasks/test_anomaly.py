"""The training and inspection job bodies, run in this process on tiny images with a real model."""

import pytest
from django.core.files.storage import default_storage
from django.test import Client

from annotations.models import Suggestion
from inspection.models import Image, ImageHeatmap, InspectionRun, Job, ModelVersion
from inspection.services.inspections import inspection_run_start, model_version_train
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db


def test_the_app_offers_exactly_the_engines_models():
    """The web process cannot read the engine's MODELS table (it never imports the ML packages):
    the app's own list must name the same models, no more and no fewer."""
    from inspection.services.inspections import ARCHITECTURES
    from workers.anomaly import models

    assert sorted(ARCHITECTURES) == sorted(models.names())


def test_the_app_refuses_the_input_sizes_the_engine_refuses():
    """The app checks each model's smallest input before a job is queued: its table must be the
    engine's, for every model whose minimum is above the default 64 px."""
    from inspection.services.inspections import MIN_INPUT_SIZE
    from workers.anomaly import models

    engine = {n: models.get(n).min_input_size for n in models.names()}
    assert {n: m for n, m in engine.items() if m > 64} == MIN_INPUT_SIZE
    assert all(m >= 64 for m in engine.values())


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
    # the engine refuses what the app does not check before queueing (a learning rate <= 0)
    version = model_version_train(
        user=admin, project=project, architecture="padim", params={"learning_rate": -1}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "failed"
    version.refresh_from_db()
    job = Job.objects.get(pk=version.job_id)
    assert version.status == ModelVersion.Status.FAILED and not version.is_active
    assert "learning_rate" in job.error


def grey_part(seed: int, highlight: bool = False) -> bytes:
    """A flat grey part with fine grain; optionally a white reflection in the middle."""
    import io

    import numpy as np
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    img = np.clip(128 + rng.normal(0, 3, (128, 128, 3)), 0, 255).astype(np.uint8)
    if highlight:
        img[44:84, 44:84] = 255
    buf = io.BytesIO()
    PILImage.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_a_projects_inspection_settings_reach_the_engine(team, client_for, upload):
    """The specular mask, the minimum area and the rest are the project's; each run keeps the
    settings it used."""
    from PIL import Image as PILImage

    from inspection.services.projects import project_update
    from workers.tasks.anomaly import run_inspection, train_anomaly_model
    from workers.tasks.runner import run_job

    project, admin = team["project"], team["admin"]
    api = client_for(admin)
    normals = [upload(f"n{i}.png", grey_part(seed=i)) for i in range(5)]
    api.post(f"/api/projects/{project.pk}/images/", {"files": normals, "is_normal": "true"})
    r = api.post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload("shiny.png", grey_part(seed=9, highlight=True))]},
    )
    shiny = r.json()["files"][0]["image_id"]
    version = model_version_train(
        user=admin, project=project, architecture="padim", params={"input_size": 64}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "succeeded"

    def inspect() -> tuple[int, int, dict]:
        """Suggestions on the shiny image and its heatmap in the middle of the highlight."""
        run = inspection_run_start(user=admin, project=project, scope="selected", image_ids=[shiny])
        assert run_job(str(run.job_id), run_inspection.body) == "succeeded"
        heat = ImageHeatmap.objects.get(run=run)
        with default_storage.open(heat.path) as fh:
            middle = PILImage.open(fh).getpixel((64, 64))
        run.refresh_from_db()
        return Suggestion.objects.filter(run=run).count(), middle, run.params

    found, middle, params = inspect()
    assert found >= 1 and middle > 128  # the reflection is an anomaly to the model
    assert params["specular_mask"] is False and params["min_area"] == 64

    project_update(user=admin, project=project, inspection={"specular_mask": True})
    found, middle, params = inspect()
    assert middle == 0 and params["specular_mask"] is True  # masked before scoring
    # the rerun with other settings replaced the first run's undecided suggestions
    left = Suggestion.objects.filter(image_id=shiny, model_version=version)
    latest = InspectionRun.objects.latest("id").pk
    assert set(left.values_list("run_id", flat=True)) <= {latest} and left.count() == found

    project_update(
        user=admin, project=project, inspection={"specular_mask": False, "min_area": 100_000}
    )
    found, middle, params = inspect()
    assert found == 0 and middle > 128  # nothing is that large: no suggestion
    assert not Suggestion.objects.filter(image_id=shiny, model_version=version).exists()


def test_a_photo_five_times_larger_than_the_normals_is_inspected_resized_and_says_so(
    team, client_for, upload
):
    """It used to fail: "image long side 480px is outside the range the model was trained for
    ... or pass allow_size_mismatch=True", a flag only the API offered."""
    from workers.tasks.anomaly import run_inspection, train_anomaly_model
    from workers.tasks.runner import run_job

    project, admin = team["project"], team["admin"]
    api = client_for(admin)
    normals = [upload(f"n{i}.png", image_bytes(size=(96, 96), seed=i)) for i in range(4)]
    api.post(f"/api/projects/{project.pk}/images/", {"files": normals, "is_normal": "true"})
    r = api.post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload("photo.png", image_bytes(size=(480, 480), seed=7))]},
    )
    photo = r.json()["files"][0]["image_id"]
    version = model_version_train(  # tiles at full resolution: a pixel scale
        user=admin, project=project, architecture="padim", params={"input_size": 64, "scale": 1}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "succeeded"
    version.refresh_from_db()
    assert version.metrics["trained_long_sides"] == [96, 96]
    assert version.metrics["accepted_long_sides"] == [48, 192]
    page = Client()
    page.force_login(admin)
    # the models page says so before anyone inspects
    html = page.get(f"/projects/{project.pk}/models/").content.decode()
    assert 'id="size-mismatch"' in html
    assert "1 image is far from the size the active model learnt from" in html
    assert "48–192 px on their long side as they are, and this one is 480 px" in html
    assert "the largest 5.0× smaller" in html
    run = inspection_run_start(user=admin, project=project, scope="selected", image_ids=[photo])
    assert run_job(str(run.job_id), run_inspection.body) == "succeeded"
    run.refresh_from_db()
    assert run.results[str(photo)]["resized"] == {"from": 480, "to": 96}
    assert Job.objects.get(pk=run.job_id).message.endswith("1 resized to the normals' size")
    assert ImageHeatmap.objects.filter(run=run, image_id=photo).exists()
    html = page.get(f"/runs/{run.pk}/").content.decode()
    assert 'id="resized"' in html and "inspected resized to their size (96 px)" in html
    assert "smaller than about 5 px at full resolution" in html


@pytest.mark.parametrize(
    "architecture, params",
    [
        ("lbp", {"input_size": 64}),
        ("autoencoder", {"input_size": 64, "steps": 3}),
        ("fastflow", {"input_size": 64, "steps": 2}),
        ("cflow", {"input_size": 64, "steps": 2}),
        ("padim", {"input_size": 128, "multiscale": [128, 64]}),
    ],
)
def test_the_baseline_models_train_as_jobs_with_their_own_defaults_and_inspect(
    architecture, params, team, client_for, upload
):
    """The classical LBP baseline, the autoencoder, FastFlow, CFlow and a multi-scale PaDiM,
    chosen on the models page: trained by the job, exported for the CPU runtime, then an
    inspection with them makes a heatmap. The autoencoder trains with its own batch and learning
    rate when the form leaves them out."""
    from workers.tasks.anomaly import run_inspection, train_anomaly_model
    from workers.tasks.runner import run_job

    project, admin = team["project"], team["admin"]
    normals = [upload(f"n{i}.png", image_bytes(size=(96, 96), seed=i)) for i in range(5)]
    client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": normals, "is_normal": "true"},
        format="multipart",
    )
    r = client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload("t.png", image_bytes(size=(96, 96), seed=20))]},
        format="multipart",
    )
    tested = r.json()["files"][0]["image_id"]
    r = client_for(admin).post(
        f"/api/projects/{project.pk}/models/",
        {"architecture": architecture, "params": params},
        format="json",
    )
    assert r.status_code == 202, r.content
    version = ModelVersion.objects.get(pk=r.json()["id"])
    assert run_job(str(version.job_id), train_anomaly_model.body) == "succeeded"
    version.refresh_from_db()
    assert version.status == "ready" and version.architecture == architecture
    assert version.metrics["exports"]["onnx"] is True
    if architecture == "autoencoder":  # the steps asked for, its own batch and rate
        m = version.metrics
        assert (m["steps_done"], m["batch_size"], m["learning_rate"]) == (3, 4, 1e-3)
    elif architecture in ("fastflow", "cflow"):  # anomalib's flows, the steps asked for
        assert version.metrics["steps_done"] == 2
    elif architecture == "lbp":  # one pass: an SVM over the normal images' patches
        assert version.metrics["scorer"] == "ocsvm" and version.metrics["support_vectors"] > 0
    else:  # the models page's "plus half resolution": one PaDiM per scale, maps fused
        assert {"s128_pixel_threshold", "s64_pixel_threshold"} <= set(version.metrics)

    run = inspection_run_start(
        user=team["reviewer"], project=project, scope="selected", image_ids=[tested]
    )
    assert run_job(str(run.job_id), run_inspection.body) == "succeeded"
    run.refresh_from_db()
    assert run.results[str(tested)]["score"] >= 0
    assert ImageHeatmap.objects.filter(run=run, image_id=tested).count() == 1


def test_an_image_result_says_when_the_active_detector_looked_at_its_regions(team, tmp_path):
    """Stored with the active detector (``detect``), the image is marked as looked at by a
    detector even when it classified no region (and its result says so): the review queue's
    "most uncertain first" reads it (a region the detector did not confirm disagrees with it)."""
    from types import SimpleNamespace

    import numpy as np

    from tests.annotations.test_datasets import add_image
    from workers.tasks.anomaly import store_prediction

    project = team["project"]
    image = add_image(project, team["admin"], tmp_path, "a.png", size=(64, 48))
    version = ModelVersion.objects.create(
        project=project, number=1, kind="anomaly", architecture="padim", status="ready"
    )
    run = InspectionRun.objects.create(project=project, model_version=version)
    region = SimpleNamespace(
        box=[4.0, 4.0, 10.0, 10.0], peak_score=0.9, mean_score=0.7, area=100.0, polygon=[], roi=None
    )
    prediction = SimpleNamespace(
        heatmap=np.zeros((48, 64), np.uint8),
        regions=[region],
        image_score=0.9,
        is_anomalous=True,
        params={},
    )

    def broken(path):
        raise RuntimeError("runtime gone")

    # a detector that fails, or none at all, did not look
    for detect in (None, broken):
        out = store_prediction(run, version, image, prediction, "a.png", detect)
        assert "detector" not in out
        image.refresh_from_db()
        assert image.detector_checked_at is None
    looked = store_prediction(run, version, image, prediction, "a.png", lambda path: [])
    assert looked["detector"] is True and "categories" not in looked
    image.refresh_from_db()
    assert image.detector_checked_at is not None
