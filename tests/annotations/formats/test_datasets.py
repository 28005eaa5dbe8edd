"""The shared developer datasets: DeepPCB and NEU-DET read cleanly and write back the same boxes;
a sliced export of DeepPCB has the expected slice count and clipped boxes."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from annotations.formats import Dataset
from annotations.formats.coco import read_coco, write_coco
from annotations.formats.sliced import slice_dataset, write_sliced_coco
from annotations.formats.yolo import read_yolo, write_yolo
from tests.conftest import dataset as dataset_dir

pytestmark = pytest.mark.datasets


def source_boxes(root: Path) -> Counter:
    """(base file name, category name, bbox) straight from the dataset's own JSON."""
    data = json.loads((root / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {im["id"]: Path(im["file_name"]).name for im in data["images"]}
    return Counter(
        (files[a["image_id"]], names[a["category_id"]], tuple(float(v) for v in a["bbox"]))
        for a in data["annotations"]
    )


def boxes(ds: Dataset, ndigits: int = 3) -> Counter:
    names = {im.key: im.file_name for im in ds.images}
    return Counter(
        (names[s.image_key], s.category, tuple(round(v, ndigits) for v in s.box)) for s in ds.shapes
    )


def subset(ds: Dataset, n: int) -> Dataset:
    images = ds.images[:n]
    keys = {im.key for im in images}
    return Dataset(images, ds.categories, [s for s in ds.shapes if s.image_key in keys])


@pytest.fixture(scope="module")
def deeppcb():
    root = dataset_dir("deeppcb")
    return root, read_coco(root / "annotations.json", root)


@pytest.fixture(scope="module")
def neu():
    root = dataset_dir("neu_det")
    return root, read_coco(root / "annotations.json", root)


def test_deeppcb_reads_cleanly(deeppcb):
    root, report = deeppcb
    assert report.skipped == [] and report.adjusted == []
    ds = report.dataset
    assert len(ds.images) == 207 and len(ds.shapes) == 1305
    assert Counter(s.category for s in ds.shapes) == {
        "open": 249,
        "short": 196,
        "mousebite": 254,
        "spur": 194,
        "copper": 189,
        "pin-hole": 223,
    }
    assert all((im.width, im.height) == (640, 640) for im in ds.images)
    assert boxes(ds) == source_boxes(root)


def test_neu_det_reads_cleanly(neu):
    root, report = neu
    assert report.skipped == [] and report.adjusted == []
    assert len(report.dataset.images) == 240 and len(report.dataset.shapes) == 579
    assert boxes(report.dataset) == source_boxes(root)


@pytest.mark.parametrize("name", ["deeppcb", "neu"])
def test_coco_export_gives_back_the_same_boxes(name, request, tmp_path):
    root, report = request.getfixturevalue(name)
    written = write_coco(report.dataset, tmp_path, copy_images=False)
    back = read_coco(written["train"])
    assert back.skipped == []
    assert boxes(back.dataset) == source_boxes(root)
    with contextlib.redirect_stdout(io.StringIO()):
        assert len(COCO(str(written["train"])).getAnnIds()) == len(report.dataset.shapes)


@pytest.mark.parametrize("name", ["deeppcb", "neu"])
def test_yolo_export_gives_back_the_same_boxes(name, request, tmp_path):
    _, report = request.getfixturevalue(name)
    part = subset(report.dataset, 30)  # images are copied: keep it small
    write_yolo(part, tmp_path)
    back = read_yolo(tmp_path, flavour="detect")
    assert back.skipped == [] and back.adjusted == []
    # Six normalised decimals on <= 640 px: within 0.001 px, so equal after rounding to 2.
    assert boxes(back.dataset, 2) == boxes(part, 2)


def test_deeppcb_sliced_export_slice_count_and_clipped_boxes(deeppcb):
    _, report = deeppcb
    part = subset(report.dataset, 20)
    sliced = slice_dataset(part, slice_size=320, overlap=0.25, negative_ratio=1.0)
    # 640 px with 320 px windows and 80 px overlap: x0 = 0, 240, 320 per axis -> 9 windows.
    windows = [
        (0, 0),
        (240, 0),
        (320, 0),
        (0, 240),
        (240, 240),
        (320, 240),
        (0, 320),
        (240, 320),
        (320, 320),
    ]
    expected: Counter = Counter()
    partial = 0
    by_image = part.shapes_by_image()
    for im in part.images:
        for wx, wy in windows:
            kept = touched = 0
            for s in by_image[im.key]:
                x, y, w, h = s.box
                ix0, iy0 = max(x, wx), max(y, wy)
                ix1, iy1 = min(x + w, wx + 320), min(y + h, wy + 320)
                if ix1 <= ix0 or iy1 <= iy0:
                    continue
                touched += 1
                if (ix1 - ix0) * (iy1 - iy0) / (w * h) >= 0.1:  # SAHI's min_area_ratio default
                    kept += 1
                    key = f"{im.key}#{wx}_{wy}_{wx + 320}_{wy + 320}"
                    expected[(key, s.category, (ix0 - wx, iy0 - wy, ix1 - ix0, iy1 - iy0))] += 1
            partial += bool(touched and not kept)
    actual = Counter((s.image_key, s.category, s.box) for s in sliced.dataset.shapes)
    assert actual == expected
    assert sliced.positive + sliced.negative_candidates + sliced.partial_only == 9 * 20
    assert sliced.partial_only == partial
    assert len(sliced.dataset.images) == 9 * 20 - partial  # all negatives kept at ratio 1
    assert any(s.box[2] < 18 for s in sliced.dataset.shapes)  # some boxes really were clipped

    # The default 640/0.25 slicing leaves a 640 px image whole, boxes untouched.
    whole = slice_dataset(part, negative_ratio=0.0)
    assert len(whole.dataset.images) == 20
    assert sorted(s.box for s in whole.dataset.shapes) == sorted(s.box for s in part.shapes)


def test_deeppcb_sliced_export_writes_loadable_coco(deeppcb, tmp_path):
    _, report = deeppcb
    part = subset(report.dataset, 3)
    sliced, written = write_sliced_coco(part, tmp_path, slice_size=320, negative_ratio=0.25)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(written["train"]))
    assert len(coco.getImgIds()) == len(sliced.dataset.images)
    assert len(list((tmp_path / "images/train").iterdir())) == len(sliced.dataset.images)
    negatives = sum(im.is_negative for im in sliced.dataset.images)
    assert negatives == min(sliced.negative_candidates, int(sliced.positive * 0.25 / 0.75))
