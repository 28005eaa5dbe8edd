"""MVTec AD import: the shared datasets, mask pairing by name, the command and the API."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from PIL import Image as PILImage

from annotations.models import Annotation, DefectCategory
from inspection.models import Image, Job
from inspection.services.mvtec import MvtecLayoutError, mask_to_polygons, mvtec_import
from tests.conftest import dataset

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


def test_masks_pair_by_name_not_by_order(team, tmp_path):
    root = make_mvtec(tmp_path / "parts")
    report = mvtec_import(user=team["admin"], project=team["project"], root=root)
    assert (report.normal, report.unlabeled) == (3, 4)
    reasons = {item["name"]: item["reason"] for item in report.skipped}
    assert "no ground-truth mask" in reasons["ground_truth/crack/nomask_mask.png"]
    assert "without a matching test image" in reasons["ground_truth/crack/orphan_mask.png"]
    assert "not a supported image" in reasons["test/crack/broken.png"]
    for stem, (x0, y0, x1, y1) in (("a", (2, 2, 10, 8)), ("a_1", (30, 20, 40, 30))):
        image = Image.objects.get(original_name=f"{stem}.png")
        (ann,) = image.annotations.all()
        pts = np.array(ann.geometry["points"])
        assert ann.source == "ground_truth" and ann.category.name == "crack"
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
    # importing again stores nothing twice
    again = mvtec_import(user=team["admin"], project=team["project"], root=root)
    assert again.duplicates == 7 and again.annotations == 0


def test_not_an_mvtec_folder(team, tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(MvtecLayoutError, match="not an MVTec AD folder"):
        mvtec_import(user=team["admin"], project=team["project"], root=tmp_path / "random")


def test_mask_to_polygons_keeps_specks():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[5, 5] = 255
    mask[10:15, 10:16] = 255
    polys = mask_to_polygons(mask)
    assert len(polys) == 2
    assert [[5.0, 5.0], [6.0, 5.0], [6.0, 6.0], [5.0, 6.0]] in polys
    (rect,) = [p for p in polys if p[0] != [5.0, 5.0]]
    xs, ys = [x for x, _ in rect], [y for _, y in rect]
    assert (min(xs), max(xs), min(ys), max(ys)) == (10.5, 15.5, 10.5, 14.5)  # pixel centres


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
    report = mvtec_import(user=team["admin"], project=team["project"], root=root)
    assert report.normal == 120 and report.unlabeled == 70
    assert sorted(report.categories) == ["blowhole", "break", "crack", "fray", "uneven"]
    assert report.skipped == []
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
        f"/api/projects/{team['project'].pk}/import/mvtec/",
        {"zip": upload("parts.zip", _zip_folder(root))},
        format="multipart",
    )
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    assert job.kind == "import_mvtec" and default_storage.exists(job.payload["zip"])
    # run it here, as a worker would
    from workers.tasks.imports import import_mvtec
    from workers.tasks.runner import run_job

    assert run_job(str(job.pk), import_mvtec.body) == "succeeded"
    job.refresh_from_db()
    assert job.result["normal"] == 3 and job.result["annotations"] == 2
    assert not default_storage.exists(job.payload["zip"])


def test_api_server_path_import_is_for_site_admins_under_allowed_roots(
    team, client_for, tmp_path, settings
):
    root = make_mvtec(tmp_path / "allowed" / "parts")
    url = f"/api/projects/{team['project'].pk}/import/mvtec/"
    r = client_for(team["admin"]).post(url, {"path": str(root)}, format="json")
    assert r.status_code == 403 and "site admins" in r.json()["error"]
    settings.LOUPE_IMPORT_ROOTS = [tmp_path / "allowed"]
    r = client_for(team["site_admin"]).post(url, {"path": "/etc"}, format="json")
    assert r.status_code == 400 and "LOUPE_IMPORT_ROOTS" in r.json()["error"]
    r = client_for(team["site_admin"]).post(
        url, {"path": str(root / ".." / ".." / "..")}, format="json"
    )
    assert r.status_code == 400
    r = client_for(team["site_admin"]).post(url, {"path": str(root)}, format="json")
    assert r.status_code == 202
