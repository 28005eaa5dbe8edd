"""YOLO (Ultralytics layout): round trips for both flavours, and bad input reported per item."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from annotations.formats import Dataset, Shape
from annotations.formats.yolo import read_yolo, write_yolo

from .conftest import geometry_by_name, make_image

# --- round trips ---------------------------------------------------------------------------------


def test_detection_round_trip_keeps_boxes(sample: Dataset, tmp_path):
    yaml_path = write_yolo(sample, tmp_path / "out", flavour="detect")
    data = yaml.safe_load(yaml_path.read_text())
    assert data == {
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "nc": 2,
        "names": {0: "scratch", 1: "dent"},
    }
    assert (tmp_path / "out/images/val/c.png").is_file()
    # Negatives get an empty label file.
    assert (tmp_path / "out/labels/train/good1.txt").read_text() == ""
    assert (tmp_path / "out/labels/train/a.txt").read_text().splitlines()[0] == (
        "0 0.208333 0.275 0.25 0.25"
    )

    report = read_yolo(tmp_path / "out", flavour="detect")
    assert report.skipped == [] and report.adjusted == []
    back = report.dataset
    assert [c.name for c in back.categories] == ["scratch", "dent"]
    assert {
        (im.file_name, im.width, im.height, im.split, im.is_negative) for im in back.images
    } == {(im.file_name, im.width, im.height, im.split, im.is_negative) for im in sample.images}
    expected = Dataset(
        sample.images,
        sample.categories,
        [Shape.from_box(s.image_key, s.category, s.box) for s in sample.shapes],
    )
    assert geometry_by_name(back) == geometry_by_name(expected)


def test_segmentation_round_trip_keeps_polygons(sample: Dataset, tmp_path):
    write_yolo(sample, tmp_path / "out", flavour="segment")
    line = (tmp_path / "out/labels/train/b.txt").read_text().strip()
    assert line == "1 0.1 0.1 0.5 0.12 0.4 0.6 0.12 0.45"
    report = read_yolo(tmp_path / "out", flavour="segment")
    assert report.skipped == []
    # Boxes are written as their four corners in this flavour.
    expected = Dataset(
        sample.images,
        sample.categories,
        [Shape.from_polygon(s.image_key, s.category, s.polygon()) for s in sample.shapes],
    )
    assert geometry_by_name(report.dataset) == geometry_by_name(expected)


def test_no_val_split_points_val_at_test_and_reads_images_once(sample: Dataset, tmp_path):
    for im in sample.images:
        if im.split == "val":
            im.split = "train"
    data = yaml.safe_load(write_yolo(sample, tmp_path / "out").read_text())
    assert data["val"] == "images/test"
    report = read_yolo(tmp_path / "out")
    assert len(report.dataset.images) == len(sample.images)
    assert {im.split for im in report.dataset.images} == {"train", "test"}


def test_absolute_path_key_is_written_on_request(sample: Dataset, tmp_path):
    data = yaml.safe_load(write_yolo(sample, tmp_path / "o", path="/data/set").read_text())
    assert data["path"] == "/data/set"
    # Reading ignores a foreign absolute path and resolves next to the YAML.
    assert read_yolo(tmp_path / "o").skipped == []


# --- bad input -----------------------------------------------------------------------------------


@pytest.fixture
def yolo_dir(tmp_path: Path) -> Path:
    """images/train/{a,b}.png (100x50) with labels; data.yaml with 2 classes."""
    root = tmp_path / "ds"
    make_image(root / "images/train/a.png", 100, 50)
    make_image(root / "images/train/b.png", 100, 50)
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels/train/b.txt").write_text("1 0.25 0.25 0.1 0.1\n")
    (root / "data.yaml").write_text(
        "train: images/train\nval: images/train\nnames: [scratch, dent]\n"
    )
    return root


def reasons(report) -> list[str]:
    return [f"{item} :: {reason}" for item, reason in report.skipped]


def test_baseline_is_clean(yolo_dir):
    report = read_yolo(yolo_dir)
    assert report.skipped == [] and len(report.dataset.shapes) == 2
    assert report.dataset.shapes[0].box == pytest.approx((40, 20, 20, 10))


def test_wrong_field_counts(yolo_dir):
    (yolo_dir / "labels/train/a.txt").write_text("0 0.5 0.5 0.2\n0 0.5 0.5 0.2 0.2 0.1\n")
    rs = reasons(read_yolo(yolo_dir))
    assert "labels/train/a.txt line 1 :: wrong number of fields (4)" in rs[0]
    assert "labels/train/a.txt line 2 :: wrong number of fields (6)" in rs[1]


def test_detect_flavour_refuses_polygon_lines_and_segment_refuses_boxes(yolo_dir):
    (yolo_dir / "labels/train/a.txt").write_text("0 0.1 0.1 0.5 0.1 0.3 0.4\n")
    assert any(
        "expected 5 fields (class cx cy w h), got 7" in r
        for r in reasons(read_yolo(yolo_dir, flavour="detect"))
    )
    rs = reasons(read_yolo(yolo_dir, flavour="segment"))
    assert any("b.txt line 1" in r and "at least 3 x y pairs" in r and "got 5" in r for r in rs)


def test_values_outside_unit_range(yolo_dir):
    (yolo_dir / "labels/train/a.txt").write_text("0 1.5 0.5 0.2 0.2\n0 0.5 -0.1 0.2 0.2\n")
    report = read_yolo(yolo_dir)
    rs = reasons(report)
    assert "value 1.5 is outside [0, 1]" in rs[0] and "line 1" in rs[0]
    assert "value -0.1 is outside [0, 1]" in rs[1] and "line 2" in rs[1]
    # b.txt still imports; a.png imports without shapes (and is NOT taken as a negative).
    assert len(report.dataset.shapes) == 1
    a = next(im for im in report.dataset.images if im.file_name == "a.png")
    assert a.is_negative is False


def test_box_edges_outside_the_image_are_clipped(yolo_dir):
    (yolo_dir / "labels/train/a.txt").write_text("0 0.95 0.5 0.2 0.2\n")
    report = read_yolo(yolo_dir)
    assert report.skipped == []
    assert report.dataset.shapes[0].box == pytest.approx((85, 20, 15, 10))
    assert "clipped" in report.adjusted[0].reason


def test_non_numbers_and_zero_sizes(yolo_dir):
    (yolo_dir / "labels/train/a.txt").write_text("0 x 0.5 0.2 0.2\n0 0.5 0.5 0 0.2\n")
    rs = reasons(read_yolo(yolo_dir))
    assert "a field is not a number" in rs[0]
    assert "zero width or height" in rs[1]


def test_unknown_class_ids(yolo_dir):
    (yolo_dir / "labels/train/a.txt").write_text("2 0.5 0.5 0.2 0.2\n1.5 0.5 0.5 0.2 0.2\n")
    rs = reasons(read_yolo(yolo_dir))
    assert "class id 2 is not in data.yaml names" in rs[0]
    assert "class id 1.5 is not in data.yaml names" in rs[1]


def test_label_without_image_is_skipped(yolo_dir):
    (yolo_dir / "labels/train/ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert reasons(read_yolo(yolo_dir)) == ["labels/train/ghost.txt :: the label file has no image"]


def test_image_without_label_is_a_negative_and_noted(yolo_dir):
    (yolo_dir / "labels/train/b.txt").unlink()
    report = read_yolo(yolo_dir)
    assert report.skipped == []
    b = next(im for im in report.dataset.images if im.file_name == "b.png")
    assert b.is_negative is True
    assert report.adjusted[0].item == "images/train/b.png"
    assert "no label file; imported as a negative" in report.adjusted[0].reason


def test_image_without_label_can_be_refused_instead(yolo_dir):
    (yolo_dir / "labels/train/b.txt").unlink()
    report = read_yolo(yolo_dir, missing_labels="skip")
    assert reasons(report) == ["images/train/b.png :: the image has no label file"]
    assert [im.file_name for im in report.dataset.images] == ["a.png"]


def test_empty_label_file_is_a_negative(yolo_dir):
    (yolo_dir / "labels/train/b.txt").write_text("\n")
    report = read_yolo(yolo_dir)
    assert report.adjusted == []
    assert [im.is_negative for im in report.dataset.images] == [False, True]


def test_non_utf8_file_names_and_lines(yolo_dir):
    bad = os.fsencode(yolo_dir / "images/train") + b"/caf\xe9.png"
    os.rename(make_image(yolo_dir / "tmp.png", 10, 10), bad)
    (yolo_dir / "labels/train/a.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n0 0.5\xff 0.5 0.2 0.2\n")
    report = read_yolo(yolo_dir)
    rs = reasons(report)
    assert any("caf" in r and "file name is not valid UTF-8 text" in r for r in rs)
    assert any("a.txt line 2 :: the line is not valid UTF-8 text" in r for r in rs)
    assert len(report.dataset.shapes) == 2


def test_unreadable_image(yolo_dir):
    (yolo_dir / "images/train/b.png").write_bytes(b"junk")
    rs = reasons(read_yolo(yolo_dir))
    assert any("images/train/b.png" in r and "not a readable image" in r for r in rs)


def test_bad_or_missing_data_yaml(yolo_dir):
    (yolo_dir / "data.yaml").write_text("names: [a, b\n")
    assert "data.yaml is not valid YAML" in reasons(read_yolo(yolo_dir))[0]
    (yolo_dir / "data.yaml").write_text("train: images/train\n")
    assert "data.yaml has no 'names'" in reasons(read_yolo(yolo_dir))[0]
    (yolo_dir / "data.yaml").unlink()
    assert "no data.yaml was found" in reasons(read_yolo(yolo_dir))[0]


def test_folders_leaving_the_dataset_or_missing(yolo_dir):
    (yolo_dir / "data.yaml").write_text(
        "train: images/train\nval: ../../etc\ntest: images/test\nnames: [a, b]\n"
    )
    rs = reasons(read_yolo(yolo_dir))
    assert any("data.yaml: val" in r and "leaves the dataset" in r for r in rs)
    assert any("data.yaml: test" in r and "does not exist" in r for r in rs)


def test_image_list_files_are_supported(yolo_dir):
    (yolo_dir / "train.txt").write_text("./images/train/a.png\n../outside.png\n")
    (yolo_dir / "data.yaml").write_text("train: train.txt\nnames: {0: a, 1: b}\n")
    report = read_yolo(yolo_dir)
    assert [im.file_name for im in report.dataset.images] == ["a.png"]
    assert any("leaves the dataset" in r for r in reasons(report))
