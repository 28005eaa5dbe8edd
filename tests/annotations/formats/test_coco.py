"""COCO: round trip, pycocotools checks, and every kind of bad input reported per item."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from annotations.formats import Dataset
from annotations.formats.coco import read_coco, read_coco_folder, to_coco_dict, write_coco

from .conftest import geometry_by_name, make_image, write_json

# --- round trip and pycocotools ------------------------------------------------------------------


def test_round_trip_keeps_images_categories_geometry_and_negatives(sample: Dataset, tmp_path):
    written = write_coco(sample, tmp_path / "out")
    assert sorted(written) == ["test", "train", "val"]
    assert (tmp_path / "out/images/train/a.png").is_file()

    report = read_coco_folder(tmp_path / "out")
    assert report.skipped == [] and report.adjusted == []
    back = report.dataset
    assert [c.name for c in back.categories] == ["scratch", "dent"]
    assert {
        (im.file_name, im.width, im.height, im.split, im.is_negative) for im in back.images
    } == {(im.file_name, im.width, im.height, im.split, im.is_negative) for im in sample.images}
    assert geometry_by_name(back) == geometry_by_name(sample)
    assert all(im.path is not None and im.path.is_file() for im in back.images)


def test_export_fields_follow_coco(sample: Dataset):
    coco = to_coco_dict(sample.subset("train"))
    assert {c["id"]: c["name"] for c in coco["categories"]} == {1: "scratch", 2: "dent"}
    box = next(a for a in coco["annotations"] if a["segmentation"] == [])
    assert box["bbox"] == [10, 12, 30, 20] and box["area"] == 600 and box["iscrowd"] == 0
    poly = next(a for a in coco["annotations"] if a["segmentation"])
    assert poly["segmentation"] == [[10, 10, 50, 12, 40, 60, 12, 45]]
    assert poly["bbox"] == [10, 10, 40, 50]
    assert poly["area"] == 1445  # shoelace of the four points
    assert {im["file_name"]: (im["width"], im["height"]) for im in coco["images"]}["a.png"] == (
        120,
        80,
    )


def _self_eval(gt_path: Path, iou_type: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dets = []
        for ann in gt.dataset["annotations"]:
            det = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0}
            if iou_type == "segm":
                det["segmentation"] = gt.annToRLE(ann)  # loadRes wants RLE for segm
            else:
                det["bbox"] = ann["bbox"]
            dets.append(det)
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_pycocotools_loads_every_split_and_self_eval_gives_ap_1(sample: Dataset, tmp_path):
    written = write_coco(sample, tmp_path / "out", copy_images=False)
    for _split, path in written.items():
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        assert len(coco.getImgIds()) >= 1
        assert _self_eval(path, "bbox") == pytest.approx(1.0)
    # Segmentation AP on a split with polygons only (boxes have no segmentation by design).
    polys = copy.deepcopy(sample)
    polys.shapes = [s for s in polys.shapes if s.kind == "polygon"]
    path = write_coco(polys, tmp_path / "poly", copy_images=False)["train"]
    assert _self_eval(path, "segm") == pytest.approx(1.0)


def test_reading_json_only_without_images_dir(sample: Dataset, tmp_path):
    path = write_coco(sample, tmp_path / "out", copy_images=False)["val"]
    report = read_coco(path, split="val")
    assert report.skipped == []
    assert [im.key for im in report.dataset.images] == ["c.png"]
    assert len(report.dataset.shapes) == 2


def test_clashing_file_names_are_made_unique(sample: Dataset, tmp_path):
    sample.images[1].file_name = "a.png"  # two uploads called a.png
    write_coco(sample, tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out/images/train").iterdir())
    assert names == ["a.png", "a_2.png", "good1.png"]
    assert read_coco_folder(tmp_path / "out").skipped == []


# --- bad input: each its own test ----------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Images on disk: ok.png 100x50, other.png 40x40."""
    make_image(tmp_path / "ok.png", 100, 50)
    make_image(tmp_path / "other.png", 40, 40)
    return tmp_path


def base_coco() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "ok.png", "width": 100, "height": 50},
            {"id": 2, "file_name": "other.png", "width": 40, "height": 40},
        ],
        "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        ],
    }


def read(folder: Path, data: dict | str | bytes):
    path = folder / "ann.json"
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        write_json(path, data)
    return read_coco(path, folder)


def reasons(report) -> list[str]:
    return [f"{item} :: {reason}" for item, reason in report.skipped]


def test_baseline_is_clean(folder):
    report = read(folder, base_coco())
    assert report.skipped == [] and len(report.dataset.shapes) == 2


def test_malformed_json_is_reported_not_raised(folder):
    report = read(folder, '{"images": [ {"id": 1,, }')
    assert reasons(report) == [reasons(report)[0]]
    assert "ann.json :: not valid JSON" in reasons(report)[0]
    assert "line 1" in reasons(report)[0]
    assert report.dataset.images == []


def test_json_that_is_not_a_coco_object(folder):
    assert "top level is not a JSON object" in reasons(read(folder, "[1, 2]"))[0]
    assert "'images' is not a list" in reasons(read(folder, {"images": {}}))[0]
    assert "no 'images' list" in reasons(read(folder, {"annotations": []}))[0]


def test_image_without_id_is_skipped_alone(folder):
    data = base_coco()
    del data["images"][1]["id"]
    report = read(folder, data)
    assert any("other.png" in r and "has no id" in r for r in reasons(report))
    assert [im.key for im in report.dataset.images] == ["ok.png"]
    assert len(report.dataset.shapes) == 1


def test_duplicate_image_ids_skip_both_and_their_annotations(folder):
    data = base_coco()
    data["images"][1]["id"] = 1
    data["images"].append({"id": 3, "file_name": "other.png", "width": 40, "height": 40})
    report = read(folder, data)
    rs = reasons(report)
    assert sum("image id 1 is used by 2 images" in r for r in rs) == 2
    assert any("annotation id 1" in r and "its image (id 1) was skipped" in r for r in rs)
    assert any("annotation id 2" in r and "image id 2" in r and "not in the file" in r for r in rs)
    assert [im.key for im in report.dataset.images] == ["other.png"]


def test_duplicate_category_ids(folder):
    data = base_coco()
    data["categories"].append({"id": 2, "name": "crack"})
    report = read(folder, data)
    rs = reasons(report)
    assert sum("category id 2 is used by 2 categories" in r for r in rs) == 2
    assert any("annotation id 2" in r and "its category (id 2) was skipped" in r for r in rs)
    assert [c.name for c in report.dataset.categories] == ["scratch"]
    assert len(report.dataset.shapes) == 1


def test_annotation_without_id_and_duplicate_annotation_ids(folder):
    data = base_coco()
    data["annotations"].append({"image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]})
    data["annotations"].append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 3, 2, 2]})
    report = read(folder, data)
    rs = reasons(report)
    assert any("annotation #3" in r and "has no id" in r for r in rs)
    assert any(
        "annotation id 1" in r and "used more than once; the first was kept" in r for r in rs
    )
    assert len(report.dataset.shapes) == 2
    assert (10.0, 10.0, 20.0, 10.0) in [s.box for s in report.dataset.shapes]


def test_box_partly_outside_is_clipped_and_noted(folder):
    data = base_coco()
    data["annotations"][0]["bbox"] = [90, 40, 20, 20]
    report = read(folder, data)
    assert report.skipped == []
    assert report.dataset.shapes[0].box == (90.0, 40.0, 10.0, 10.0)
    assert "clipped" in report.adjusted[0].reason and "100x50" in report.adjusted[0].reason


def test_box_entirely_outside_is_skipped(folder):
    data = base_coco()
    data["annotations"][0]["bbox"] = [150, 10, 20, 10]
    report = read(folder, data)
    assert any("lies entirely outside the 100x50 image" in r for r in reasons(report))
    assert len(report.dataset.shapes) == 1


def test_negative_and_zero_box_sizes(folder):
    data = base_coco()
    data["annotations"][0]["bbox"] = [10, 10, -5, 10]
    data["annotations"][1]["bbox"] = [5, 5, 0, 10]
    report = read(folder, data)
    rs = reasons(report)
    assert any("annotation id 1" in r and "zero or negative size (-5 x 10)" in r for r in rs)
    assert any("annotation id 2" in r and "zero or negative size (0 x 10)" in r for r in rs)


def test_malformed_bbox(folder):
    data = base_coco()
    data["annotations"][0]["bbox"] = [10, 10, 5]
    data["annotations"][1]["bbox"] = [1, "a", 2, 2]
    rs = reasons(read(folder, data))
    assert sum("not a list of 4 numbers" in r for r in rs) == 2


def test_negative_or_missing_image_sizes(folder):
    data = base_coco()
    data["images"][0]["width"] = -100
    del data["images"][1]["height"]
    report = read(folder, data)
    rs = reasons(report)
    assert any("ok.png" in r and "positive whole numbers, got -100 x 50" in r for r in rs)
    assert any("other.png" in r and "positive whole numbers, got 40 x None" in r for r in rs)
    assert report.dataset.images == []


def test_annotations_for_unknown_images_or_categories(folder):
    data = base_coco()
    data["annotations"][0]["image_id"] = 99
    data["annotations"][1]["category_id"] = 7
    report = read(folder, data)
    rs = reasons(report)
    assert any("annotation id 1" in r and "image id 99, which is not in the file" in r for r in rs)
    assert any(
        "annotation id 2" in r and "category id 7, which is not in the file" in r for r in rs
    )
    # Both images still import, as negatives since nothing valid is on them.
    assert {im.key for im in report.dataset.images} == {"ok.png", "other.png"}


def test_real_image_size_disagreeing_with_json(folder):
    data = base_coco()
    data["images"][0]["width"] = 200
    report = read(folder, data)
    assert any(
        "ok.png" in r and "the image file is 100x50 but the JSON says 200x50" in r
        for r in reasons(report)
    )
    assert [im.key for im in report.dataset.images] == ["other.png"]


def test_missing_and_unreadable_image_files(folder):
    (folder / "broken.png").write_bytes(b"not an image")
    data = base_coco()
    data["images"].append({"id": 3, "file_name": "gone.png", "width": 10, "height": 10})
    data["images"].append({"id": 4, "file_name": "broken.png", "width": 10, "height": 10})
    rs = reasons(read(folder, data))
    assert any("gone.png" in r and "image file is missing" in r for r in rs)
    assert any("broken.png" in r and "not a readable image" in r for r in rs)


def test_non_utf8_names_fail_alone(folder):
    text = json.dumps(base_coco())
    raw = text.encode().replace(b'"other.png"', b'"oth\xe9r.png"').replace(b'"dent"', b'"d\xe9nt"')
    report = read(folder, raw)
    rs = reasons(report)
    assert any("is not valid UTF-8 text" in r and "file name" in r for r in rs)
    assert any("category name" in r and "is not valid UTF-8 text" in r for r in rs)
    assert [im.key for im in report.dataset.images] == ["ok.png"]
    assert [c.name for c in report.dataset.categories] == ["scratch"]
    assert len(report.dataset.shapes) == 1


def test_file_names_leaving_the_folder(folder):
    data = base_coco()
    data["images"][1]["file_name"] = "../../etc/passwd"
    rs = reasons(read(folder, data))
    assert any("leaves the images folder" in r for r in rs)


def test_polygons_are_validated_and_clamped(folder):
    data = base_coco()
    data["annotations"][0]["segmentation"] = [[10, 10, 120, 10, 60, 40]]
    data["annotations"][1]["segmentation"] = [[1, 2, 3]]
    report = read(folder, data)
    assert any("even count of at least 6" in r for r in reasons(report))
    shape = report.dataset.shapes[0]
    assert shape.kind == "polygon" and shape.points[1] == [100.0, 10.0]
    assert any("moved onto its edge" in a.reason for a in report.adjusted)


def test_rle_segmentation_imports_as_box(folder):
    data = base_coco()
    data["annotations"][0]["segmentation"] = {"size": [50, 100], "counts": "abc"}
    data["annotations"][0]["iscrowd"] = 1
    report = read(folder, data)
    assert report.dataset.shapes[0].kind == "box"
    assert any("RLE" in a.reason for a in report.adjusted)


def test_same_image_in_two_json_files_is_imported_once(folder):
    write_json(folder / "instances_train.json", base_coco())
    write_json(folder / "instances_val.json", base_coco())
    report = read_coco_folder(folder)
    assert len(report.dataset.images) == 2
    assert {im.split for im in report.dataset.images} == {"train"}
    assert sum("already listed in instances_train.json" in r for r in reasons(report)) == 2


def test_images_found_by_base_name_one_folder_deeper(tmp_path):
    make_image(tmp_path / "images" / "default" / "x.png", 30, 20)
    write_json(
        tmp_path / "annotations" / "instances_default.json",
        {
            "images": [{"id": 1, "file_name": "x.png", "width": 30, "height": 20}],
            "categories": [{"id": 1, "name": "c"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        },
    )
    report = read_coco_folder(tmp_path)
    assert report.skipped == []
    assert report.dataset.images[0].key == "images/default/x.png"


def test_same_file_listed_twice_and_same_category_name_twice(folder):
    data = base_coco()
    data["images"].append({"id": 3, "file_name": "ok.png", "width": 100, "height": 50})
    data["categories"].append({"id": 3, "name": "scratch"})
    data["annotations"].append({"id": 3, "image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2]})
    data["annotations"].append({"id": 4, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]})
    report = read(folder, data)
    rs = reasons(report)
    assert any("image ok.png (id 3)" in r and "already listed as image id 1" in r for r in rs)
    assert any("annotation id 3" in r and "its image (id 3) was skipped" in r for r in rs)
    assert [c.name for c in report.dataset.categories] == ["scratch", "dent"]
    assert any("merged" in a.reason for a in report.adjusted)
    assert [s.category for s in report.dataset.shapes].count("scratch") == 2
