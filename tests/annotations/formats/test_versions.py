"""Content hash and comparison of frozen datasets."""

from __future__ import annotations

import copy

from annotations.formats import Dataset, DatasetImage, Shape
from annotations.formats.versions import content_hash, diff_datasets


def test_hash_ignores_order_and_float_noise_but_not_content(sample: Dataset):
    h = content_hash(sample)
    shuffled = copy.deepcopy(sample)
    shuffled.images.reverse()
    shuffled.shapes.reverse()
    shuffled.shapes[0] = Shape.from_box(
        shuffled.shapes[0].image_key,
        shuffled.shapes[0].category,
        tuple(v + 1e-7 for v in shuffled.shapes[0].box),
    )
    assert content_hash(shuffled) == h
    moved = copy.deepcopy(sample)
    moved.images[0].split = "test"
    assert content_hash(moved) != h


def test_diff_lists_added_removed_moved_and_relabelled(sample: Dataset):
    new = copy.deepcopy(sample)
    new.images = [im for im in new.images if im.key != "img-6"]
    new.images.append(DatasetImage("img-7", "e.png", 10, 10, "train", is_negative=True))
    new.images[0].split = "val"
    new.shapes = [s for s in new.shapes if not (s.image_key == "img-1" and s.category == "dent")]
    new.shapes.append(Shape.from_box("img-2", "scratch", (1, 1, 2, 2)))
    diff = diff_datasets(sample, new)
    assert diff.added_images == ["img-7"] and diff.removed_images == ["img-6"]
    assert diff.moved_images == [("img-1", "train", "val")]
    assert diff.relabelled_images == ["img-1", "img-2"]
    assert diff.shapes_added == {"scratch": 1} and diff.shapes_removed == {"dent": 1}
    assert diff_datasets(sample, copy.deepcopy(sample)).unchanged
