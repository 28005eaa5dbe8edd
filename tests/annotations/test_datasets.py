"""Dataset versions: freeze rules, stable splits, immutability, compare, API and permissions."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from annotations.models import Annotation, DatasetVersion
from annotations.services.categories import category_get_or_create
from annotations.services.dataset_versions import dataset_version_freeze, dataset_versions_compare
from inspection.models import Image
from inspection.services.images import IncomingFile, image_store_one
from tests.conftest import image_bytes

_seed = iter(range(1000, 100000))


def add_image(project, user, folder: Path, name: str, size=(64, 48), **kw) -> Image:
    """Store a small random PNG in the project (a new seed each call, so never a duplicate)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(image_bytes("PNG", size=size, seed=next(_seed)))
    out = image_store_one(project=project, user=user, incoming=IncomingFile(name, path), **kw)
    assert out.status == "stored", out
    return Image.objects.get(pk=out.image_id)


def label(image, category: str, geometry: dict, **kw) -> Annotation:
    cat = category_get_or_create(project=image.project, name=category)
    kw.setdefault("review_status", Annotation.ReviewStatus.APPROVED)
    return Annotation.objects.create(
        image=image, category=cat, kind=geometry["type"], geometry=geometry, **kw
    )


def box(x, y, w, h) -> dict:
    return {"type": "box", "x": x, "y": y, "w": w, "h": h}


def image_ids(version: DatasetVersion) -> set[int]:
    return {im["id"] for im in version.content["images"]}


def test_freeze_takes_reviewed_labels_and_confirmed_negatives(team, tmp_path):
    project, admin = team["project"], team["admin"]
    img = {n: add_image(project, admin, tmp_path, f"{n}.png") for n in "ABCDEFGHI"}
    label(img["A"], "scratch", box(1, 2, 10, 5))  # approved
    label(img["B"], "scratch", box(1, 2, 10, 5), review_status="pending")
    # an accepted suggestion an annotator changed since: pending again, not frozen by default
    label(img["C"], "dent", box(3, 3, 4, 4), review_status="pending", source="suggestion")
    img["D"].is_normal = True
    img["D"].save()
    Image.objects.filter(pk=img["E"].pk).update(verdict="ok")  # an annotator's OK: not confirmed
    Image.objects.filter(pk=img["F"].pk).update(is_normal=True)
    label(img["F"], "dent", box(0, 0, 5, 5), review_status="pending")  # not background
    label(img["G"], "crack", {"type": "polygon", "points": [[1, 1], [9, 1], [5, 8]]},
          source="ground_truth")  # fmt: skip
    label(img["H"], "scratch", box(1, 1, 3, 3), review_status="returned")

    v1 = dataset_version_freeze(user=admin, project=project, note="first")
    assert image_ids(v1) == {img[n].pk for n in "AD"}
    negatives = {im["id"] for im in v1.content["images"] if im["negative"]}
    assert negatives == {img["D"].pk}
    assert sorted(s["category"] for s in v1.content["shapes"]) == ["scratch"]
    assert v1.counts["images"] == 2 and v1.counts["negatives"] == 1 and v1.counts["shapes"] == 1
    assert v1.number == 1 and v1.note == "first" and v1.created_by == admin
    assert len(v1.content_hash) == 64

    v2 = dataset_version_freeze(
        user=admin, project=project, include_pending=True, include_ground_truth=True
    )
    assert image_ids(v2) == {img[n].pk for n in "ABCDFG"}
    assert v2.number == 2 and v2.options["include_pending"] is True
    shape = next(s for s in v2.content["shapes"] if s["category"] == "crack")
    assert shape["kind"] == "polygon" and shape["geometry"]["points"][2] == [5, 8]


def test_nothing_to_freeze_is_a_clear_error(team):
    with pytest.raises(ValidationError, match="Nothing to freeze"):
        dataset_version_freeze(user=team["admin"], project=team["project"])


def test_splits_are_seeded_stratified_and_stable_when_images_are_added(team, tmp_path):
    project, admin = team["project"], team["admin"]
    first = [add_image(project, admin, tmp_path, f"a{i}.png") for i in range(20)]
    for i, im in enumerate(first):
        label(im, "scratch" if i % 2 else "dent", box(1, 1, 5, 5))
    v1 = dataset_version_freeze(user=admin, project=project, seed=7)
    splits1 = {im["id"]: im["split"] for im in v1.content["images"]}
    # stratified 80/10/10 within each category (10 images each: 8/1/1)
    assert v1.counts["splits"]["train"]["images"] == 16
    assert v1.counts["categories"]["dent"] == {"train": 8, "val": 1, "test": 1}

    # the same labels frozen again give the same content hash
    assert dataset_version_freeze(user=admin, project=project, seed=7).content_hash == (
        v1.content_hash
    )
    more = [add_image(project, admin, tmp_path, f"b{i}.png") for i in range(10)]
    for im in more:
        label(im, "dent", box(2, 2, 5, 5))
    v3 = dataset_version_freeze(user=admin, project=project, seed=7)
    splits3 = {im["id"]: im["split"] for im in v3.content["images"]}
    assert all(splits3[k] == s for k, s in splits1.items())  # nobody moved
    assert len(splits3) == 30 and set(splits3.values()) == {"train", "val", "test"}

    # an image whose split field was set by a person keeps it
    moved = first[0]
    target = "val" if splits1[moved.pk] != "val" else "test"
    Image.objects.filter(pk=moved.pk).update(split=target)
    v4 = dataset_version_freeze(user=admin, project=project, seed=7)
    assert {im["id"]: im["split"] for im in v4.content["images"]}[moved.pk] == target


def test_a_version_is_immutable(team, tmp_path, client_for):
    project, admin = team["project"], team["admin"]
    im = add_image(project, admin, tmp_path, "a.png")
    ann = label(im, "scratch", box(1, 1, 5, 5))
    v1 = dataset_version_freeze(user=admin, project=project)
    v1.note = "changed"
    with pytest.raises(ValueError, match="immutable"):
        v1.save()
    # later edits of labels do not reach the frozen version
    ann.geometry = box(2, 2, 9, 9)
    ann.save()
    v1 = DatasetVersion.objects.get(pk=v1.pk)
    assert v1.note == "" and v1.content["shapes"][0]["geometry"] == box(1, 1, 5, 5)
    client = client_for(admin)
    url = f"/api/projects/{project.pk}/datasets/1/"
    assert client.patch(url, {"note": "x"}, format="json").status_code == 405
    assert client.delete(url).status_code == 405


def test_compare_two_versions(team, tmp_path, client_for):
    project, admin = team["project"], team["admin"]
    a, b, c = (add_image(project, admin, tmp_path, f"{n}.png") for n in "abc")
    label(a, "scratch", box(1, 1, 5, 5))
    lb = label(b, "dent", box(1, 1, 5, 5))
    dataset_version_freeze(user=admin, project=project)
    lb.geometry = box(3, 3, 5, 5)
    lb.save()
    label(c, "scratch", box(1, 1, 2, 2))
    dataset_version_freeze(user=admin, project=project)

    r = client_for(team["reviewer"]).get(
        f"/api/projects/{project.pk}/datasets/compare/?old=1&new=2"
    )
    assert r.status_code == 200, r.content
    d = r.json()
    assert d["unchanged"] is False and d["same_content_hash"] is False
    assert d["added_images"] == [c.pk] and d["removed_images"] == []
    assert d["relabelled_images"] == [b.pk]
    assert d["shapes_added"] == {"dent": 1, "scratch": 1} and d["shapes_removed"] == {"dent": 1}
    same = dataset_versions_compare(
        user=admin,
        old=DatasetVersion.objects.get(number=2),
        new=DatasetVersion.objects.get(number=2),
    )
    assert same["unchanged"] and same["same_content_hash"]
    bad = client_for(admin).get(f"/api/projects/{project.pk}/datasets/compare/?old=1")
    assert bad.status_code == 400 and "new" in bad.json()["error"]


def test_api_freeze_list_get_and_roles(team, tmp_path, client_for):
    project = team["project"]
    im = add_image(project, team["admin"], tmp_path, "a.png")
    label(im, "scratch", box(1, 1, 5, 5))
    base = f"/api/projects/{project.pk}/datasets/"

    assert client_for(team["annotator"]).post(base, {}, format="json").status_code == 403
    assert client_for(team["reviewer"]).post(base, {}, format="json").status_code == 403
    assert client_for(team["outsider"]).post(base, {}, format="json").status_code == 404
    bad = client_for(team["admin"]).post(base, {"ratios": {"train": -1}}, format="json")
    assert bad.status_code == 400 and "ratios" in bad.json()["error"]
    for weight in ("1" + "0" * 400, "1e400"):  # float() overflows, or is infinite: 400, no 500
        bad = client_for(team["admin"]).generic(
            "POST", base, f'{{"ratios": {{"train": {weight}}}}}', content_type="application/json"
        )
        assert bad.status_code == 400 and "ratios" in bad.json()["error"], bad.content
    r = client_for(team["admin"]).post(base, {"note": "v1", "seed": 3}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["number"] == 1 and r.json()["counts"]["shapes"] == 1

    listing = client_for(team["reviewer"]).get(base)
    assert listing.status_code == 200 and listing.json()["count"] == 1
    assert "content" not in listing.json()["results"][0]
    assert client_for(team["annotator"]).get(base).status_code == 403
    out = client_for(team["outsider"]).get(base)
    assert out.status_code == 404 and out.json() == {"error": "No such project."}
    detail = client_for(team["reviewer"]).get(base + "1/?content=1").json()
    assert detail["content"]["images"][0]["id"] == im.pk
    assert client_for(team["reviewer"]).get(base + "9/").status_code == 404

    exports = base + "1/exports/"
    assert client_for(team["annotator"]).post(exports, {"format": "coco"}).status_code == 403
    assert client_for(team["reviewer"]).post(exports, {"format": "coco"}).status_code == 403
    assert client_for(team["outsider"]).post(exports, {"format": "coco"}).status_code == 404
    wrong = client_for(team["admin"]).post(exports, {"format": "voc"}, format="json")
    assert wrong.status_code == 400 and "format" in wrong.json()["error"]
    opts = {"format": "sliced_coco", "options": {"overlap": 1.5}}
    wrong = client_for(team["admin"]).post(exports, opts, format="json")
    assert wrong.status_code == 400 and "overlap" in wrong.json()["error"]

    imp = base + "import/"
    assert client_for(team["reviewer"]).post(imp, {"format": "coco"}).status_code == 403
    assert client_for(team["outsider"]).post(imp, {"format": "coco"}).status_code == 404


def test_datasets_page(team, tmp_path, client):
    project = team["project"]
    im = add_image(project, team["admin"], tmp_path, "a.png")
    label(im, "scratch", box(1, 1, 5, 5))
    dataset_version_freeze(user=team["admin"], project=project, note="hello")
    client.force_login(team["admin"])
    page = client.get(f"/projects/{project.pk}/datasets/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "v1" in html and "hello" in html and 'id="freeze-form"' in html
    assert 'data-format="sliced_coco"' in html and 'id="import-form"' in html
    settings_page = client.get(f"/projects/{project.pk}/settings/").content.decode()
    assert f"/projects/{project.pk}/datasets/" in settings_page
    client.force_login(team["reviewer"])
    html = client.get(f"/projects/{project.pk}/datasets/").content.decode()
    assert "v1" in html and 'id="freeze-form"' not in html
    client.force_login(team["annotator"])
    assert client.get(f"/projects/{project.pk}/datasets/").status_code == 403
