"""Reading MVTec AD folders: masks paired by name and turned into polygons, every refusal
reported with its reason, and the real MVTec bottle data when ../shared/datasets has it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_fill_holes

from annotations.formats import FormatError
from annotations.formats.mvtec import mask_to_polygons, rasterize_mask, read_mvtec
from annotations.formats.mvtec_layout import (
    MvtecLayoutError,
    list_images,
    mask_candidates,
    match_masks,
    type_dirs,
)
from annotations.formats.registry import get_importer
from tests.conftest import dataset

H, W = 32, 48


def save(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def noise(seed: int, shape=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def box_mask(x0: int, y0: int, x1: int, y1: int, shape=(H, W)) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


# Where each defect sits (pixel columns x0..x1-1, rows y0..y1-1): distinct, so a mask paired with
# the wrong image is seen.
BOXES = {"a": (2, 2, 10, 8), "a_1": (30, 20, 40, 30), "b": (12, 4, 20, 12)}


def make_tree(root: Path) -> Path:
    """Every case the reader must handle, in one small MVTec folder."""
    save(root / "train/good/000.png", noise(0))
    save(root / "train/good/001.JPG", noise(1), "JPEG")  # upper-case suffix, JPEG
    save(root / "train/good/002.bmp", noise(2), "BMP")
    (root / "train/good/._000.png").write_bytes(b"AppleDouble junk")  # hidden: not an image
    (root / "train/good/notes.txt").write_text("not an image")
    save(root / "test/good/000.png", noise(3))
    crack, gt = root / "test/crack", root / "ground_truth/crack"
    # 'a_1' sorts before 'a_mask' but 'a_1_mask' after it: pairing by order would swap them.
    for seed, stem in enumerate(("a", "a_1"), start=10):
        save(crack / f"{stem}.png", noise(seed))
        save(gt / f"{stem}_mask.png", box_mask(*BOXES[stem]))
    save(crack / "b.jpg", noise(12), "JPEG")
    save(gt / "b.png", box_mask(*BOXES["b"]))  # the <stem>.png mask name
    save(crack / "SPECK.PNG", noise(13))
    speck = np.zeros((H, W), dtype=np.uint8)
    speck[5, 7] = 255
    save(gt / "SPECK_mask.PNG", speck)
    save(crack / "nomask.png", noise(14))  # defect image without a mask
    save(crack / "wrong.png", noise(15))
    save(gt / "wrong_mask.png", box_mask(0, 0, 5, 5, shape=(10, 10)))  # wrong size
    save(crack / "bad.png", noise(16))
    (gt / "bad_mask.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # unreadable mask
    save(gt / "orphan_mask.png", box_mask(0, 0, 3, 3))  # mask without an image
    (crack / "broken.png").write_bytes(b"not a png")  # unreadable image
    save(crack / "empty.png", noise(17))
    save(gt / "empty_mask.png", np.zeros((H, W), dtype=np.uint8))
    save(root / "test/scratch/s.tif", noise(18), "TIFF")
    save(root / "ground_truth/scratch/s_mask.tif", box_mask(40, 0, 48, 32), "TIFF")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "parts")


def test_images_splits_negatives_and_groups(tree):
    report = read_mvtec(tree)
    images = {im.key: im for im in report.dataset.images}
    assert sorted(images) == [
        "test/crack/SPECK.PNG",
        "test/crack/a.png",
        "test/crack/a_1.png",
        "test/crack/b.jpg",
        "test/crack/bad.png",
        "test/crack/empty.png",
        "test/crack/nomask.png",
        "test/crack/wrong.png",
        "test/good/000.png",
        "test/scratch/s.tif",
        "train/good/000.png",
        "train/good/001.JPG",
        "train/good/002.bmp",
    ]
    for key, im in images.items():
        folder = key.rsplit("/", 1)[0]
        assert im.group == folder
        assert im.split == folder.split("/")[0]
        # only train/good are negatives; test/good is for evaluation, unlabeled
        assert im.is_negative == (folder == "train/good"), key
        assert (im.width, im.height) == (W, H)
        assert im.path == tree / key and im.file_name == key.rsplit("/", 1)[1]


def test_masks_become_polygons_on_their_own_image(tree):
    report = read_mvtec(tree)
    assert [c.name for c in report.dataset.categories] == ["crack", "scratch"]
    by_image = report.dataset.shapes_by_image()
    for stem, key in (("a", "a.png"), ("a_1", "a_1.png"), ("b", "b.jpg")):
        (shape,) = by_image[f"test/crack/{key}"]
        x0, y0, x1, y1 = BOXES[stem]
        assert shape.category == "crack" and shape.kind == "polygon"
        bx, by, bw, bh = shape.box
        assert (bx, by, bx + bw, by + bh) == (x0, y0, x1, y1)  # the pixels' edges
    # a one-pixel speck is kept, as the box around its pixel
    (speck,) = by_image["test/crack/SPECK.PNG"]
    assert speck.box == (7.0, 5.0, 1.0, 1.0)
    assert (np.asarray(rasterize_mask([speck], W, H)) > 0).sum() == 1
    (scratch,) = by_image["test/scratch/s.tif"]
    assert scratch.category == "scratch"
    for key in ("nomask.png", "wrong.png", "bad.png", "empty.png"):
        assert by_image[f"test/crack/{key}"] == []  # imported, without labels
    assert by_image["test/good/000.png"] == [] and by_image["train/good/000.png"] == []


def test_every_refusal_is_reported_with_its_reason(tree):
    report = read_mvtec(tree)
    reasons = dict(report.skipped)
    assert len(reasons) == len(report.skipped) == 5
    assert reasons["ground_truth/crack/nomask_mask.png"] == (
        "no ground-truth mask for this defect image"
    )
    assert reasons["ground_truth/crack/orphan_mask.png"] == "mask without a matching test image"
    assert reasons["ground_truth/crack/wrong_mask.png"] == "mask is 10x10 but the image is 48x32"
    assert reasons["ground_truth/crack/bad_mask.png"].startswith("unreadable mask")
    assert "not a readable image" in reasons["test/crack/broken.png"]
    assert dict(report.adjusted) == {
        "ground_truth/crack/empty_mask.png": "the mask is empty (no defect pixels): no label"
    }


def test_ambiguous_and_shared_masks_are_never_guessed(tmp_path):
    root = tmp_path / "m"
    save(root / "test/dent/x.png", noise(0))
    save(root / "ground_truth/dent/x_mask.png", box_mask(1, 1, 4, 4))
    save(root / "ground_truth/dent/x.png", box_mask(1, 1, 4, 4))
    save(root / "test/dent/x_mask.png", noise(3))  # its only candidate is one of x's two
    # 'y_mask.png' is image y's <stem>_mask and image y_mask's <stem>.png: it fits both
    save(root / "test/dent/y.png", noise(1))
    save(root / "test/dent/y_mask.png", noise(2))
    save(root / "ground_truth/dent/y_mask.png", box_mask(1, 1, 4, 4))
    report = read_mvtec(root)
    reasons = dict(report.skipped)
    assert reasons["test/dent/x.png"] == (
        "several masks match this image (x_mask.png, x.png); none was used"
    )
    shared = "the mask y_mask.png fits several images (y.png, y_mask.png); none got it"
    assert reasons["test/dent/y.png"] == reasons["test/dent/y_mask.png"] == shared
    assert reasons["test/dent/x_mask.png"] == (
        "the mask x_mask.png fits several images (x.png, x_mask.png); none got it"
    )
    assert report.dataset.shapes == [] and len(report.dataset.images) == 4
    assert not any("without a matching" in r for r in reasons.values())


def test_not_an_mvtec_folder(tmp_path):
    (tmp_path / "random" / "images").mkdir(parents=True)
    with pytest.raises(MvtecLayoutError, match="'random' has neither train/good nor test/"):
        read_mvtec(tmp_path / "random")
    assert issubclass(MvtecLayoutError, FormatError)


def test_importer_steps_into_a_zipped_folder_but_not_into_the_layout(tree, tmp_path):
    upload = tmp_path / "upload"
    upload.mkdir()
    shutil.move(tree, upload / "bottle")
    (upload / ".flat").mkdir()  # what inspection.ziputil leaves behind
    report = get_importer("mvtec").read(upload)
    assert len(report.dataset.images) == 13
    only_train = tmp_path / "only_train"
    shutil.copytree(upload / "bottle" / "train", only_train / "train")
    report = get_importer("mvtec").read(only_train)
    assert [im.key for im in report.dataset.images] == [
        "train/good/000.png",
        "train/good/001.JPG",
        "train/good/002.bmp",
    ]


def test_layout_rules(tree):
    assert [p.name for p in list_images(tree / "train/good")] == ["000.png", "001.JPG", "002.bmp"]
    assert list_images(tree / "nowhere") == []
    gt = tree / "ground_truth/crack"
    assert mask_candidates(gt, "b") == [gt / "b.png"]
    assert mask_candidates(gt, "SPECK") == [gt / "SPECK_mask.PNG"]
    assert mask_candidates(gt, "speck") == []  # the stem is matched exactly
    match = match_masks(list_images(tree / "test/crack"), gt)
    assert match.masks[tree / "test/crack/a_1.png"] == gt / "a_1_mask.png"
    assert [p.name for p in match.missing] == ["broken.png", "nomask.png"]
    assert [p.name for p in match.unused] == ["orphan_mask.png"]


def test_mask_to_polygons_keeps_specks_and_shapes():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[3, 3] = 1  # any non-zero value is defect
    mask[10:12, 5] = 255  # a two-pixel line
    mask[12:18, 10:18] = 255
    polys = sorted(mask_to_polygons(mask), key=lambda p: p[0])
    assert polys[0] == [[3.0, 3.0], [4.0, 3.0], [4.0, 4.0], [3.0, 4.0]]
    assert polys[1] == [[5.0, 10.0], [6.0, 10.0], [6.0, 12.0], [5.0, 12.0]]
    # on the pixels' edges, not through the edge pixels' centres
    assert polys[2] == [[10.0, 12.0], [18.0, 12.0], [18.0, 18.0], [10.0, 18.0]]


def test_mask_outlines_are_valid_shapes_that_rasterise_back_to_the_mask():
    """Thin, diagonal and holed defects (OpenCV's contours of those touch themselves, and the
    label service refuses them) give one valid outline per region, and write_mvtec's
    rasteriser gives back the same pixels (holes filled, as an outer contour would)."""
    from annotations.formats.model import Shape
    from annotations.geometry import normalize_geometry

    mask = np.zeros((30, 40), dtype=np.uint8)
    for i in range(8):
        mask[2 + i, 3 + i] = 255  # a diagonal scratch: pixels meet at corners only
    mask[15:25, 20:35] = 255
    mask[18:21, 24:28] = 0  # a hole...
    mask[19, 25] = 255  # ...with an island in it
    mask[0, 39] = 255  # a speck in the corner
    polys = mask_to_polygons(mask)
    assert len(polys) == 3
    for points in polys:
        normalize_geometry({"type": "polygon", "points": points}, width=40, height=30)
    shapes = [Shape.from_polygon("k", "d", p) for p in polys]
    back = np.asarray(rasterize_mask(shapes, 40, 30)) > 0
    filled = mask > 0
    filled[18:21, 24:28] = True
    assert (back == filled).all()


# --- real data -----------------------------------------------------------------------------------


@pytest.mark.datasets
def test_real_mvtec_bottle_subset(tmp_path):
    source = dataset("mvtec_bottle")  # skips, saying where it looked, when it is not there
    root = tmp_path / "bottle"
    defect_types = [p.name for p in type_dirs(source) if p.name != "good"][:2]
    picks = [*list_images(source / "train/good")[:2], *list_images(source / "test/good")[:1]]
    for defect in defect_types:
        image = list_images(source / "test" / defect)[0]
        picks += [image, source / "ground_truth" / defect / f"{image.stem}_mask.png"]
    for path in picks:
        target = root / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    report = read_mvtec(root)
    assert report.skipped == [] and report.adjusted == []
    assert len(report.dataset.images) == 5
    assert sum(im.is_negative for im in report.dataset.images) == 2
    assert [c.name for c in report.dataset.categories] == defect_types
    by_image = report.dataset.shapes_by_image()
    for im in report.dataset.images:
        split, folder = im.group.split("/")
        if folder not in defect_types:
            assert by_image[im.key] == []
            continue
        shapes = by_image[im.key]
        assert shapes and {s.category for s in shapes} == {folder}
        with Image.open(root / "ground_truth" / folder / f"{Path(im.key).stem}_mask.png") as m:
            truth = np.asarray(m.convert("L")) > 0
        back = np.asarray(rasterize_mask(shapes, im.width, im.height)) > 0
        # exactly the mask's pixels, holes filled (an outer outline has none)
        assert (back == binary_fill_holes(truth)).all(), im.key
