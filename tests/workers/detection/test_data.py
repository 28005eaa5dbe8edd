"""Data pipeline: COCO reading, crops, flips and the multi-scale collate."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from workers.detection.data import (
    CocoDetectionDataset,
    Sample,
    collate_train,
    random_crop,
    random_flip,
    random_turn,
    swap_defects,
    transplant_defects,
)
from workers.detection.errors import DetectionDataError

pytestmark = pytest.mark.ml


def big_sample() -> Sample:
    img = np.zeros((1000, 1500, 3), np.uint8)
    boxes = np.array([[1000, 700, 1020, 720], [100, 100, 140, 130]], np.float32)
    return Sample(img, boxes, np.array([0, 1]), 1, "big.png")


def test_random_crop_keeps_pixel_scale_and_shifts_boxes() -> None:
    rng = random.Random(0)
    s = big_sample()
    s.image[700:720, 1000:1020] = 255
    for _ in range(20):
        c = random_crop(s, 256, rng, object_prob=1.0)
        assert c.image.shape == (256, 256, 3)
        assert len(c.boxes) >= 1
        for (x1, y1, x2, y2), lab in zip(c.boxes.astype(int), c.labels, strict=True):
            assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256
            if lab == 0:  # the white square is exactly where its (clipped) box says
                assert c.image[y1:y2, x1:x2].min() == 255
    small = Sample(np.zeros((100, 80, 3), np.uint8), s.boxes[:0], s.labels[:0], 2, "s.png")
    assert random_crop(small, 256, rng) is small


def test_crop_drops_mostly_hidden_boxes() -> None:
    s = Sample(
        np.zeros((512, 512, 3), np.uint8),
        np.array([[250.0, 10, 270, 30]]),
        np.array([0]),
        1,
        "x",
    )
    rng = random.Random(1)
    for _ in range(30):
        c = random_crop(s, 256, rng, object_prob=0.0)
        if len(c.boxes):
            w = c.boxes[0, 2] - c.boxes[0, 0]
            assert w >= 10 - 1e-4  # at least half of the 20 px box is visible


def test_flip_and_collate() -> None:
    s = big_sample()
    f = random_flip(s, random.Random(0), prob=1.0)
    assert f.boxes[0].tolist() == [480, 700, 500, 720]
    batch = collate_train([s, f], 320, random.Random(0))
    assert batch.images.shape == (2, 3, 320, 320)
    assert batch.gt_bboxes.shape == (2, 2, 4) and batch.pad_gt_mask.sum() == 4
    sx, sy = 320 / 1500, 320 / 1000
    assert batch.gt_bboxes[0, 0].tolist() == pytest.approx(
        [1000 * sx, 700 * sy, 1020 * sx, 720 * sy]
    )


def test_quarter_turns_and_flips_carry_the_boxes_and_the_reference() -> None:
    """TrainConfig.rotate: every orientation is drawn, and each box still frames its square in
    the turned image (and the reference turns with it)."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[5:15, 20:30] = 255  # the box [20, 5, 30, 15]
    image[30:38, 50:58, 1] = 200  # an unlabelled mark that makes every orientation distinct
    s = Sample(image, np.array([[20, 5, 30, 15]], np.float32), np.array([0]), 1, "a", image)
    rng, seen = random.Random(0), set()
    for _ in range(64):
        t = random_turn(s, rng)
        seen.add(t.image.tobytes())
        x1, y1, x2, y2 = t.boxes[0].astype(int)
        ys, xs = np.nonzero(t.image[:, :, 0])
        assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert np.array_equal(t.reference, t.image) and t.labels.tolist() == [0]
    assert len(seen) == 8  # four turns, each mirrored or not: all eight orientations


def test_swapped_defects_take_the_reference_pixels_and_lose_their_boxes() -> None:
    """TrainConfig.reference_swap: a swapped box's area (grown by the margin) shows the
    reference, its box is gone; the others are untouched; a box that a swapped area overlaps
    goes with it; without a reference nothing changes."""
    reference = np.full((100, 100, 3), 10, np.uint8)
    image = reference.copy()
    boxes = np.array([[10, 10, 20, 20], [60, 60, 70, 70], [18, 18, 30, 30]], np.float32)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2, x1:x2] = 255
    s = Sample(image, boxes, np.array([0, 1, 2]), 1, "a", reference)
    rng, kept_sets = random.Random(0), set()
    for _ in range(40):
        t = swap_defects(s, rng, 1.0, margin=2)
        assert t.reference is None  # a single-image detector sees no reference
        kept = {int(lab) for lab in t.labels}
        kept_sets.add(tuple(sorted(kept)))
        assert (0 in kept) == (2 in kept)  # boxes 0 and 2 overlap: swapped together
        for lab in (0, 1, 2):
            x1, y1, x2, y2 = boxes[lab].astype(int)
            inside = t.image[y1:y2, x1:x2]
            assert (inside == 255).all() if lab in kept else (inside == 10).all()
        assert np.array_equal(t.boxes, boxes[sorted(kept)])
    assert kept_sets == {(), (1,), (0, 2), (0, 1, 2)}  # every draw of the two groups
    unchanged = swap_defects(s, rng, 0.0, keep_reference=True)
    assert unchanged is s
    alone = Sample(image, boxes, np.array([0, 1, 2]), 1, "a")
    assert swap_defects(alone, rng, 1.0) is alone  # no reference: nothing to swap with
    pair = swap_defects(s, random.Random(3), 1.0, keep_reference=True)
    assert pair.reference is reference  # a Siamese pair keeps its reference


def bars() -> np.ndarray:
    """A white board with five black vertical tracks, 6 px wide (a reference)."""
    board = np.full((200, 200, 3), 255, np.uint8)
    for x in range(20, 200, 40):
        board[:, x : x + 6] = 0
    return board


def test_transplanted_defects_are_copied_where_the_reference_shows_the_same_pattern() -> None:
    """TrainConfig.reference_transplant: a cut in a track (an "open") is copied, with its box
    and label, onto other tracks, never onto the blank board between them (no horizontal
    track there for a quarter-turned copy either), away from the boxes; only the cut's pixels
    change; the reference stays for the caller."""
    reference = bars()
    image = reference.copy()
    image[50:54, 20:26] = 255  # the cut
    boxes = np.array([[16, 46, 30, 58]], np.float32)
    s = Sample(image, boxes, np.array([3]), 1, "a", reference)
    rng, added = random.Random(0), 0
    for _ in range(20):
        t = transplant_defects(s, rng, 1.0, count=3)
        assert t.reference is reference
        assert np.array_equal(t.boxes[:1], boxes) and set(t.labels.tolist()) == {3}
        new = t.boxes[1:].round().astype(int)
        added += len(new)
        changed = np.nonzero((t.image != image).any(axis=2))
        owned = np.zeros(len(changed[0]), bool)
        for x1, y1, x2, y2 in new:
            assert (x2 - x1, y2 - y1) == (14, 12)  # a turn would have found no track
            assert x1 >= 0 and y1 >= 0 and x2 <= 200 and y2 <= 200
            assert x2 + 6 <= 16 or x1 - 6 >= 30 or y2 + 6 <= 46 or y1 - 6 >= 58  # not on a box
            cut = (t.image[y1:y2, x1:x2] != reference[y1:y2, x1:x2]).any(axis=2)
            assert cut.sum() == 24  # the 6 x 4 px cut, on a track
            assert (reference[y1:y2, x1:x2][cut] == 0).all()
            owned |= (changed[1] >= x1) & (changed[1] < x2) & (changed[0] >= y1) & (changed[0] < y2)
        assert owned.all()  # nothing changed outside the new boxes
    # one try per defect, in one of eight orientations, four of which keep the track upright
    assert 5 <= added <= 15
    assert transplant_defects(s, rng, 0.0) is s
    alone = Sample(image, boxes, np.array([3]), 1, "a")
    assert transplant_defects(alone, rng, 1.0) is alone  # no reference: nothing to match
    # two boxes whose places overlap are not copied: the other's pixels would come along
    crowded = Sample(
        image, np.array([[16, 46, 30, 58], [24, 56, 34, 66]], np.float32), np.array([3, 1]),
        1, "a", reference,
    )  # fmt: skip
    assert transplant_defects(crowded, rng, 1.0) is crowded


def test_bad_coco_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DetectionDataError, match="bad.json"):
        CocoDetectionDataset(bad)


def test_unreadable_image_names_the_file(synthetic_coco: Path) -> None:
    ds = CocoDetectionDataset(synthetic_coco)
    ds.images[0] = dict(ds.images[0], file_name="img/missing.png")
    with pytest.raises(DetectionDataError, match="missing.png"):
        ds[0]


def test_optional_references_load_where_named(synthetic_coco: Path, tmp_path: Path) -> None:
    """``references="optional"`` (a single-image detector swapping defects out): the images that
    name a reference carry it, the others none, and no error for those without."""
    import json

    data = json.loads(synthetic_coco.read_text())
    data["images"][0]["reference_file_name"] = data["images"][1]["file_name"]
    ann = tmp_path / "refs.json"
    ann.write_text(json.dumps(data))
    ds = CocoDetectionDataset(ann, synthetic_coco.parent, references="optional")
    assert np.array_equal(ds[0].reference, ds[1].image)
    assert ds[1].reference is None and ds[2].reference is None
    with pytest.raises(DetectionDataError, match="no reference"):
        CocoDetectionDataset(ann, synthetic_coco.parent, references=True)
