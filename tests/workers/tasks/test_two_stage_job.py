"""The two-stage change detector in the app (run in this process): a project admin picks it
(``reference: "two-stage"``) for a frozen version of paired scans; the training job learns from
the frozen pairs (the references warped onto their images), checks itself on val and is
activated; a detection run compares each paired image with its reference and stores suggestions
with their categories where the defects are. The anomaly job's candidate classifier does not use
it (it needs each image's reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from PIL import Image as PILImage

from annotations.models import Suggestion
from annotations.services.categories import category_create
from annotations.services.dataset_versions import dataset_version_freeze
from annotations.services.detectors import detector_proposal, detector_train
from annotations.services.labels import LabelIn, labels_import
from inspection import storage
from inspection.models import Image, InspectionRun, Job
from inspection.services.images import IncomingFile, image_store_one, images_upload
from inspection.services.inspections import inspection_run_start
from inspection.services.references import references_pair
from workers.detection import load_detector
from workers.detection.two_stage import box_iou
from workers.tasks.detection import active_detector, run_detection, train_detector
from workers.tasks.references import align_references
from workers.tasks.runner import run_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("torch_one_thread")]

SIDE = 224


def scan(seed: int) -> np.ndarray:
    """A binary board: white tracks and pads on black (corners to align on)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((SIDE, SIDE), np.uint8)
    for y in (30, 110, 170):
        img[y : y + 18, :] = 255
    for x in (50, 150):
        img[:, x : x + 18] = 255
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, SIDE - 12, 2))
        s = int(rng.integers(5, 12))
        img[y : y + s, x : x + s] = 255
    return img


def with_defects(ref: np.ndarray, seed: int) -> tuple[np.ndarray, list[tuple]]:
    """``ref`` with an "extra" square (white on black) and a "missing" one (black in a
    track), 8 px each; their labelled boxes (x, y, w, h, category) 3 px around them."""
    rng = np.random.default_rng(500 + seed)
    img, boxes = ref.copy(), []
    for name, want in (("extra", 0), ("missing", 255)):
        for _ in range(2000):
            x, y = (int(v) for v in rng.integers(12, SIDE - 20, 2))
            if (ref[y - 5 : y + 13, x - 5 : x + 13] == want).all() and all(
                abs(x - bx) > 24 or abs(y - by) > 24 for bx, by, *_ in boxes
            ):
                img[y : y + 8, x : x + 8] = 255 - want
                boxes.append((x - 3, y - 3, 14, 14, name))
                break
    assert len(boxes) == 2, "no room for the defects on this board"
    return img, boxes


def store(project, user, tmp_path, name: str, array: np.ndarray, **kw) -> Image:
    path = tmp_path / name
    PILImage.fromarray(array).convert("RGB").save(path)
    out = image_store_one(project=project, user=user, incoming=IncomingFile(name, path), **kw)
    return Image.objects.get(pk=out.image_id)


def paired_scans(team, tmp_path, count: int = 8, fresh: int = 1) -> dict:
    """``count`` labelled scans paired with their golden boards (the last two in val), and
    ``fresh`` unlabelled paired scans; aligned by the reference job; dataset v1 frozen."""
    project, admin = team["project"], team["admin"]
    cats = {n: category_create(user=admin, project=project, name=n) for n in ("extra", "missing")}
    pairs, labelled, truth = [], [], {}
    for i in range(count + fresh):
        ref = scan(i)
        golden = store(project, admin, tmp_path, f"golden-{i}.png", ref)
        img, boxes = with_defects(ref, i)
        if i < count:
            split = "val" if i >= count - 2 else "train"
            image = store(project, admin, tmp_path, f"board-{i}.png", img, split=split)
            labels_import(
                user=admin,
                image=image,
                labels=[
                    LabelIn(cats[c], {"type": "box", "x": x, "y": y, "w": w, "h": h})
                    for x, y, w, h, c in boxes
                ],
                source="import",
            )
            labelled.append(image)
        else:
            image = store(project, admin, tmp_path, f"new-{i}.png", img)
            truth[image.pk] = boxes
        pairs.append((image, golden))
    paired, refused = references_pair(user=admin, project=project, pairs=pairs)
    assert paired == len(pairs) and not refused
    job = Job.objects.get(kind="reference_align")
    status = run_job(str(job.pk), align_references.body)
    if status == "skipped":  # a browser test's live worker claimed the job first
        from tests.conftest import wait_for_job

        status = wait_for_job(job.pk).status
    assert status == "succeeded"
    assert Image.objects.filter(alignment__status="ok").count() == len(pairs)
    return {
        "labelled": labelled,
        "fresh": truth,
        "version": dataset_version_freeze(user=admin, project=project),
    }


def test_two_stage_detector_trains_on_frozen_pairs_and_suggests_categories(team, tmp_path):
    data = paired_scans(team, tmp_path)
    version = data["version"]
    proposal = detector_proposal(user=team["admin"], version=version)
    assert any("two-stage change detector" in r for r in proposal["reasons"])
    asked = detector_proposal(
        user=team["admin"], version=version, params={"reference": "two-stage"}
    )
    assert asked["params"]["epochs"] == 30  # its own default, not the PP-YOLOE-SOD's
    assert asked["params"]["networks"] == 2  # two networks averaged by default
    assert "DeepPCB benchmark" in asked["estimate_basis"]
    model = detector_train(
        user=team["admin"],
        project=team["project"],
        version=version,
        params={"reference": "two-stage", "epochs": 8},
    )
    assert model.architecture == "two-stage-change" and model.params["reference"] == "two-stage"
    assert run_job(str(model.job_id), train_detector.body) == "succeeded", Job.objects.get(
        pk=model.job_id
    ).error
    model.refresh_from_db()
    assert model.status == "ready" and model.is_active
    # two networks of 8 epochs, one after the other; the last evaluation is of both averaged
    assert model.metrics["epochs"] == 16 and len(model.metrics["history"]) == 16
    assert [h["network"] for h in model.metrics["history"]] == [1] * 8 + [2] * 8
    with storage.local_tree(str(Path(model.artifact).parent)) as folder:
        assert len(load_detector(folder / Path(model.artifact).name).nets) == 2
    assert model.metrics["evaluated_on"] == "val" and model.metrics["map50"] >= 0.8
    assert set(model.metrics["per_class_ap50"]) == {"extra", "missing"}
    assert model.metrics["exports"] == {
        "onnx": False,
        "runtime": "torch (a two-stage change detector)",
    }
    with active_detector(team["project"]) as detect:
        assert detect is None  # it needs each image's reference: no candidate classifier

    run = inspection_run_start(
        user=team["reviewer"], project=team["project"], kind="detector", scope="new"
    )
    (fresh_id,) = data["fresh"]
    assert fresh_id in run.image_ids
    # a low score threshold, so that each proposal's runner-up category passes it as well
    InspectionRun.objects.filter(pk=run.pk).update(params={**run.params, "score_threshold": 0.01})
    assert run_job(str(run.job_id), run_detection.body) == "succeeded", Job.objects.get(
        pk=run.job_id
    ).error
    run = InspectionRun.objects.get(pk=run.pk)
    assert all("error" not in r for r in run.results.values()), run.results
    found = list(Suggestion.objects.filter(run=run, image_id=fresh_id).select_related("category"))
    for x, y, w, h, name in data["fresh"][fresh_id]:
        best = max(found, key=lambda s: box_iou(_xyxy(s), (x, y, x + w, y + h)))
        assert box_iou(_xyxy(best), (x, y, x + w, y + h)) >= 0.5
        assert best.category.name == name and best.model_version_id == model.pk
    # one suggestion per defect: the runner-up category is its margin, not a second box
    for i, a in enumerate(found):
        assert all(box_iou(_xyxy(a), _xyxy(b)) <= 0.7 for b in found[i + 1 :]), found
    assert all(s.category_margin is not None for s in found)


def _xyxy(suggestion) -> tuple:
    g = suggestion.geometry
    return (g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"])


def test_two_stage_is_refused_without_pairs(team, tmp_path):
    project, admin = team["project"], team["admin"]
    spot = category_create(user=admin, project=project, name="spot")
    image = store(project, admin, tmp_path, "alone.png", scan(1), split="train")
    labels_import(
        user=admin,
        image=image,
        labels=[LabelIn(spot, {"type": "box", "x": 10, "y": 10, "w": 16, "h": 16})],
        source="import",
    )
    version = dataset_version_freeze(user=admin, project=project)
    with pytest.raises(ValidationError, match="two-stage change detector learns from images"):
        detector_train(
            user=admin, project=project, version=version, params={"reference": "two-stage"}
        )
    assert not Job.objects.filter(kind="detection_train").exists()


def test_auto_inspect_runs_paired_models_once_the_uploads_are_aligned(team, tmp_path):
    """An auto-inspecting project with an active detector that compares with references: an
    upload stores its images (it once failed: they are not aligned yet), and the alignment job
    starts the detector's run over the images it aligned."""
    from inspection.models import ModelVersion
    from inspection.services.projects import project_update

    project, admin = team["project"], team["admin"]
    model = ModelVersion.objects.create(
        project=project,
        kind=ModelVersion.Kind.DETECTOR,
        number=1,
        architecture="two-stage-change",
        status=ModelVersion.Status.READY,
        params={"reference": "two-stage", "epochs": 1},
        artifact="models/none.pt",
        is_active=True,
    )
    project_update(user=admin, project=project, auto_inspect=True)
    project.refresh_from_db()
    golden = store(project, admin, tmp_path, "golden.png", scan(3))
    path = tmp_path / "board.png"
    PILImage.fromarray(with_defects(scan(3), 3)[0]).convert("RGB").save(path)
    report = images_upload(user=admin, project=project, files=[IncomingFile("board.png", path)])
    image = Image.objects.get(pk=report.stored[0].image_id)
    # nothing to compare with yet: no run, and no error (the upload once failed here)
    assert report.detection_run is None and not InspectionRun.objects.exists()
    references_pair(user=admin, project=project, pairs=[(image, golden)])
    job = Job.objects.get(kind="reference_align")
    assert run_job(str(job.pk), align_references.body) == "succeeded"
    job.refresh_from_db()
    run = InspectionRun.objects.get()
    assert run.image_ids == [image.pk] and run.model_version.architecture == "two-stage-change"
    assert job.result["runs"] == {"detector": run.pk}
    assert f"detector run #{run.pk} started" in job.result["message"]

    # a run that cannot start (here: the model is one region's) leaves the alignments done
    ModelVersion.objects.filter(pk=model.pk).update(params={**model.params, "region": 1})
    other = store(project, admin, tmp_path, "board-2.png", with_defects(scan(3), 4)[0])
    references_pair(user=admin, project=project, pairs=[(other, golden)])
    job = Job.objects.filter(kind="reference_align").order_by("-created_at").first()
    assert run_job(str(job.pk), align_references.body) == "succeeded"
    job.refresh_from_db()
    assert job.result["aligned"] == [other.pk] and job.result["runs"] == {}
    assert "no automatic run: That model was trained on one region" in job.result["message"]
    assert InspectionRun.objects.count() == 1
