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
from annotations.selectors import review_filter_choices
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

    # the region's own model made it: recorded under that version, in the run (the rest of
    # the run's suggestions are the whole image's model's)
    assert at_dent[0].model_version_id == own.pk and at_dent[0].run_id == run.pk
    in_run = Suggestion.objects.filter(run=run)
    assert {s.model_version_id for s in in_run if s.region_id == face.pk} == {own.pk}
    assert {s.model_version_id for s in in_run if s.region_id is None} <= {whole.pk}
    reviewer = client_for(team["reviewer"])
    queue = f"/api/projects/{project.pk}/suggestions/"
    by_own = reviewer.get(queue, {"model_version": own.pk}).json()["results"]
    assert at_dent[0].pk in [s["id"] for s in by_own]
    assert {(s["model_version"], s["model"], s["run"]) for s in by_own} == {
        (own.pk, "padim v2", run.pk)
    }
    by_whole = reviewer.get(queue, {"model_version": whole.pk}).json()["results"]
    assert at_dent[0].pk not in [s["id"] for s in by_whole]
    by_run = reviewer.get(queue, {"run": run.pk}).json()["results"]
    assert at_dent[0].pk in [s["id"] for s in by_run]
    # the queue's menus: the region's version has its own entry; the run is listed once, by
    # its own version
    menus = review_filter_choices(project=project)
    assert own.pk in [v["id"] for v in menus["versions"]]
    [listed_run] = [r for r in menus["runs"] if r["id"] == run.pk]
    assert listed_run["label"].startswith(f"run {run.pk} · anomaly v{whole.number} ")
    assert listed_run["pending"] == in_run.filter(status="pending").count()

    # a newer model of the region supersedes its older model's undecided suggestion at the
    # same place; the whole image's model's suggestions elsewhere stay
    newer = region_model_train(user=admin, region=face, params={"input_size": 64})
    assert run_job(str(newer.job_id), train_anomaly_model.body) == "succeeded"
    face.refresh_from_db()
    assert face.model_version_id == newer.pk
    outside = [s.pk for s in found if s.region_id is None]
    again = inspection_run_start(
        user=team["reviewer"], project=project, scope="selected", image_ids=[tests["dent-face.png"]]
    )
    assert run_job(str(again.job_id), run_inspection.body) == "succeeded"
    found = Suggestion.objects.filter(image_id=tests["dent-face.png"])
    at_dent = [s for s in found if _covers(s, 115, 92)]
    assert [(s.model_version_id, s.run_id, s.region_id) for s in at_dent] == [
        (newer.pk, again.pk, face.pk)
    ]
    assert not found.filter(model_version=own).exists()
    # the whole image's model ran with other settings (the regions' models changed): its
    # undecided suggestions were replaced by this run's
    assert not found.filter(pk__in=outside, run=run).exists()
    assert {s.model_version_id for s in found if s.region_id is None} <= {whole.pk}

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


def test_one_runs_versions_stand_side_by_side_and_the_latest_run_wins(team, tmp_path):
    """A run whose region has a model of its own stores two versions' suggestions on an image:
    the region's (found there) and the run's (elsewhere). They never supersede each other, even
    at overlapping places; a later run's suggestion supersedes the undecided ones of other
    versions at its place (here the region's newer model), and leaves the rest."""
    from types import SimpleNamespace

    from inspection.models import InspectionRun
    from tests.annotations.test_datasets import add_image
    from workers.tasks.anomaly import store_prediction

    project = team["project"]
    image = add_image(project, team["admin"], tmp_path, "a.png", size=(64, 48))
    whole, own, newer = (
        ModelVersion.objects.create(
            project=project, number=n, kind="anomaly", architecture="padim", status="ready"
        )
        for n in (1, 2, 3)
    )
    region = InspectionRegion.objects.create(
        project=project, reference=image, name="face", polygon=[[0, 0], [30, 0], [30, 30]]
    )

    def found(*boxes):
        return SimpleNamespace(
            heatmap=np.zeros((48, 64), np.uint8),
            regions=[
                SimpleNamespace(
                    box=box, peak_score=0.9, mean_score=0.7, area=100.0, polygon=[], roi=roi
                )
                for box, roi in boxes
            ],
            image_score=0.9,
            is_anomalous=True,
            params={},
        )

    first = InspectionRun.objects.create(project=project, model_version=whole)
    out = store_prediction(
        first,
        whole,
        image,
        found(([4, 4, 10, 10], None), ([5, 4, 10, 10], region.pk), ([40, 30, 10, 10], None)),
        "a.png",
        None,
        {region.pk: own},
    )
    assert out["suggestions"] == 3
    stored = Suggestion.objects.filter(image=image).order_by("id")
    assert [(s.model_version_id, s.run_id, s.region_id) for s in stored] == [
        (whole.pk, first.pk, None),
        (whole.pk, first.pk, None),
        (own.pk, first.pk, region.pk),
    ]
    elsewhere = stored.get(geometry__x=40)

    # the region's newer model, in a later run: the latest run wins at its place, whichever
    # model made the older suggestions there; elsewhere nothing changes
    second = InspectionRun.objects.create(project=project, model_version=whole)
    out = store_prediction(
        second, whole, image, found(([5, 5, 10, 10], region.pk)), "a.png", None, {region.pk: newer}
    )
    assert out["suggestions"] == 1

    def out_id(run):
        return Suggestion.objects.get(run=run).pk

    assert [
        (s.pk, s.model_version_id, s.run_id)
        for s in Suggestion.objects.filter(image=image).order_by("id")
    ] == [(elsewhere.pk, whole.pk, first.pk), (out_id(second), newer.pk, second.pk)]


@pytest.mark.django_db(transaction=True)  # the station's writer thread stores the frames
def test_a_station_records_a_regions_own_model_under_its_version(
    team, client_for, upload, tmp_path
):
    """At the line as in a run: the station registers each frame onto the golden sample, and a
    suggestion its NG frame gets in a region with its own model is that model's version's (the
    queue's model filter, superseding and lineage follow it); the rest are the active model's."""
    from inspection.models import StationResult
    from inspection.services.stations import station_create
    from workers.tasks.anomaly import train_anomaly_model
    from workers.tasks.runner import run_job
    from workers.tasks.stations import StationProcess

    project, admin = team["project"], team["admin"]
    shifts = [(0, 0), (3, -2), (-4, 3), (2, 4), (-3, -3), (4, 1)]
    normals = _upload(
        client_for(admin),
        project,
        upload,
        {f"n{i}.png": _photo(dx, dy, i) for i, (dx, dy) in enumerate(shifts)},
        is_normal="true",
    )
    golden = Image.objects.get(pk=normals["n0.png"])
    image_mark_reference(user=admin, image=golden, is_reference=True)
    face = region_create(user=admin, project=project, name="face", reference=golden, polygon=FACE)
    whole = model_version_train(
        user=admin, project=project, architecture="padim", params={"input_size": 64}
    )
    assert run_job(str(whole.job_id), train_anomaly_model.body) == "succeeded"
    own = region_model_train(user=admin, region=face, params={"input_size": 64})
    assert run_job(str(own.job_id), train_anomaly_model.body) == "succeeded"

    folder = tmp_path / "line"
    folder.mkdir()
    (folder / "a-dent-face.png").write_bytes(_photo(5, -3, 20, defect=(110, 95)))
    station = station_create(
        user=admin, project=project, name="press-3", source=str(folder), ok_sample_rate=0.0
    )
    assert StationProcess("press-3", until_idle=True).run() == 0

    row = StationResult.objects.get(station=station, source_name="a-dent-face.png")
    assert row.verdict == "ng" and row.image_id is not None, (row.verdict, row.error)
    found = Suggestion.objects.filter(image_id=row.image_id)
    at_dent = [s for s in found if _covers(s, 115, 92)]
    assert [(s.region_id, s.model_version_id) for s in at_dent] == [(face.pk, own.pk)]
    assert {s.model_version_id for s in found if s.region_id is None} <= {whole.pk}
    # the reviewer's model filter finds it under the region's model
    body = (
        client_for(team["reviewer"])
        .get(f"/api/projects/{project.pk}/suggestions/", {"model_version": own.pk})
        .json()
    )
    assert at_dent[0].pk in [s["id"] for s in body["results"]]
