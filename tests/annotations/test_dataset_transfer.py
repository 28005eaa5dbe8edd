"""Export and import through the API and the job bodies: round trips, pycocotools, DeepPCB, bad
input with reasons. Jobs run here as a worker would (``run_job``); see test_dataset_worker.py
for the real Celery worker."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from annotations.formats import FormatError
from annotations.models import Annotation
from annotations.services.dataset_import import dataset_import_run
from annotations.services.dataset_versions import dataset_version_freeze
from inspection.models import Image, Job
from inspection.services.projects import project_create
from tests.annotations.test_datasets import add_image, box, label
from tests.conftest import dataset, image_bytes
from workers.tasks.datasets import export_dataset, import_dataset
from workers.tasks.runner import run_job


def make_project(team, tmp_path):
    """Five images: boxes and a polygon over two categories, and one confirmed negative."""
    project, admin = team["project"], team["admin"]
    a = add_image(project, admin, tmp_path, "a.png", size=(80, 60))
    b = add_image(project, admin, tmp_path, "b.png", size=(64, 48))
    c = add_image(project, admin, tmp_path, "c.png", size=(50, 70))
    d = add_image(project, admin, tmp_path, "d.png", size=(64, 48))
    good = add_image(project, admin, tmp_path, "good.png", is_normal=True)
    label(a, "scratch", box(10, 12, 30.5, 20))
    label(a, "Dent", box(50, 5, 20, 25.25))
    label(b, "Dent", {"type": "polygon", "points": [[5, 5], [40, 8], [30, 40], [8, 30]]})
    label(c, "scratch", box(0, 0, 50, 70))
    label(d, "scratch", box(3, 4, 7, 9))
    # spread over the three splits so every COCO file has something in it
    for im, split in ((a, "train"), (b, "train"), (c, "val"), (d, "test"), (good, "train")):
        Image.objects.filter(pk=im.pk).update(split=split)
    return dataset_version_freeze(user=admin, project=project, note="export me")


def export(client, version, fmt, options=None) -> tuple[Job, bytes]:
    url = f"/api/projects/{version.project_id}/datasets/{version.number}/exports/"
    r = client.post(url, {"format": fmt, "options": options or {}}, format="json")
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    assert job.kind == "export" and job.queue == "cpu"
    assert run_job(str(job.pk), export_dataset.body) == "succeeded", Job.objects.get(
        pk=job.pk
    ).error
    job.refresh_from_db()
    got = client.get(f"/api/dataset-exports/{job.pk}/download/")
    assert got.status_code == 200 and got["Content-Type"] == "application/zip"
    return job, b"".join(got.streaming_content)


def import_zip(client, project, fmt, data: bytes, name="data.zip") -> Job:
    from django.core.files.uploadedfile import SimpleUploadedFile

    r = client.post(
        f"/api/projects/{project.pk}/datasets/import/",
        {"format": fmt, "zip": SimpleUploadedFile(name, data)},
        format="multipart",
    )
    assert r.status_code == 202, r.content
    job = Job.objects.get(pk=r.json()["id"])
    run_job(str(job.pk), import_dataset.body)
    job.refresh_from_db()
    return job


def labels_of(project) -> Counter:
    """(sha256, category lower-case, kind, rounded geometry) for every label of a project."""
    out = Counter()
    for ann in Annotation.objects.filter(image__project=project).select_related(
        "image", "category"
    ):
        g = ann.geometry
        if g["type"] == "box":
            geo = tuple(round(g[k], 2) for k in "xywh")
        else:
            geo = tuple(tuple(round(v, 2) for v in p) for p in g["points"])
        out[(ann.image.sha256, ann.category.name.lower(), ann.kind, geo)] += 1
    return out


def images_of(project) -> dict[str, tuple]:
    return {
        im.sha256: (im.width, im.height, im.split, im.is_normal)
        for im in Image.objects.filter(project=project)
    }


def unzip(data: bytes, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(dest)
    return dest


def test_coco_round_trip_and_pycocotools(team, tmp_path, client_for):
    version = make_project(team, tmp_path / "src")
    client = client_for(team["admin"])
    job, data = export(client, version, "coco")
    assert job.result["images"] == 5 and job.result["shapes"] == 5
    assert job.created_by == team["admin"]  # the Job row is the audit trail
    out = unzip(data, tmp_path / "coco")
    for split in ("train", "val", "test"):
        path = out / "annotations" / f"instances_{split}.json"
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(path))
            anns = gt.loadAnns(gt.getAnnIds())
            dets = [{**a, "score": 1.0} for a in anns]
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0), split
        for entry in gt.dataset["images"]:
            assert (out / "images" / split / entry["file_name"]).is_file()

    other = project_create(user=team["admin"], name="Copy")
    job = import_zip(client, other, "coco", data, "export.zip")
    assert job.status == "succeeded", job.error
    assert job.result["images"] == 5 and job.result["annotations"] == 5
    assert job.result["skipped"] == [] and job.result["negatives"] == 1
    assert sorted(job.result["categories_created"]) == ["Dent", "scratch"]
    assert images_of(other) == images_of(team["project"])
    assert labels_of(other) == labels_of(team["project"])
    assert set(
        Annotation.objects.filter(image__project=other).values_list("source", flat=True)
    ) == {"import"}
    # imported labels are frozen like reviewed ones: the copy freezes to the same content
    copy = dataset_version_freeze(user=team["admin"], project=other)
    assert copy.counts == version.counts

    # importing the same zip again: every image is a duplicate, no label is doubled
    again = import_zip(client, other, "coco", data)
    assert again.result["duplicates"] == 5 and again.result["annotations"] == 0
    assert "already in the project" in again.result["skipped"][0]["reason"]
    assert Annotation.objects.filter(image__project=other).count() == 5


@pytest.mark.parametrize("flavour", ["detect", "segment"])
def test_yolo_round_trip(flavour, team, tmp_path, client_for):
    from annotations.services.categories import category_create

    # a category nobody used yet keeps its class id: ids are the project's categories in the
    # order they were made, the same in every version (a version once listed only used ones)
    category_create(user=team["admin"], project=team["project"], name="hole")
    version = make_project(team, tmp_path / "src")
    client = client_for(team["admin"])
    job, data = export(client, version, f"yolo_{flavour}")
    out = unzip(data, tmp_path / "yolo")
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec["names"] == {0: "hole", 1: "scratch", 2: "Dent"} and spec["nc"] == 3
    assert spec["val"] == "images/val"
    assert (out / "labels" / "train" / "good.txt").read_text() == ""  # negative
    other = project_create(user=team["admin"], name=f"Copy {flavour}")
    job = import_zip(client, other, "yolo", data)
    assert job.status == "succeeded", job.error
    assert job.result["skipped"] == [] and job.result["annotations"] == 5
    assert images_of(other) == images_of(team["project"])
    src = labels_of(team["project"])
    got = labels_of(other)
    if flavour == "detect":
        # the polygon comes back as its box
        src = Counter(
            {
                (k[0], k[1], "box", (5.0, 5.0, 35.0, 35.0)) if k[2] == "polygon" else k: n
                for k, n in src.items()
            }
        )
        assert got == src
    else:
        # YOLO-seg writes boxes as four corners: they come back as polygons of the same outline
        polys = {k for k in got if k[2] == "polygon"}
        assert len(polys) == 5
        assert (next(iter(k for k in src if k[2] == "polygon"))) in got


def test_sliced_and_mvtec_exports(team, tmp_path, client_for):
    from inspection.models import Project

    Project.objects.filter(pk=team["project"].pk).update(name="Line 3/caps ü")
    version = make_project(team, tmp_path / "src")
    client = client_for(team["admin"])
    opts = {"slice_size": 32, "overlap": 0.25, "min_area_ratio": 0.1, "negative_ratio": 0.5}
    job, data = export(client, version, "sliced_coco", opts)
    assert job.result["slices"]["positive"] > 0
    out = unzip(data, tmp_path / "sliced")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "annotations" / "instances_train.json"))
    assert all(im["width"] == 32 and im["height"] == 32 for im in coco.dataset["images"])
    assert all("slice_box" in im for im in coco.dataset["images"])

    job, data = export(client, version, "mvtec")
    assert job.result["download_name"] == "Line_3_caps-v1-mvtec.zip"
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert job.result["folders"]["train/good"] == 1
    assert any(n.startswith("ground_truth/combined/") for n in names)  # image a: two categories
    assert any(n.endswith("_mask.png") and "/scratch/" in n for n in names)


def test_download_permissions(team, tmp_path, client_for):
    version = make_project(team, tmp_path / "src")
    job, _ = export(client_for(team["admin"]), version, "coco")
    url = f"/api/dataset-exports/{job.pk}/download/"
    assert client_for(team["reviewer"]).get(url).status_code == 200
    assert client_for(team["annotator"]).get(url).status_code == 403
    assert client_for(team["outsider"]).get(url).status_code == 404
    # an id of the right shape that is no UUID is unknown, not a 400 (schemathesis)
    r = client_for(team["reviewer"]).get(f"/api/dataset-exports/{'0' * 36}/download/")
    assert r.status_code == 404 and r.json()["error"] == "No such export."
    listing = client_for(team["reviewer"]).get(
        f"/api/projects/{version.project_id}/datasets/1/exports/"
    )
    assert [j["id"] for j in listing.json()] == [str(job.pk)]


def test_old_export_zips_expire_and_say_so(team, tmp_path, client_for, settings):
    from datetime import timedelta

    from django.core.files.storage import default_storage
    from django.core.management import call_command
    from django.utils import timezone

    version = make_project(team, tmp_path / "src")
    old, _ = export(client_for(team["admin"]), version, "coco")
    recent, _ = export(client_for(team["admin"]), version, "yolo_detect")
    Job.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(days=15))
    out = io.StringIO()
    call_command("loupe_jobs", "--sweep", stdout=out)
    assert "delete expired export zips: 1" in out.getvalue()
    old.refresh_from_db()
    assert not default_storage.exists(f"projects/{version.project_id}/exports/{old.pk}.zip")
    assert old.result["expired"] and "expired after 14 days" in old.result["message"]
    assert old.message.endswith("(file expired after 14 days)")  # what the jobs page shows
    r = client_for(team["reviewer"]).get(f"/api/dataset-exports/{old.pk}/download/")
    assert r.status_code == 400 and "export the version again" in r.json()["error"]
    r = client_for(team["reviewer"]).get(f"/api/dataset-exports/{recent.pk}/download/")
    assert r.status_code == 200  # the recent one stays
    settings.LOUPE_EXPORT_KEEP_DAYS = 0  # 0 keeps every zip
    Job.objects.filter(pk=recent.pk).update(finished_at=timezone.now() - timedelta(days=400))
    call_command("loupe_jobs", "--sweep", stdout=io.StringIO())
    r = client_for(team["reviewer"]).get(f"/api/dataset-exports/{recent.pk}/download/")
    assert r.status_code == 200


# --- DeepPCB, NEU-DET -----------------------------------------------------------------------------


def dataset_subset(name: str, n: int = 6) -> tuple[bytes, dict]:
    """A zip of every 7th image (n of them) of a shared dataset with its part of the JSON."""
    root = dataset(name)
    data = json.loads((root / "annotations.json").read_text())
    images = data["images"][::7][:n]
    ids = {im["id"] for im in images}
    sub = {
        "images": images,
        "categories": data["categories"],
        "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}/annotations.json", json.dumps(sub))
        for im in images:
            zf.write(root / im["file_name"], f"{name}/{im['file_name']}")
            if "template_file_name" in im:  # DeepPCB: its defect-free template (the reference)
                zf.write(root / im["template_file_name"], f"{name}/{im['template_file_name']}")
    return buf.getvalue(), sub


@pytest.mark.datasets
@pytest.mark.parametrize("name", ["deeppcb", "neu_det"])
def test_shared_dataset_imports_cleanly_and_exports_the_same_boxes(
    name, team, tmp_path, client_for
):
    data, sub = dataset_subset(name)
    client = client_for(team["admin"])
    job = import_zip(client, team["project"], "coco", data, f"{name}.zip")
    assert job.status == "succeeded", job.error
    assert job.result["skipped"] == [] and job.result["adjusted"] == []
    assert job.result["images"] == 6 and job.result["annotations"] == len(sub["annotations"])
    cats = {c["id"]: c["name"] for c in sub["categories"]}
    names = {im["id"]: Path(im["file_name"]).name for im in sub["images"]}
    expected = Counter(
        (names[a["image_id"]], cats[a["category_id"]], tuple(a["bbox"])) for a in sub["annotations"]
    )
    version = dataset_version_freeze(user=team["admin"], project=team["project"])
    _, out = export(client, version, "coco")
    folder = unzip(out, tmp_path / "out")
    got = Counter()
    for path in (folder / "annotations").glob("*.json"):
        coco = json.loads(path.read_text())
        c = {x["id"]: x["name"] for x in coco["categories"]}
        n = {x["id"]: x["file_name"] for x in coco["images"]}
        got.update(
            (n[a["image_id"]], c[a["category_id"]], tuple(a["bbox"])) for a in coco["annotations"]
        )
    assert got == expected


# --- bad input ------------------------------------------------------------------------------


def _zip(entries: dict[str, bytes | str]) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
    return buf.getvalue()


def run_import(team, tmp_path, fmt, entries) -> dict:
    archive = tmp_path / "in.zip"
    archive.write_bytes(_zip(entries) if isinstance(entries, dict) else entries)
    return dataset_import_run(user=team["admin"], project=team["project"], archive=archive, fmt=fmt)


def reasons(result) -> dict[str, str]:
    return {s["item"]: s["reason"] for s in result["skipped"]}


PNG = image_bytes("PNG", size=(64, 48), seed=1)
PNG2 = image_bytes("PNG", size=(64, 48), seed=2)


def test_coco_bad_input_each_with_its_reason(team, tmp_path):
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 100, "height": 48},  # size disagrees
            {"id": 3, "file_name": "missing.png", "width": 64, "height": 48},
        ],
        "categories": [{"id": 1, "name": "scratch"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 99, "category_id": 1, "bbox": [1, 2, 10, 5]},
            {"id": 3, "image_id": 1, "category_id": 42, "bbox": [1, 2, 10, 5]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 2, -10, 5]},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [500, 500, 10, 5]},
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 3, 3, 3]},
        ],
    }
    result = run_import(
        team,
        tmp_path,
        "coco",
        {"d/instances_train.json": json.dumps(coco), "d/a.png": PNG, "d/b.png": PNG2,
         "d/broken.json": "{not json"},
    )  # fmt: skip
    r = {k.removeprefix("instances_train.json: "): v for k, v in reasons(result).items()}
    assert result["images"] == 1 and result["annotations"] == 1, r
    assert r["broken.json"].startswith("not valid JSON")
    assert r["image b.png (id 2)"] == "the image file is 64x48 but the JSON says 100x48"
    assert r["image missing.png (id 3)"].startswith("the image file is missing")
    assert r["annotation id 2"] == "it refers to image id 99, which is not in the file"
    assert r["annotation id 3"] == "it refers to category id 42, which is not in the file"
    assert r["annotation id 4"] == "the box has zero or negative size (-10 x 5)"
    assert r["annotation id 5"] == "the box [500, 500, 10, 5] lies entirely outside the 64x48 image"
    assert r["annotation id 1"] == "annotation id 1 is used more than once; the first was kept"
    assert Annotation.objects.filter(image__project=team["project"]).count() == 1


def test_yolo_bad_input_each_with_its_reason(team, tmp_path):
    entries = {
        "data.yaml": yaml.safe_dump({"train": "images/train", "names": {0: "scratch"}}),
        "images/train/a.png": PNG,
        "labels/train/a.txt": "0 .5 .5 .2 .2\n0 .5 .5 .2\n0 1.5 .5 .2 .2\n7 .5 .5 .1 .1\n",
        "images/train/b.png": PNG2,  # no label file: imported as a negative, noted
        "labels/train/orphan.txt": "0 0.5 0.5 0.1 0.1\n",
    }
    result = run_import(team, tmp_path, "yolo", entries)
    r = reasons(result)
    assert result["images"] == 2 and result["annotations"] == 1 and result["negatives"] == 1
    assert r["labels/train/a.txt line 2"].startswith("wrong number of fields (4)")
    assert r["labels/train/a.txt line 3"].startswith("value 1.5 is outside [0, 1]")
    assert r["labels/train/a.txt line 4"] == "class id 7 is not in data.yaml names"
    assert r["labels/train/orphan.txt"] == "the label file has no image"
    assert result["adjusted"] == [
        {
            "item": "images/train/b.png",
            "reason": "the image has no label file; imported as a negative (no defects)",
        }
    ]

    bad_yaml = run_import(team, tmp_path, "yolo", {"data.yaml": "names: [unclosed"})
    assert "data.yaml" in next(iter(reasons(bad_yaml))) and bad_yaml["images"] == 0


def test_zip_slip_and_zip_bomb(team, tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "scratch"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 5]}],
    }
    result = run_import(
        team,
        tmp_path,
        "coco",
        {"instances.json": json.dumps(coco), "a.png": PNG, "../evil.png": PNG2},
    )
    assert result["images"] == 1 and result["annotations"] == 1
    assert "'..'" in reasons(result)["../evil.png"]

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (11 * 1024 * 1024))
    with pytest.raises(FormatError, match="zip bomb"):
        run_import(team, tmp_path, "coco", buf.getvalue())


def test_a_refused_zip_fails_the_job_with_the_reason(team, client_for):
    job = import_zip(client_for(team["admin"]), team["project"], "coco", b"not a zip")
    assert job.status == "failed" and job.error.startswith(
        "The zip was refused: not a readable zip"
    )


def test_an_mvtec_zip_is_one_more_format_of_the_import_job(team, client_for, upload):
    r = client_for(team["admin"]).post(
        f"/api/projects/{team['project'].pk}/datasets/import/",
        {"format": "mvtec", "zip": upload("bottle.zip", _zip({"bottle/train/good/a.png": PNG}))},
        format="multipart",
    )
    assert r.status_code == 202, r.content
    assert r.json()["kind"] == "dataset_import" and r.json()["payload"]["name"] == "bottle.zip"
    assert run_job(r.json()["id"], import_dataset.body) == "succeeded"
    job = Job.objects.get(pk=r.json()["id"])
    assert (job.result["images"], job.result["negatives"]) == (1, 1), job.result
    (image,) = Image.objects.filter(project=team["project"])
    assert image.is_normal and image.split == "train" and image.source_group == "train/good"
