"""Pairs survive the way in and out: DeepPCB's COCO with its templates imports paired, the pairs
go into a dataset version, and COCO and YOLO exports carry them (``reference_file_name``,
``references/``) so that importing the export pairs the same images again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from annotations.services.dataset_versions import dataset_version_freeze
from inspection.models import Image, Job
from inspection.services.projects import project_create
from tests.annotations.test_dataset_transfer import (
    _zip,
    dataset_subset,
    export,
    import_zip,
    unzip,
)
from workers.tasks.references import align_references
from workers.tasks.runner import run_job

pytestmark = pytest.mark.django_db


def pairs_of(project) -> set[tuple[str, str]]:
    return {
        (im.original_name, im.reference.original_name)
        for im in Image.objects.filter(project=project, reference__isnull=False).select_related(
            "reference"
        )
    }


@pytest.mark.datasets
def test_deeppcb_imports_paired_and_its_exports_pair_again(team, tmp_path, client_for):
    data, sub = dataset_subset("deeppcb", n=3)
    client = client_for(team["admin"])
    job = import_zip(client, team["project"], "coco", data, "deeppcb.zip")
    assert job.status == "succeeded", job.error
    assert job.result["images"] == 3 and job.result["paired"] == 3, job.result
    assert job.result["skipped"] == [] and job.result["adjusted"] == []
    assert "3 paired with a reference" in job.result["message"]
    expected = {
        (Path(im["file_name"]).name, Path(im["template_file_name"]).name) for im in sub["images"]
    }
    assert pairs_of(team["project"]) == expected
    templates = Image.objects.filter(project=team["project"], is_reference=True)
    assert templates.count() == 3 and all(t.is_normal for t in templates)
    # every template gets a pyramid; one alignment job for the three pairs
    pyramid = Job.objects.filter(kind="pyramid").latest("created_at")
    assert set(pyramid.payload["image_ids"]) == set(
        Image.objects.filter(project=team["project"]).values_list("id", flat=True)
    )
    align = Job.objects.get(kind="reference_align")
    assert run_job(str(align.pk), align_references.body) == "succeeded"
    for image in Image.objects.filter(project=team["project"], reference__isnull=False):
        a = image.alignment
        assert a["status"] == "ok", a
        # DeepPCB's templates are registered to their boards: the transform is near identity
        m = np.array(a["matrix"])
        corners = np.array([[0, 0, 1], [639, 0, 1], [0, 639, 1], [639, 639, 1]], float).T
        moved = m @ corners
        assert np.abs(moved[:2] / moved[2] - corners[:2]).max() < 4.0, m

    version = dataset_version_freeze(user=team["admin"], project=team["project"])
    paired = [im for im in version.content["images"] if im.get("reference")]
    assert len(paired) == 3
    assert all(im["reference"]["alignment"]["status"] == "ok" for im in paired)

    _, coco_zip = export(client, version, "coco")
    folder = unzip(coco_zip, tmp_path / "coco")
    listed = [
        im
        for p in (folder / "annotations").glob("*.json")
        for im in json.loads(p.read_text())["images"]
        if "reference_file_name" in im
    ]
    assert len(listed) == 3
    assert all((folder / im["reference_file_name"]).is_file() for im in listed)
    again = project_create(user=team["admin"], name="DeepPCB again")
    job = import_zip(client, again, "coco", coco_zip, "export.zip")
    assert job.status == "succeeded" and job.result["paired"] == 3, job.result
    assert pairs_of(again) == expected

    _, yolo_zip = export(client, version, "yolo_detect")
    folder = unzip(yolo_zip, tmp_path / "yolo")
    assert len(list(folder.glob("references/*/*"))) == 3
    third = project_create(user=team["admin"], name="DeepPCB from YOLO")
    job = import_zip(client, third, "yolo", yolo_zip, "yolo.zip")
    assert job.status == "succeeded" and job.result["paired"] == 3, job.result
    # YOLO pairs by name: the reference keeps the image's export name, the same pixels
    sha = {
        im.original_name: im.reference.sha256
        for im in Image.objects.filter(
            project=team["project"], reference__isnull=False
        ).select_related("reference")
    }
    for im in Image.objects.filter(project=third, reference__isnull=False).select_related(
        "reference"
    ):
        assert im.reference.sha256 == sha[im.original_name]


def test_a_missing_or_broken_reference_imports_the_image_alone(team, client_for):
    from tests.conftest import image_bytes

    coco = {
        "images": [
            {
                "id": 1,
                "file_name": "a.png",
                "width": 64,
                "height": 48,
                "reference_file_name": "refs/gone.png",
            },
            {
                "id": 2,
                "file_name": "b.png",
                "width": 64,
                "height": 48,
                "reference_file_name": "refs/bad.png",
            },
            {
                "id": 3,
                "file_name": "c.png",
                "width": 64,
                "height": 48,
                "reference_file_name": "../../etc/passwd",
            },
            {
                "id": 4,
                "file_name": "d.png",
                "width": 64,
                "height": 48,
                "reference_file_name": "refs/d.png",
            },
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "scratch"}],
    }
    data = _zip(
        {
            "ds/annotations.json": json.dumps(coco),
            **{f"ds/{n}.png": image_bytes(seed=i) for i, n in enumerate("abcd")},
            "ds/refs/bad.png": b"not an image",
            "ds/refs/d.png": image_bytes(seed=9),
        }
    )
    job = import_zip(client_for(team["admin"]), team["project"], "coco", data)
    assert job.status == "succeeded", job.error
    assert job.result["images"] == 4 and job.result["paired"] == 1, job.result
    adjusted = {
        a["item"].split(": image ")[-1].split(" (")[0]: a["reason"] for a in job.result["adjusted"]
    }
    assert "the file is missing" in adjusted["a.png"]
    assert "refs/bad.png" in adjusted["b.png"]
    assert "not usable" in adjusted["c.png"]
    assert pairs_of(team["project"]) == {("d.png", "d.png")}


def test_an_import_pairs_by_the_projects_name_rule_and_proposes_for_the_rest(team, client_for):
    """A COCO file without reference fields: its images pair by the project's file-name rule,
    as an upload's do, and those left get the most similar reference proposed."""
    from tests.conftest import image_bytes

    admin = client_for(team["admin"])
    url = f"/api/projects/{team['project'].pk}/"
    assert admin.patch(url, {"reference_rule": "_test=_temp"}, format="json").status_code == 200
    names = ["p1_test.png", "p1_temp.png", "p2_test.png"]
    coco = {
        "images": [
            {"id": i, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names, 1)
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "scratch"}],
    }
    data = _zip(
        {
            "ds/annotations.json": json.dumps(coco),
            **{f"ds/{n}": image_bytes(seed=i) for i, n in enumerate(names)},
        }
    )
    job = import_zip(admin, team["project"], "coco", data)
    assert job.status == "succeeded", job.error
    assert job.result["images"] == 3 and job.result["paired"] == 1, job.result
    assert pairs_of(team["project"]) == {("p1_test.png", "p1_temp.png")}
    assert Image.objects.get(original_name="p1_temp.png").is_reference
    align = Job.objects.get(kind="reference_align")
    assert align.payload["image_ids"] == [Image.objects.get(original_name="p1_test.png").pk]
    # p2_test has no p2_temp: the project now has a reference, so one is proposed for it
    propose = Job.objects.get(kind="reference_propose")
    assert propose.payload["image_ids"] == [Image.objects.get(original_name="p2_test.png").pk]
