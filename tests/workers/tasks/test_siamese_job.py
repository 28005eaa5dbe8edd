"""The Siamese detector in the app (run in this process): the proposal offers it when the
labelled train images have aligned references; the training job warps each frozen reference onto
its image and trains the two-input network (a few iterations on tiny pairs); a detection run
compares each image with its reference, and images without one are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from PIL import Image as PILImage

from annotations.services.categories import category_create
from annotations.services.dataset_versions import dataset_version_freeze
from annotations.services.detectors import detector_proposal, detector_train
from annotations.services.labels import LabelIn, labels_import
from inspection.models import Image, InspectionRun, Job
from inspection.services.images import IncomingFile, image_store_one
from inspection.services.inspections import inspection_run_start
from inspection.services.references import references_pair
from workers.tasks.detection import run_detection, train_detector
from workers.tasks.references import align_references
from workers.tasks.runner import run_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("torch_one_thread")]

SIZE = (160, 128)


def board(seed: int) -> np.ndarray:
    """A textured board (something to align on), a little larger than the pictures."""
    rng = np.random.default_rng(seed)
    w, h = SIZE[0] + 8, SIZE[1] + 8
    coarse = rng.integers(60, 200, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(PILImage.fromarray(coarse).resize((w, h), PILImage.BILINEAR))[:h, :w]


def store(project, user, tmp_path, name: str, array: np.ndarray, **kw) -> Image:
    path = tmp_path / name
    PILImage.fromarray(array).save(path)
    out = image_store_one(project=project, user=user, incoming=IncomingFile(name, path), **kw)
    return Image.objects.get(pk=out.image_id)


def paired_boards(team, tmp_path, boards: list[np.ndarray], spot: int = 16, val_last=True):
    """Tested boards (cut from ``boards``) with a red spot of ``spot`` px (labelled), each
    paired with its golden board and aligned; the last one in val when ``val_last``. Plus a
    labelled board without a reference."""
    project, admin = team["project"], team["admin"]
    category = category_create(user=admin, project=project, name="spot")
    made = []
    for i, big in enumerate(boards):
        golden = store(project, admin, tmp_path, f"g{i}.png", big[4:132, 4:164].copy())
        tested = big[6:134, 5:165].copy()
        x, y = 30 + 20 * i, 40 + 10 * i
        tested[y : y + spot, x : x + spot] = (230, 40, 40)
        split = "val" if val_last and i == len(boards) - 1 else "train"
        image = store(project, admin, tmp_path, f"t{i}.png", tested, split=split)
        labels_import(
            user=admin,
            image=image,
            labels=[LabelIn(category, {"type": "box", "x": x, "y": y, "w": spot, "h": spot})],
            source="import",
        )
        made.append((image, golden))
    lone = store(project, admin, tmp_path, "lone.png", board(9)[:128, :160].copy(), split="train")
    labels_import(
        user=admin,
        image=lone,
        labels=[LabelIn(category, {"type": "box", "x": 10, "y": 10, "w": 16, "h": 16})],
        source="import",
    )
    paired, refused = references_pair(user=admin, project=project, pairs=made)
    assert paired == len(boards) and not refused
    job = Job.objects.get(kind="reference_align")
    assert run_job(str(job.pk), align_references.body) == "succeeded"
    assert Image.objects.filter(alignment__status="ok").count() == len(boards)
    return {
        "images": [m[0] for m in made],
        "lone": lone,
        "version": dataset_version_freeze(user=admin, project=project),
    }


@pytest.fixture
def pairs(team, tmp_path):
    """Five tested boards with a red spot (labelled), each paired with its golden board; the
    last one in val. Plus a labelled board without a reference."""
    return paired_boards(team, tmp_path, [board(i) for i in range(5)])


@pytest.mark.parametrize("reference", ["siamese", "stacked"])
def test_siamese_detector_trains_on_frozen_pairs_and_runs_with_references(team, pairs, reference):
    """The proposal's stacked detector (the reference as input channels) with defects copied
    along the references, and the Siamese one: both train on the frozen pairs, export to a
    two-input ONNX and run on paired images only."""
    version = pairs["version"]
    proposal = detector_proposal(user=team["admin"], version=version)
    assert proposal["params"]["reference"] == "stacked"
    assert proposal["facts"]["train_labelled_paired"] == 4
    assert proposal["facts"]["train_labelled"] == 5  # the lone board has no reference
    assert any("aligned reference" in r for r in proposal["reasons"])
    model = detector_train(
        user=team["admin"],
        project=team["project"],
        version=version,
        params={
            "backbone": "s",
            "input_size": 160,
            "batch_size": 2,
            "epochs": 1,
            "iterations_per_epoch": 2,
            **({"transplant": True} if reference == "stacked" else {"reference": "siamese"}),
        },
    )
    assert model.architecture == f"ppyoloe-sod-s-{reference}"
    assert model.params["reference"] == reference
    assert run_job(str(model.job_id), train_detector.body) == "succeeded", Job.objects.get(
        pk=model.job_id
    ).error
    model.refresh_from_db()
    assert model.status == "ready" and model.is_active
    lone = pairs["lone"]
    # left out, and listed: the lone board (no reference to compare with)
    assert lone.pk in model.metrics["skipped_images"]
    assert model.metrics["exports"]["onnx"] is True
    assert model.metrics["evaluated_on"] == "val"
    from django.core.files.storage import default_storage

    from workers.detection.artifact import read_artifact

    saved = read_artifact(default_storage.path(model.artifact))
    assert saved["model_config"]["reference"] == reference
    assert saved["metadata"]["train_config"]["reference_transplant"] == (
        0.5 if reference == "stacked" else 0.0
    )

    # a run compares each paired image with its reference; an unpaired one is refused by name
    with pytest.raises(ValidationError, match="No aligned reference to compare with: lone.png"):
        inspection_run_start(
            user=team["reviewer"],
            project=team["project"],
            kind="detector",
            scope="selected",
            image_ids=[lone.pk],
        )
    run = inspection_run_start(
        user=team["reviewer"], project=team["project"], kind="detector", scope="all"
    )
    assert set(run.image_ids) == {im.pk for im in pairs["images"]} - set(model.image_ids)
    assert run_job(str(run.job_id), run_detection.body) == "succeeded", Job.objects.get(
        pk=run.job_id
    ).error
    run = InspectionRun.objects.get(pk=run.pk)
    assert all("error" not in r for r in run.results.values()), run.results


def test_siamese_is_refused_without_pairs(team, tmp_path):
    project, admin = team["project"], team["admin"]
    spot = category_create(user=admin, project=project, name="spot")
    image = store(project, admin, tmp_path, "a.png", board(1)[:128, :160].copy())
    labels_import(
        user=admin,
        image=image,
        labels=[LabelIn(spot, {"type": "box", "x": 10, "y": 10, "w": 16, "h": 16})],
        source="import",
    )
    version = dataset_version_freeze(user=admin, project=project)
    assert detector_proposal(user=admin, version=version)["params"]["reference"] == "none"
    with pytest.raises(ValidationError, match="none of the labelled train images"):
        detector_train(
            user=admin, project=project, version=version, params={"reference": "siamese"}
        )
    with pytest.raises(ValidationError, match="reference is 'none'"):
        detector_train(user=admin, project=project, version=version, params={"reference": "yes"})


def test_a_single_image_detector_copies_defects_along_the_references(team, tmp_path):
    """``transplant``: a single-image detector whose labelled images have aligned references
    reads them in training only, to copy each spot to other places where the reference shows
    the same pattern (a board repeating a 40 px tile has many); a labelled image without a
    reference still trains, and the detector runs on images alone."""
    project, admin = team["project"], team["admin"]
    w, h = SIZE[0] + 8, SIZE[1] + 8
    tiled = [np.tile(board(i)[:40, :40], (h // 40 + 1, w // 40 + 1, 1))[:h, :w] for i in range(3)]
    version = paired_boards(team, tmp_path, tiled, spot=12, val_last=False)["version"]
    proposal = detector_proposal(user=admin, version=version, params={"reference": "none"})
    assert proposal["params"]["transplant"] is False  # the user's choice
    assert any("copy their defects" in r for r in proposal["reasons"])
    model = detector_train(
        user=admin,
        project=project,
        version=version,
        params={
            "backbone": "s",
            "input_size": 160,
            "batch_size": 2,
            "epochs": 2,
            "reference": "none",
            "transplant": True,
        },
    )
    assert model.architecture == "ppyoloe-sod-s" and model.params["transplant"] is True
    assert run_job(str(model.job_id), train_detector.body) == "succeeded", Job.objects.get(
        pk=model.job_id
    ).error
    model.refresh_from_db()
    assert model.status == "ready" and not model.metrics["skipped_images"]  # the lone one too
    from django.core.files.storage import default_storage

    from workers.detection.artifact import read_artifact

    config = read_artifact(default_storage.path(model.artifact))["metadata"]["train_config"]
    assert config["reference_transplant"] == 0.5
    # half of the three paired images each epoch, their spot copied along the tiles
    assert sum(h["transplanted"] for h in model.metrics["history"]) > 0
    browser = Client()
    browser.force_login(admin)
    page = browser.get(f"/projects/{project.pk}/models/").content.decode()
    assert "defects copied along the references" in page  # how the version was trained
