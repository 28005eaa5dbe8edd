"""Sliced COCO export: SAHI windows, clipped shapes, minimum visible area, negative sampling."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from PIL import Image
from pycocotools.coco import COCO

from annotations.formats import Category, Dataset, DatasetImage, Shape
from annotations.formats.model import polygon_area
from annotations.formats.sliced import slice_dataset, slice_windows, write_sliced_coco

from .conftest import make_image


def test_windows_are_sahis_and_cover_the_image():
    assert slice_windows(200, 100, slice_size=100, overlap=0.25) == [
        [0, 0, 100, 100],
        [75, 0, 175, 100],
        [100, 0, 200, 100],
    ]
    assert slice_windows(50, 40, slice_size=640) == [[0, 0, 50, 40]]  # small image: one window
    assert len(slice_windows(640, 640, slice_size=320, overlap=0.25)) == 9
    with pytest.raises(ValueError):
        slice_windows(10, 10, overlap=1.0)


@pytest.fixture
def strip(tmp_path) -> Dataset:
    """Three 200x100 images: boxes/polygon across windows, a sliver, and a negative."""
    images = [DatasetImage(f"k{i}", f"s{i}.png", 200, 100, "train") for i in (1, 2, 3)]
    for im in images:
        im.path = make_image(tmp_path / im.file_name, 200, 100)
    images[2].is_negative = True
    shapes = [
        Shape.from_box("k1", "dent", (90, 10, 20, 20)),
        Shape.from_polygon("k1", "scratch", [[80, 60], [120, 60], [100, 90]]),
        Shape.from_box("k2", "dent", (174, 40, 20, 20)),  # 1 px visible in window 75-175
    ]
    return Dataset(images, [Category("dent"), Category("scratch")], shapes)


def boxes_of(sliced, key):
    return sorted(s.box for s in sliced.dataset.shapes if s.image_key == key)


def test_shapes_are_clipped_to_each_window_and_slivers_dropped(strip):
    sliced = slice_dataset(strip, slice_size=100, overlap=0.25, negative_ratio=1.0)
    assert boxes_of(sliced, "k1#0_0_100_100") == [(80, 60, 20, 30), (90, 10, 10, 20)]
    assert boxes_of(sliced, "k1#75_0_175_100") == [(5, 60, 40, 30), (15, 10, 20, 20)]
    assert boxes_of(sliced, "k1#100_0_200_100") == [(0, 10, 10, 20), (0, 60, 20, 30)]
    assert boxes_of(sliced, "k2#100_0_200_100") == [(74, 40, 20, 20)]
    poly = next(
        s
        for s in sliced.dataset.shapes
        if s.image_key == "k1#100_0_200_100" and s.kind == "polygon"
    )
    assert polygon_area(poly.points) == pytest.approx(300)
    assert sorted(map(tuple, poly.points)) == [(0, 60), (0, 90), (20, 60)]
    # k2's window 75-175 shows 1/20 of the box (< 0.1): no shape, and not a negative either.
    assert "k2#75_0_175_100" not in sliced.windows
    assert (sliced.positive, sliced.negative_candidates, sliced.partial_only) == (4, 4, 1)
    assert sliced.negative_kept == 4
    assert sliced.windows["k1#75_0_175_100"].source_key == "k1"


@pytest.mark.parametrize(("ratio", "kept"), [(0.0, 0), (0.2, 1), (0.5, 4), (1.0, 4)])
def test_negative_slices_are_sampled_at_the_ratio(strip, ratio, kept):
    sliced = slice_dataset(strip, slice_size=100, overlap=0.25, negative_ratio=ratio)
    negatives = [im for im in sliced.dataset.images if im.is_negative]
    assert len(negatives) == kept == sliced.negative_kept
    assert len(sliced.dataset.images) == 4 + kept


def test_negative_sampling_is_seeded(strip):
    def pick(seed):
        s = slice_dataset(strip, slice_size=100, negative_ratio=0.2, seed=seed)
        return [im.key for im in s.dataset.images if im.is_negative]

    assert pick(1) == pick(1)
    assert len({tuple(pick(s)) for s in range(12)}) > 1


def test_min_area_ratio_is_a_parameter(strip):
    sliced = slice_dataset(strip, slice_size=100, overlap=0.25, min_area_ratio=0.01)
    assert boxes_of(sliced, "k2#75_0_175_100") == [(99, 40, 1, 20)]
    assert sliced.partial_only == 0


def test_written_slices_are_crops_and_load_in_pycocotools(strip, tmp_path):
    sliced, written = write_sliced_coco(
        strip, tmp_path / "out", slice_size=100, overlap=0.25, negative_ratio=0.5
    )
    data = json.loads(written["train"].read_text())
    assert len(data["images"]) == len(sliced.dataset.images) == 8
    entry = next(e for e in data["images"] if e["slice_box"] == [75, 0, 175, 100])
    assert entry["source_file_name"] in ("s1.png", "s2.png")
    tile = Image.open(tmp_path / "out/images/train" / entry["file_name"])
    source = Image.open(tmp_path / entry["source_file_name"])
    assert tile.size == (100, 100)
    assert tile.tobytes() == source.crop((75, 0, 175, 100)).tobytes()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(written["train"]))
    assert len(coco.getAnnIds()) == len(sliced.dataset.shapes)


def test_val_and_test_keep_every_negative_slice(strip):
    for im in strip.images:
        im.split = "val"
    sliced = slice_dataset(strip, slice_size=100, overlap=0.25, negative_ratio=0.0)
    assert sliced.negative_kept == sliced.negative_candidates == 4
    sampled = slice_dataset(strip, slice_size=100, negative_ratio=0.0, sample_splits=("val",))
    assert sampled.negative_kept == 0
