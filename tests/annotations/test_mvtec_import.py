"""MVTec AD import (one more format of the dataset import): the shared datasets, masks paired by
name, ground truth through labels_import, the command and the API."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from PIL import Image as PILImage

from annotations.formats import FormatError
from annotations.models import Annotation, DefectCategory
from annotations.services.dataset_import import dataset_import_run
from inspection.models import Image, Job
from tests.conftest import dataset
from workers.tasks.datasets import import_dataset
from workers.tasks.runner import run_job

pytestmark = pytest.mark.django_db


def save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr).save(path)


def make_mvtec(root: Path) -> Path:
    """A tiny MVTec folder whose sorted image and mask names disagree (the Folder trap)."""
    rng = np.random.default_rng(0)
    for i in range(3):
        save(
            root / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (32, 48), dtype=np.uint8)
        )
    save(root / "test" / "good" / "000.png", rng.integers(0, 255, (32, 48), dtype=np.uint8))
    # 'a_1' sorts before 'a', but 'a_1_mask' sorts after 'a_mask': pairing by order would swap them
    for stem, box in (("a", (2, 2, 10, 8)), ("a_1", (30, 20, 40, 30))):
        save(
            root / "test" / "crack" / f"{stem}.png", rng.integers(0, 255, (32, 48), dtype=np.uint8)
        )
        mask = np.zeros((32, 48), dtype=np.uint8)
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 255
        save(root / "ground_truth" / "crack" / f"{stem}_mask.png", mask)
    save(root / "test" / "crack" / "nomask.png", rng.integers(0, 255, (32, 48), dtype=np.uint8))
    save(root / "ground_truth" / "crack" / "orphan_mask.png", np.zeros((32, 48), dtype=np.uint8))
    (root / "test" / "crack" / "broken.png").write_bytes(b"not a png")
    return root


def mvtec_import(team, root: Path) -> dict:
    return dataset_import_run(user=team["admin"], project=team["project"], fmt="mvtec", folder=root)


def test_masks_pair_by_name_not_by_order(team, tmp_path):
    root = make_mvtec(tmp_path / "parts")
    report = mvtec_import(team, root)
    assert (report["images"], report["negatives"], report["annotations"]) == (7, 3, 2)
    reasons = {item["item"]: item["reason"] for item in report["skipped"]}
    assert "no ground-truth mask" in reasons["ground_truth/crack/nomask_mask.png"]
    assert "without a matching test image" in reasons["ground_truth/crack/orphan_mask.png"]
    assert "not a readable image" in reasons["test/crack/broken.png"]
    assert report["categories_created"] == ["crack"]
    for stem, (x0, y0, x1, y1) in (("a", (2, 2, 10, 8)), ("a_1", (30, 20, 40, 30))):
        image = Image.objects.get(original_name=f"{stem}.png")
        (ann,) = image.annotations.all()
        pts = np.array(ann.geometry["points"])
        assert ann.source == "ground_truth" and ann.category.name == "crack"
        assert ann.author == team["admin"]
        assert pts[:, 0].min() == pytest.approx(x0 + 0.5, abs=1) and pts[
            :, 0
        ].max() == pytest.approx(x1 - 0.5, abs=1)
        assert pts[:, 1].min() == pytest.approx(y0 + 0.5, abs=1) and pts[
            :, 1
        ].max() == pytest.approx(y1 - 0.5, abs=1)
    good = Image.objects.filter(source_group="train/good")
    assert good.count() == 3 and all(i.is_normal and i.split == "train" for i in good)
    test_good = Image.objects.get(source_group="test/good")
    assert not test_good.is_normal and test_good.split == "test"
    # ground truth is data, not a decision: the images stay new, nobody reviews these labels
    assert set(Image.objects.values_list("status", flat=True)) == {"new"}
    # importing again stores nothing twice
    again = mvtec_import(team, root)
    assert again["duplicates"] == 7 and again["annotations"] == 0


def test_not_an_mvtec_folder(team, tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(FormatError, match="not an MVTec AD folder"):
        mvtec_import(team, tmp_path / "random")


def test_import_bottle_with_the_command(team):
    root = dataset("mvtec_bottle")
    call_command("import_mvtec", str(root), "--project", "Bottles", "--user", "padmin")
    project = team["project"]
    n_train = len(list((root / "train" / "good").iterdir()))
    assert project.images.filter(is_normal=True).count() == n_train
    types = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
    assert (
        sorted(DefectCategory.objects.filter(project=project).values_list("name", flat=True))
        == types
    )
    defect_images = project.images.filter(split="test").exclude(source_group="test/good")
    assert all(i.annotations.filter(source="ground_truth").exists() for i in defect_images)
    assert Job.objects.filter(kind="pyramid", project=project).count() == 1


def test_import_magnetic_tile(team):
    root = dataset("magnetic_tile")
    report = mvtec_import(team, root)
    assert report["negatives"] == 120 and report["images"] == 190
    assert sorted(report["categories_created"]) == ["blowhole", "break", "crack", "fray", "uneven"]
    assert report["skipped"] == []  # every mask's outline is a valid shape
    assert (
        Annotation.objects.filter(image__project=team["project"], source="ground_truth").count()
        >= 50
    )


def _zip_folder(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"parts/{path.relative_to(root).as_posix()}")
    return buf.getvalue()


def test_api_import_zip_starts_a_job(team, client_for, upload, tmp_path):
    root = make_mvtec(tmp_path / "parts")
    r = client_for(team["admin"]).post(
        f"/api/projects/{team['project'].pk}/datasets/import/",
        {"format": "mvtec", "zip": upload("parts.zip", _zip_folder(root))},
        format="multipart",
    )
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    assert job.kind == "dataset_import" and default_storage.exists(job.payload["zip"])
    # run it here, as a worker would
    assert run_job(str(job.pk), import_dataset.body) == "succeeded"
    job.refresh_from_db()
    assert job.result["negatives"] == 3 and job.result["annotations"] == 2
    assert job.message.startswith("7 images (3 normal), 2 labels")
    assert not default_storage.exists(job.payload["zip"])
    pyramids = Job.objects.get(kind="pyramid", project=team["project"])
    assert len(pyramids.payload["image_ids"]) == 7


def test_api_server_path_import_is_for_site_admins_under_allowed_roots(
    team, client_for, tmp_path, settings
):
    root = make_mvtec(tmp_path / "allowed" / "parts")
    url = f"/api/projects/{team['project'].pk}/datasets/import/"
    form = {"format": "mvtec"}
    r = client_for(team["admin"]).post(url, {**form, "path": str(root)}, format="json")
    assert r.status_code == 403 and "site admins" in r.json()["error"]
    settings.LOUPE_IMPORT_ROOTS = [tmp_path / "allowed"]
    r = client_for(team["site_admin"]).post(url, {**form, "path": "/etc"}, format="json")
    assert r.status_code == 400 and "LOUPE_IMPORT_ROOTS" in r.json()["error"]
    r = client_for(team["site_admin"]).post(
        url, {**form, "path": str(root / ".." / ".." / "..")}, format="json"
    )
    assert r.status_code == 400
    r = client_for(team["site_admin"]).post(url, {**form, "path": str(root)}, format="json")
    assert r.status_code == 202
    assert run_job(r.json()["id"], import_dataset.body) == "succeeded"
    assert Job.objects.get(pk=r.json()["id"]).result["images"] == 7
    assert root.is_dir()  # a server folder is read, never deleted


def test_an_import_stopped_half_way_still_queues_the_pyramids_of_what_it_stored(team, tmp_path):
    root = make_mvtec(tmp_path / "parts")
    calls = []

    def progress(fraction, message):  # the job's progress raises like this on cancel
        calls.append(message)
        if len(calls) == 4:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        dataset_import_run(
            user=team["admin"], project=team["project"], fmt="mvtec", folder=root, progress=progress
        )
    stored = sorted(Image.objects.filter(project=team["project"]).values_list("id", flat=True))
    assert len(stored) == 2
    (job,) = Job.objects.filter(kind="pyramid", project=team["project"])
    assert sorted(job.payload["image_ids"]) == stored


def test_the_command_imports_any_format_and_can_leave_pyramids_for_later(team, tmp_path):
    root = make_mvtec(tmp_path / "parts")
    out = io.StringIO()
    call_command(
        "import_dataset",
        str(root),
        "--format",
        "mvtec",
        "--project",
        "Bottles",
        "--user",
        "padmin",
        "--no-pyramids",
        stdout=out,
    )
    assert "Bottles: 7 images (3 normal), 2 labels" in out.getvalue()
    assert "skipped ground_truth/crack/orphan_mask.png: mask without" in out.getvalue()
    assert not Job.objects.filter(kind="pyramid").exists()
