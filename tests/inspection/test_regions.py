"""Regions of interest through the API: who may draw them, what is refused, and how a region's
model is trained and chosen (inspection.services.regions)."""

import pytest
from django.test import Client

from inspection.models import Image, InspectionRegion, ModelVersion
from inspection.services.references import image_mark_reference
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db

SQUARE = [[10, 10], [50, 10], [50, 40], [10, 40]]


@pytest.fixture
def drawn(team, client_for, upload):
    """A project with three normal 64x48 images, the first marked as the golden sample."""
    project, admin = team["project"], team["admin"]
    files = [upload(f"n{i}.png", image_bytes(seed=i)) for i in range(3)]
    r = client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": files, "is_normal": "true"},
        format="multipart",
    )
    ids = [f["image_id"] for f in r.json()["files"]]
    golden = Image.objects.get(pk=ids[0])
    image_mark_reference(user=admin, image=golden, is_reference=True)
    return {**team, "golden": golden, "ids": ids}


def _url(project) -> str:
    return f"/api/projects/{project.pk}/regions/"


def test_an_admin_draws_regions_members_read_them_others_are_refused(drawn, client_for):
    project, golden = drawn["project"], drawn["golden"]
    admin = client_for(drawn["admin"])
    body = admin.get(_url(project)).json()
    assert body["reference"] is None and body["results"] == [] and body["outside"] == "inspect"
    assert [r["id"] for r in body["references"]] == [golden.pk]
    assert body["references"][0]["width"] == 64

    r = admin.post(
        _url(project),
        {"name": "cap", "reference": golden.pk, "polygon": SQUARE, "mode": "exclude"},
        format="json",
    )
    assert r.status_code == 201, r.content
    region = r.json()
    assert region["polygon"] == SQUARE and region["mode"] == "exclude"
    assert region["model"] is None and region["suggestions"] == 0

    # the annotator reads; the reviewer may not draw; an outsider does not see the project
    seen = client_for(drawn["annotator"]).get(_url(project)).json()
    assert seen["reference"]["id"] == golden.pk and [x["name"] for x in seen["results"]] == ["cap"]
    r = client_for(drawn["reviewer"]).post(
        _url(project), {"name": "x", "reference": golden.pk, "polygon": SQUARE}, format="json"
    )
    assert r.status_code == 403 and "project admin" in r.content.decode().lower()
    assert client_for(drawn["outsider"]).get(_url(project)).status_code == 404
    assert client_for(drawn["outsider"]).get(f"/api/regions/{region['id']}/").status_code == 404
    r = client_for(drawn["reviewer"]).patch(
        f"/api/regions/{region['id']}/", {"mode": "inspect"}, format="json"
    )
    assert r.status_code == 403

    r = admin.patch(
        f"/api/regions/{region['id']}/", {"mode": "inspect", "threshold": 0.7}, format="json"
    )
    assert r.status_code == 200 and r.json()["mode"] == "inspect" and r.json()["threshold"] == 0.7
    r = admin.patch(f"/api/regions/{region['id']}/", {"threshold": None}, format="json")
    assert r.json()["threshold"] is None
    assert admin.delete(f"/api/regions/{region['id']}/").status_code == 204
    assert not InspectionRegion.objects.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"polygon": [[1, 1], [5, 5]]}, "3 to"),
        ({"polygon": [[1, 1], [5, 5], [9, 9]]}, "no area"),
        ({"polygon": [[10, 10], [500, 10], [50, 40]]}, "outside n0.png (64x48 px)"),
        ({"polygon": [[10, 10], ["a", 10], [50, 40]]}, "not an [x, y] point"),
        ({"polygon": "square"}, "3 to"),
        ({"name": " "}, "name"),
        ({"mode": "ignore"}, "valid choice"),
        ({"threshold": 0}, "calibrated score in [0.05, 10]"),
        ({"reference": 10**9}, "No"),
    ],
)
def test_bad_regions_are_refused_with_the_reason(drawn, client_for, change, message):
    region = {"name": "face", "reference": drawn["golden"].pk, "polygon": SQUARE, **change}
    r = client_for(drawn["admin"]).post(_url(drawn["project"]), region, format="json")
    assert r.status_code in (400, 404), r.content
    assert message in r.content.decode()
    assert not InspectionRegion.objects.exists()


def test_one_reference_per_project_unique_names_and_another_projects_image(
    drawn, client_for, make_user, upload
):
    from inspection.services.projects import project_create

    project, golden, admin = drawn["project"], drawn["golden"], client_for(drawn["admin"])
    base = {"reference": golden.pk, "polygon": SQUARE}
    assert admin.post(_url(project), {**base, "name": "face"}, format="json").status_code == 201
    r = admin.post(_url(project), {**base, "name": "face"}, format="json")
    assert r.status_code == 400 and "already has a region named 'face'" in r.content.decode()
    other = Image.objects.get(pk=drawn["ids"][1])
    r = admin.post(_url(project), {**base, "name": "b", "reference": other.pk}, format="json")
    assert r.status_code == 400 and "drawn on n0.png" in r.content.decode()
    elsewhere = project_create(user=drawn["admin"], name="other")
    r = client_for(drawn["admin"]).post(
        f"/api/projects/{elsewhere.pk}/images/",
        {"files": [upload("z.png", image_bytes(seed=9))]},
        format="multipart",
    )
    foreign = r.json()["files"][0]["image_id"]
    r = admin.post(_url(project), {**base, "name": "c", "reference": foreign}, format="json")
    assert r.status_code == 404


def test_outside_regions_is_a_project_setting(drawn, client_for):
    project, admin = drawn["project"], client_for(drawn["admin"])
    r = admin.patch(
        f"/api/projects/{project.pk}/", {"inspection": {"outside_regions": "ignore"}}, format="json"
    )
    assert r.status_code == 200 and r.json()["inspection"]["outside_regions"] == "ignore"
    assert admin.get(_url(project)).json()["outside"] == "ignore"
    r = admin.patch(
        f"/api/projects/{project.pk}/", {"inspection": {"outside_regions": "no"}}, format="json"
    )
    assert r.status_code == 400 and "inspect or ignore" in r.content.decode()


def test_training_a_regions_model_and_the_rules_around_it(drawn, client_for):
    project, golden, admin = drawn["project"], drawn["golden"], client_for(drawn["admin"])
    r = admin.post(
        _url(project),
        {"name": "cap", "reference": golden.pk, "polygon": SQUARE, "mode": "exclude"},
        format="json",
    )
    cap = r.json()["id"]
    r = admin.post(f"/api/regions/{cap}/train/", {"architecture": "padim"}, format="json")
    assert r.status_code == 400 and "excluded region" in r.content.decode()
    admin.patch(f"/api/regions/{cap}/", {"mode": "inspect"}, format="json")
    r = admin.post(
        f"/api/regions/{cap}/train/",
        {"architecture": "padim", "params": {"scale": 1}},
        format="json",
    )
    assert r.status_code == 400 and "leave scale out" in r.content.decode()
    r = client_for(drawn["reviewer"]).post(f"/api/regions/{cap}/train/", {}, format="json")
    assert r.status_code == 403

    r = admin.post(f"/api/regions/{cap}/train/", {"params": {"input_size": 64}}, format="json")
    assert r.status_code == 202, r.content
    version = ModelVersion.objects.get(pk=r.json()["id"])
    assert version.params == {"model": "padim", "input_size": 64, "region": cap}
    assert r.json()["job_detail"]["kind"] == "anomaly_train"
    region = admin.get(_url(project)).json()["results"][0]
    assert region["models"][0]["id"] == version.pk and region["model_status"] == "training"
    # not ready yet: it cannot be chosen; and never as the whole image's model
    r = admin.patch(f"/api/regions/{cap}/", {"model_version": version.pk}, format="json")
    assert r.status_code == 400 and "ready model trained for this region" in r.content.decode()
    # trained on the region's outline as it is (the training job records it)
    ModelVersion.objects.filter(pk=version.pk).update(
        status="ready",
        artifact="x/model.pt",
        metrics={"region": {"name": "cap", "polygon": SQUARE, "trained_on": 3}},
    )
    page = Client()
    page.force_login(drawn["admin"])
    html = page.get(f"/projects/{project.pk}/models/").content.decode()
    row = html[html.index(f'data-region-model="{cap}"') :].split("</tr>")[0]
    assert ">cap</a>: used inside it" in row and "Make active" not in row
    r = admin.patch(f"/api/regions/{cap}/", {"model_version": version.pk}, format="json")
    assert r.status_code == 200 and r.json()["model"] == "padim v1"
    r = admin.post(f"/api/models/{version.pk}/activate/")
    assert r.status_code == 400 and "that region's model" in r.content.decode()
    r = client_for(drawn["reviewer"]).post(
        f"/api/projects/{project.pk}/runs/",
        {"scope": "all", "model_version": version.pk},
        format="json",
    )
    assert r.status_code == 400 and "inside that region" in r.content.decode()
    # a whole-image model is not a region's model
    whole = ModelVersion.objects.create(
        project=project, number=2, architecture="padim", status="ready", artifact="y/model.pt"
    )
    r = admin.patch(f"/api/regions/{cap}/", {"model_version": whole.pk}, format="json")
    assert r.status_code == 400
    r = admin.patch(f"/api/regions/{cap}/", {"model_version": None}, format="json")
    assert r.json()["model"] is None and r.json()["model_status"] == "ready"
    assert r.json()["models"][0]["trained_on"] == 3

    # redrawn, the region drops the model that learnt its old outline, which cannot be chosen
    # again, and a training of the old outline that ends now is not attached either
    admin.patch(f"/api/regions/{cap}/", {"model_version": version.pk}, format="json")
    moved = [[12, 10], [52, 10], [52, 40], [12, 40]]
    r = admin.patch(f"/api/regions/{cap}/", {"polygon": moved}, format="json")
    assert r.status_code == 200 and r.json()["model"] is None
    r = admin.patch(f"/api/regions/{cap}/", {"model_version": version.pk}, format="json")
    assert r.status_code == 400 and "another outline of this region" in r.content.decode()
    from inspection.services.regions import region_model_ready

    assert region_model_ready(model_version=ModelVersion.objects.get(pk=version.pk)) is None
    assert InspectionRegion.objects.get(pk=cap).model_version_id is None
