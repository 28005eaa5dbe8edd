"""The detector job bodies, run in this process: train on a frozen dataset version (a few
iterations on tiny images), activate, run sliced detection, suggestions with categories."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotations.models import DefectCategory, Suggestion
from annotations.services.categories import category_create
from annotations.services.dataset_versions import dataset_version_freeze
from annotations.services.detectors import BACKBONES, detector_train
from annotations.services.labels import LabelIn, labels_import
from inspection.models import Image, InspectionRun, Job, ModelVersion
from inspection.services.images import IncomingFile, image_store_one
from inspection.services.inspections import inspection_run_start
from workers.tasks.detection import run_detection, train_detector
from workers.tasks.runner import run_job

pytestmark = pytest.mark.django_db

GREY, RED, BLUE = (90, 90, 90), (230, 40, 40), (40, 40, 230)
# a few iterations of the smallest CSPResNet on 160 px images: the loop, not the accuracy
TINY = {"backbone": "s", "input_size": 160, "batch_size": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second spinning thread only slows a 2-core box
    yield
    torch.set_num_threads(before)


def squares_image(tmp_path, n: int, size=(160, 128)):
    """A grey photo with a red and a blue square; returns (path, red box, blue box)."""
    rng = np.random.default_rng(n)
    w, h = size
    arr = np.full((h, w, 3), GREY, np.uint8)
    boxes = []
    for colour in (RED, BLUE):
        s = int(rng.integers(14, 24))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        arr[y : y + s, x : x + s] = colour
        boxes.append({"type": "box", "x": x, "y": y, "w": s, "h": s})
    path = tmp_path / f"p{n}.png"
    PILImage.fromarray(arr).save(path)
    return path, boxes


@pytest.fixture
def version(team, tmp_path):
    return squares_version(team, tmp_path)


def squares_version(team, tmp_path, n: int = 6):
    """A frozen dataset version of ``n`` labelled photos (the last one in the val split)."""
    project, admin = team["project"], team["admin"]
    red = category_create(user=admin, project=project, name="red")
    blue = category_create(user=admin, project=project, name="blue")
    for i in range(n):
        path, (rbox, bbox) = squares_image(tmp_path, i)
        out = image_store_one(
            project=project,
            user=admin,
            incoming=IncomingFile(path.name, path),
            split="val" if i == n - 1 else "train",
        )
        image = Image.objects.select_related("project").get(pk=out.image_id)
        labels_import(
            user=admin,
            image=image,
            labels=[LabelIn(red, rbox), LabelIn(blue, bbox)],
            source="import",
        )
    return dataset_version_freeze(user=admin, project=project)


def test_the_app_offers_exactly_the_librarys_sizes():
    """The web process cannot read workers.detection (it never imports the ML packages), so
    the app keeps its own lists of the library's backbones and prediction views."""
    from inspection.services.projects import DETECTOR_VIEWS
    from inspection.views import DETECTOR_VIEW_CHOICES
    from workers.detection.config import SIZES, model_config_for, train_sizes_around
    from workers.detection.tta import VIEWS

    assert list(BACKBONES) == list(SIZES)
    assert list(DETECTOR_VIEWS) == sorted(VIEWS)
    assert [choice[0] for choice in DETECTOR_VIEW_CHOICES] == sorted(VIEWS)
    assert model_config_for("m", 2).width_mult == 0.75
    assert train_sizes_around(640) == tuple(range(320, 769, 32))
    assert train_sizes_around(160) == (96, 128, 160, 192)  # all multiples of the stride


def test_train_activate_detect_and_suggest_with_categories(team, version):
    model = detector_train(
        user=team["admin"],
        project=team["project"],
        version=version,
        params={**TINY, "epochs": 2, "iterations_per_epoch": 2, "rotate": True},
    )
    assert run_job(str(model.job_id), train_detector.body) == "succeeded", Job.objects.get(
        pk=model.job_id
    ).error
    model.refresh_from_db()
    assert model.status == "ready" and model.is_active and default_storage.exists(model.artifact)
    # turned and mirrored examples, as asked (the artifact keeps how it was trained)
    from workers.detection.artifact import read_artifact

    local = default_storage.path(model.artifact)
    assert model.params["rotate"] is True
    assert read_artifact(local)["metadata"]["train_config"]["rotate"] is True
    history = model.metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all("loss" in h for h in history)
    assert model.metrics["evaluated_on"] == "val" and model.metrics["map50"] is not None
    assert set(model.metrics["per_class_ap50"]) == {"red", "blue"}
    assert (
        set(model.metrics["per_class_ap"])
        == set(model.metrics["per_class_ap_small"])
        == set(model.metrics["per_class_pr"])
        == {"red", "blue"}
    )
    # every square is small (14-24 px): the same boxes to find, and large false boxes do not
    # count against AP_small (COCO ignores them there), so it is at least the AP
    small, ap = model.metrics["per_class_ap_small"], model.metrics["per_class_ap"]
    assert all(small[c] >= ap[c] - 1e-9 for c in ap), (small, ap)
    # the curves are kept once, for the last evaluation: the polled history stays light
    assert not any("per_class_pr" in h for h in history) and "per_class_ap" in history[-1]
    exports = model.metrics["exports"]
    assert exports["onnx"] is True
    # INT8 is checked against fp32 on the val split; kept (beside the export) only if it passed
    int8 = exports["int8"]
    assert {"passed", "reason", "map50_fp32", "map50_int8", "ms_fp32", "ms_int8"} <= set(int8)
    prefix = model.artifact.rsplit("/", 1)[0]
    assert (
        default_storage.exists(f"{prefix}/model.{TINY['input_size']}.int8.onnx") is int8["passed"]
    )
    assert not default_storage.exists(f"{prefix}/checkpoint.pt")  # only kept while training
    job = Job.objects.get(pk=model.job_id)
    assert job.message.startswith(f"ppyoloe-sod-s v{model.number}: 2 epochs")

    # a category renamed after the training still gets the detector's boxes (matched by id)
    DefectCategory.objects.filter(project=team["project"], name="red").update(name="Red spot")
    run = inspection_run_start(
        user=team["reviewer"],
        project=team["project"],
        kind="detector",
        scope="selected",
        image_ids=list(Image.objects.values_list("id", flat=True)),
    )
    assert run.model_version == model and run.job.kind == "detection_inspect"
    # two iterations teach little: keep every box the network gives, to see them stored
    InspectionRun.objects.filter(pk=run.pk).update(params={"score_threshold": 0.0})
    assert run_job(str(run.job_id), run_detection.body) == "succeeded"
    precision = "INT8" if int8["passed"] else "FP32"
    from django.test import Client

    page = Client()
    page.force_login(team["admin"])
    html = page.get(f"/projects/{team['project'].pk}/models/").content.decode()
    verdict = "INT8 kept" if int8["passed"] else "INT8 not used, fp32 runs"
    from django.utils.html import escape

    assert escape(f"{verdict}: {int8['reason']}") in html
    assert Job.objects.get(pk=run.job_id).message.endswith(f"(ONNX Runtime, {precision})")
    run.refresh_from_db()
    assert len(run.results) == 6 and all("detections" in r for r in run.results.values())
    made = Suggestion.objects.filter(run=run)
    assert made.exists()
    assert {s.category.name for s in made} <= {"Red spot", "blue"}
    assert all(s.kind == "box" for s in made) and None not in {s.category for s in made}
    assert all(s.model_version_id == model.pk for s in made)
    assert all(s.proposed_category == s.category and s.category_score is not None for s in made)
    # the margin over the box's second category, through ONNX Runtime and the task's storing
    margins = [(s.category_score, s.category_margin) for s in made]
    assert all(m is not None and -1 <= m <= 1 for _, m in margins), margins

    # the anomaly job classifies its regions with the active detector
    from workers.tasks.detection import active_detector

    image = Image.objects.filter(project=team["project"]).first()
    with active_detector(team["project"]) as detect:
        boxes = detect(Path(default_storage.path(image.file.name)))
    assert isinstance(boxes, list) and all(b.category_name in {"Red spot", "blue"} for b in boxes)

    # the project asks for every flip (inspection setting detector_views): the run keeps it,
    # predicts each image in four orientations through ONNX Runtime and fuses their boxes
    from inspection.services.projects import project_update

    project_update(user=team["admin"], project=team["project"], inspection={"detector_views": 4})
    run = inspection_run_start(
        user=team["reviewer"],
        project=team["project"],
        kind="detector",
        scope="selected",
        image_ids=[image.pk],
    )
    assert run.params["views"] == 4
    InspectionRun.objects.filter(pk=run.pk).update(params={**run.params, "score_threshold": 0.0})
    assert run_job(str(run.job_id), run_detection.body) == "succeeded"
    run.refresh_from_db()
    made = list(Suggestion.objects.filter(run=run))
    assert made and run.results[str(image.pk)]["detections"] >= len(made)
    for s in made:  # fused boxes, turned back into the image's pixels
        g = s.geometry
        assert 0 <= g["x"] and g["x"] + g["w"] <= image.width + 1e-6, g
        assert 0 <= g["y"] and g["y"] + g["h"] <= image.height + 1e-6, g
    run_page = page.get(f"/runs/{run.pk}/").content.decode()
    assert "each image in 4 orientations, their boxes fused" in run_page
    project_update(user=team["admin"], project=team["project"], inspection={"detector_views": 1})

    # regions of interest: a detector's box is masked where its centre lies in an excluded
    # region, and carries the region it lies in
    from inspection.services.references import image_mark_reference
    from inspection.services.regions import region_create

    golden = Image.objects.filter(project=team["project"]).order_by("id").first()
    image_mark_reference(user=team["admin"], image=golden, is_reference=True)
    w, h = golden.width, golden.height
    left = region_create(
        user=team["admin"],
        project=team["project"],
        name="clamp",
        reference=golden,
        polygon=[[0, 0], [w / 2, 0], [w / 2, h], [0, h]],
        mode="exclude",
    )
    right = region_create(
        user=team["admin"],
        project=team["project"],
        name="face",
        reference=golden,
        polygon=[[w / 2 - 8, 0], [w, 0], [w, h], [w / 2 - 8, h]],  # under the exclusion too
    )
    run = inspection_run_start(
        user=team["reviewer"],
        project=team["project"],
        kind="detector",
        scope="selected",
        image_ids=[golden.pk],
    )
    assert [r["id"] for r in run.params["regions"]] == [left.pk, right.pk]
    assert run.params["outside_regions"] == "inspect"
    InspectionRun.objects.filter(pk=run.pk).update(params={**run.params, "score_threshold": 0.0})
    assert run_job(str(run.job_id), run_detection.body) == "succeeded"
    run.refresh_from_db()
    outcome = run.results[str(golden.pk)]
    kept = list(Suggestion.objects.filter(run=run))
    # at score 0 the barely trained network boxes the whole picture: some centres lie left
    assert outcome["masked"] > 0 and outcome["detections"] > len(kept) > 0, outcome
    for s in kept:
        x, y, bw, bh = (s.geometry[k] for k in ("x", "y", "w", "h"))
        # the exclusion wins over the region drawn after it; the rest lies in the right one
        assert x + bw / 2 >= w / 2 and s.region_id == right.pk, (s.geometry, s.region_id)
    # the undecided boxes of the run without regions on this image were replaced
    assert not Suggestion.objects.filter(image=golden, status="pending").exclude(run=run).exists()


def test_a_training_whose_dataset_version_is_gone_fails_with_the_reason(team, version):
    model = detector_train(user=team["admin"], project=team["project"], version=version)
    ModelVersion.objects.filter(pk=model.pk).update(
        params={**model.params, "dataset_version": 999999}
    )
    assert run_job(str(model.job_id), train_detector.body) == "failed"
    assert "no longer exists" in Job.objects.get(pk=model.job_id).error
    model.refresh_from_db()
    assert model.status == "failed"


def test_anomaly_regions_take_the_category_of_the_detector_box_covering_them(tmp_path):
    """The seeds' pipeline: heatmap -> candidate regions -> the detector classifies them."""
    from annotations.services.suggestions import SuggestionIn
    from workers.anomaly.regions import Region as EngineRegion
    from workers.detection import Detection
    from workers.tasks.anomaly import _classified

    regions = [
        EngineRegion(box=[10, 10, 20, 20], polygon=[], area=400, peak_score=0.9, mean_score=0.7),
        EngineRegion(box=[100, 100, 8, 8], polygon=[], area=64, peak_score=0.8, mean_score=0.6),
        EngineRegion(box=[200, 10, 30, 30], polygon=[], area=900, peak_score=0.7, mean_score=0.6),
    ]
    found = [
        Detection(12, 12, 28, 28, 0.55, 1, "scratch"),  # inside the first region
        Detection(0, 0, 40, 40, 0.95, 2, "dent", 0.15),  # covers it too, and more surely
        Detection(98, 98, 140, 140, 0.6, 1, "scratch"),  # covers all of the small second one
        Detection(225, 35, 260, 60, 0.9, 2, "dent"),  # touches the third by 5x5 px: too little
    ]
    out, looked = _classified(regions, tmp_path / "a.png", lambda path: found)
    assert looked
    assert [(s.category, s.category_score) for s in out] == [
        ("dent", 0.95),
        ("scratch", 0.6),
        ("", None),
    ]
    # with the margin over the detection's second category (unknown for the second one)
    assert [s.category_margin for s in out] == [pytest.approx(0.8), None, None]
    assert [s.score for s in out] == [0.9, 0.8, 0.7]  # the anomaly scores stay
    assert _classified(regions, tmp_path / "a.png", None) == (
        [SuggestionIn.from_region(r) for r in regions],
        False,
    )

    def broken(path):
        raise RuntimeError("runtime gone")

    # a failing detector did not look: its regions do not disagree with it
    out, looked = _classified(regions, tmp_path / "a.png", broken)
    assert [s.category for s in out] == [""] * 3 and not looked
    assert _classified([], tmp_path / "a.png", lambda path: found) == ([], False)


def test_a_checkpoint_that_cannot_be_continued_starts_the_training_again(team, version):
    """Left by a lost worker, but the training set changed since (or the file is damaged): the
    job trains from epoch 1 again rather than failing or mixing two trainings."""
    from django.core.files.base import ContentFile

    from inspection.services.inspections import model_version_folder

    model = detector_train(
        user=team["admin"],
        project=team["project"],
        version=version,
        params={**TINY, "epochs": 1, "iterations_per_epoch": 1},
    )
    folder = model_version_folder(model)
    foreign = io.BytesIO()
    with zipfile.ZipFile(foreign, "w") as zf:  # whole, but not a torch checkpoint
        zf.writestr("data.txt", "not a checkpoint")
    default_storage.save(f"{folder}/checkpoint-e1.pt", ContentFile(foreign.getvalue()))
    assert run_job(str(model.job_id), train_detector.body) == "succeeded"
    job = Job.objects.get(pk=model.job_id)
    assert job.result["resumed_after_epoch"] == 0
    model.refresh_from_db()
    assert model.status == "ready" and [h["epoch"] for h in model.metrics["history"]] == [1]
    _dirs, files = default_storage.listdir(folder)
    assert not [f for f in files if f.startswith("checkpoint")]


def test_a_checkpoint_cut_short_by_a_lost_worker_falls_back_to_the_one_before(
    team, version, monkeypatch
):
    """Storage writes a checkpoint under its final name chunk by chunk: a worker killed while
    uploading epoch 2's leaves a truncated file beside epoch 1's whole one. The re-queued job
    goes on after epoch 1 (and the truncated file goes), not from zero."""
    from django.core.files.base import ContentFile

    from inspection.services.inspections import model_version_folder
    from workers.tasks import detection as task_module

    model = detector_train(
        user=team["admin"],
        project=team["project"],
        version=version,
        params={**TINY, "epochs": 3, "iterations_per_epoch": 1},
    )
    folder = model_version_folder(model)
    store = task_module._checkpoint_store

    def store_then_die_uploading_the_next(folder_, path, epoch):
        store(folder_, path, epoch)
        default_storage.save(
            f"{folder_}/checkpoint-e{epoch + 1}.pt", ContentFile(path.read_bytes()[:1000])
        )
        raise SystemExit("worker killed")  # not an Exception: nothing cleans up, as on SIGKILL

    monkeypatch.setattr(task_module, "_checkpoint_store", store_then_die_uploading_the_next)
    with pytest.raises(SystemExit):
        run_job(str(model.job_id), train_detector.body)
    monkeypatch.setattr(task_module, "_checkpoint_store", store)
    _dirs, files = default_storage.listdir(folder)
    assert sorted(f for f in files if f.startswith("checkpoint")) == [
        "checkpoint-e1.pt",
        "checkpoint-e2.pt",
    ]
    Job.objects.filter(pk=model.job_id).update(status="queued")  # as the stale sweep does
    assert run_job(str(model.job_id), train_detector.body) == "succeeded"
    job = Job.objects.get(pk=model.job_id)
    assert job.result["resumed_after_epoch"] == 1 and job.attempts == 2
    model.refresh_from_db()
    assert [h["epoch"] for h in model.metrics["history"]] == [1, 2, 3]
    _dirs, files = default_storage.listdir(folder)
    assert not [f for f in files if f.startswith("checkpoint")]
