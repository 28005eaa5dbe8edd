"""Regions of interest in the anomaly job bodies, run in this process: a region's model trained on
its registered crops, then an inspection run that registers each part onto the golden sample,
masks the excluded region and tags each suggestion with its region."""

import tempfile
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.core.files.storage import default_storage

from annotations.geometry import bounds
from annotations.models import Suggestion
from inspection.models import Image, InspectionRegion, Job, ModelVersion
from inspection.services.inspections import inspection_run_start, model_version_train
from inspection.services.references import image_mark_reference
from inspection.services.regions import region_create, region_model_train

pytestmark = pytest.mark.django_db

SIZE = (200, 160)  # width, height
FACE = [[60, 40], [150, 40], [150, 120], [60, 120]]
CAP = [[8, 8], [52, 8], [52, 52], [8, 52]]


def _design(seed: int = 0) -> np.ndarray:
    """The part as designed: blobs and edges to register on, a fine texture to learn (another
    ``seed``: another part with the same shapes, which does not register onto this one)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (SIZE[1], SIZE[0])).astype(np.float32), (0, 0), 4)
    part = 0.5 + 0.25 * noise / noise.std()
    cv2.rectangle(part, (70, 50), (90, 70), 0.9, -1)
    cv2.circle(part, (160, 130), 15, 0.15, -1)
    return part


def _photo(
    dx: float, dy: float, seed: int, defect: tuple[int, int] | None = None, design: int = 0
) -> bytes:
    """One part on the fixture, moved by (dx, dy), with sensor noise and maybe a dark dent at
    ``defect`` (the design's pixels)."""
    part = _design(design)
    if defect is not None:
        cv2.circle(part, defect, 6, 0.0, -1)
    moved = cv2.warpAffine(
        part, np.float32([[1, 0, dx], [0, 1, dy]]), SIZE, borderMode=cv2.BORDER_REFLECT
    )
    moved += np.random.default_rng(seed).normal(0, 0.01, moved.shape).astype(np.float32)
    grey = np.clip(moved * 255, 0, 255).astype(np.uint8)
    return cv2.imencode(".png", cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))[1].tobytes()


def _covers(suggestion, x: float, y: float) -> bool:
    x0, y0, x1, y1 = bounds(suggestion.geometry)
    return x0 <= x <= x1 and y0 <= y <= y1


def _upload(client, project, upload, files: dict[str, bytes], **extra) -> dict[str, int]:
    r = client.post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload(name, data) for name, data in files.items()], **extra},
        format="multipart",
    )
    assert r.status_code in (200, 201), r.content
    return {f["name"]: f["image_id"] for f in r.json()["files"]}


def test_region_model_and_masks_in_an_inspection_run(team, client_for, upload):
    from workers.tasks.anomaly import run_inspection, train_anomaly_model
    from workers.tasks.runner import run_job

    project, admin = team["project"], team["admin"]
    client = client_for(admin)
    shifts = [(0, 0), (3, -2), (-4, 3), (2, 4), (-3, -3), (4, 1)]
    normals = _upload(
        client,
        project,
        upload,
        {
            **{f"n{i}.png": _photo(dx, dy, i) for i, (dx, dy) in enumerate(shifts)},
            "n-other.png": _photo(0, 0, 9, design=1),  # marked normal, but another part
        },
        is_normal="true",
    )
    golden = Image.objects.get(pk=normals["n0.png"])
    image_mark_reference(user=admin, image=golden, is_reference=True)
    face = region_create(user=admin, project=project, name="face", reference=golden, polygon=FACE)
    cap = region_create(
        user=admin, project=project, name="cap", reference=golden, polygon=CAP, mode="exclude"
    )

    whole = model_version_train(
        user=admin, project=project, architecture="padim", params={"input_size": 64}
    )
    assert run_job(str(whole.job_id), train_anomaly_model.body) == "succeeded"
    own = region_model_train(user=admin, region=face, params={"input_size": 64})
    assert run_job(str(own.job_id), train_anomaly_model.body) == "succeeded"
    own.refresh_from_db()
    face.refresh_from_db()
    whole.refresh_from_db()
    assert face.model_version_id == own.pk and own.status == "ready" and not own.is_active
    assert whole.is_active  # the region's model did not replace the whole image's
    assert own.metrics["region"]["name"] == "face"
    # the other part could not be registered: left out of the region's training, with why
    [skipped] = own.metrics["region"]["skipped"]
    assert (
        skipped["name"] == "n-other.png"
        and "could not be registered onto n0.png" in (skipped["reason"])
    )
    listed = client.get(f"/api/projects/{project.pk}/regions/").json()["results"][0]
    assert listed["model"] == "padim v2" and listed["model_status"] == "ready"  # v1: whole
    assert listed["models"][0]["trained_on"] == 6
    assert [x["name"] for x in listed["models"][0]["skipped"]] == ["n-other.png"]
    assert own.metrics["region"]["box"] == [55, 36, 155, 124]  # the polygon's box, grown 5 %

    tests = _upload(
        client,
        project,
        upload,
        {
            "dent-face.png": _photo(5, -3, 20, defect=(110, 95)),
            "dent-cap.png": _photo(-2, 2, 21, defect=(30, 30)),
            "other-part.png": cv2.imencode(
                ".png", np.random.default_rng(5).integers(0, 255, (160, 200, 3), np.uint8)
            )[1].tobytes(),
        },
    )
    run = inspection_run_start(
        user=team["reviewer"], project=project, scope="selected", image_ids=list(tests.values())
    )
    assert [r["name"] for r in run.params["regions"]] == ["face", "cap"]
    assert run_job(str(run.job_id), run_inspection.body) == "succeeded"
    run.refresh_from_db()
    assert (
        "could not be registered onto n0.png" in run.results[str(tests["other-part.png"])]["error"]
    )

    found = Suggestion.objects.filter(image_id=tests["dent-face.png"])
    at_dent = [s for s in found if _covers(s, 115, 92)]
    assert [s.region_id for s in at_dent] == [face.pk]
    # the dent in the excluded cap is never suggested
    in_cap = Suggestion.objects.filter(image_id=tests["dent-cap.png"])
    assert not [s for s in in_cap if _covers(s, 28, 32)], "a suggestion in the excluded region"
    assert all(s.region_id != cap.pk for s in Suggestion.objects.all())

    # reviewers see the region's name in the queue and can filter by it
    body = (
        client_for(team["reviewer"])
        .get(f"/api/projects/{project.pk}/suggestions/", {"region": face.pk})
        .json()
    )
    assert {s["region_name"] for s in body["results"]} == {"face"}
    assert at_dent[0].pk in [s["id"] for s in body["results"]]

    # the region deleted: its suggestions stay, without it; a new run does without it
    InspectionRegion.objects.filter(pk=face.pk).delete()
    assert Suggestion.objects.get(pk=at_dent[0].pk).region_id is None
    assert ModelVersion.objects.filter(pk=own.pk).exists()

    # the golden sample deleted while a run waits: its regions went with it, and the run
    # inspects the images whole (the dent in the cap, masked before, is now suggested)
    run = inspection_run_start(
        user=team["reviewer"], project=project, scope="selected", image_ids=[tests["dent-cap.png"]]
    )
    assert [r["name"] for r in run.params["regions"]] == ["cap"]
    golden.delete()
    assert not InspectionRegion.objects.exists()
    assert run_job(str(run.job_id), run_inspection.body) == "succeeded"
    assert "inspected whole" in Job.objects.get(pk=run.job_id).result["message"]
    in_cap = Suggestion.objects.filter(image_id=tests["dent-cap.png"])
    assert [s for s in in_cap if _covers(s, 28, 32)]


def test_the_reference_deleted_during_a_run(
    team, client_for, upload, django_capture_on_commit_callbacks
):
    """The golden sample is deleted while a run is half way (its regions go with it, and the
    paired images lose their stored alignment): the rest of the run inspects whole and says so,
    instead of failing every image left."""
    from inspection.services.images import image_delete
    from inspection.services.inspections import regions_snapshot
    from workers.anomaly import PredictConfig
    from workers.anomaly.inference import Prediction
    from workers.tasks.regions import RunRegions

    project, admin = team["project"], team["admin"]
    ids = _upload(
        client_for(admin),
        project,
        upload,
        {"golden.png": _photo(0, 0, 1), "part.png": _photo(3, 2, 2)},
        is_normal="true",
    )
    golden = Image.objects.get(pk=ids["golden.png"])
    image_mark_reference(user=admin, image=golden, is_reference=True)
    region_create(
        user=admin, project=project, name="cap", reference=golden, polygon=CAP, mode="exclude"
    )
    rows = regions_snapshot(project)["regions"]
    with ExitStack() as stack:
        regions = RunRegions(rows, "inspect", stack, Path(tempfile.mkdtemp()))
        with django_capture_on_commit_callbacks(execute=True):
            image_delete(user=admin, image=golden)  # its file goes too
        part = Image.objects.get(pk=ids["part.png"])
        score = np.full((160, 200), 0.9, np.float32)
        prediction = Prediction(
            "part.png",
            (160, 200),
            0.9,
            True,
            np.zeros((160, 200), np.uint8),
            [],
            "m",
            "padim",
            {},
            {},
            score_map=score,
        )
        with (
            default_storage.open(part.file.name) as fh,
            tempfile.NamedTemporaryFile(suffix=".png") as copy,
        ):
            copy.write(fh.read())
            copy.flush()
            out = regions.apply(part, copy.name, prediction, PredictConfig())
    assert out is prediction  # inspected whole: the cap is not masked any more
    assert regions.specs == [] and "deleted during the run" in regions.notes[0]
