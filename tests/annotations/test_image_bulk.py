"""One action on many images (the grid's selection) through the API, and the project's rename
and delete on its settings page."""

import pytest
from django.test import Client

from annotations.models import Annotation
from annotations.services.categories import category_create
from annotations.services.labels import annotation_create
from inspection.models import Image, InspectionRun, Project
from tests.conftest import PASSWORD, image_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def grid(team, client_for, upload):
    project = team["project"]
    r = client_for(team["admin"]).post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload(f"p{i}.png", image_bytes(size=(80, 60), seed=i)) for i in range(4)]},
        format="multipart",
    )
    images = [Image.objects.get(pk=f["image_id"]) for f in r.json()["files"]]
    scratch = category_create(user=team["admin"], project=project, name="scratch")
    # the first image has a defect label: it can never be marked normal
    annotation_create(
        user=team["admin"],
        image=images[0],
        category_id=scratch.pk,
        geometry={"type": "box", "x": 5, "y": 5, "w": 10, "h": 10},
    )
    return {**team, "images": images, "url": f"/api/projects/{project.pk}/images/bulk/"}


def ids(images):
    return [i.pk for i in images]


def test_mark_normal_does_the_allowed_and_names_the_refused(grid, client_for):
    r = client_for(grid["reviewer"]).post(
        grid["url"], {"image_ids": ids(grid["images"]), "action": "normal"}, format="json"
    )
    assert r.status_code == 200, r.json()
    body = r.json()
    assert body["done"] == ids(grid["images"][1:])
    assert [x["image"] for x in body["refused"]] == [grid["images"][0].pk]
    assert "defect labels" in body["refused"][0]["reason"]
    assert body["message"].startswith("3 images marked normal; 1 refused: This image has defect")
    normal = set(Image.objects.filter(is_normal=True).values_list("id", flat=True))
    assert normal == set(ids(grid["images"][1:]))
    r = client_for(grid["reviewer"]).post(
        grid["url"], {"image_ids": ids(grid["images"][1:3]), "action": "not_normal"}, format="json"
    )
    assert r.json()["message"] == "2 images marked not normal."
    assert set(Image.objects.filter(is_normal=True).values_list("id", flat=True)) == {
        grid["images"][3].pk
    }


def test_set_split_and_delete_with_their_roles(grid, client_for):
    images = grid["images"]
    r = client_for(grid["reviewer"]).post(
        grid["url"],
        {"image_ids": ids(images[:2]), "action": "split", "split": "val"},
        format="json",
    )
    assert r.status_code == 200 and r.json()["message"] == "2 images moved to split 'val'."
    assert sorted(Image.objects.filter(split="val").values_list("id", flat=True)) == ids(images[:2])
    r = client_for(grid["reviewer"]).post(
        grid["url"],
        {"image_ids": ids(images[:1]), "action": "split", "split": "holdout"},
        format="json",
    )
    assert r.status_code == 400 and "Unknown split 'holdout'" in r.json()["error"]

    # deleting takes a project admin; the reviewer's attempt changes nothing
    r = client_for(grid["reviewer"]).post(
        grid["url"], {"image_ids": ids(images[:2]), "action": "delete"}, format="json"
    )
    assert r.status_code == 403 and Image.objects.count() == 4
    r = client_for(grid["admin"]).post(
        grid["url"], {"image_ids": ids(images[:2]), "action": "delete"}, format="json"
    )
    assert r.status_code == 200 and r.json()["message"] == "2 images deleted."
    assert sorted(Image.objects.values_list("id", flat=True)) == ids(images[2:])
    assert not Annotation.objects.exists()  # the label went with its image


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"image_ids": [], "action": "normal"}, 400, "Select at least one image"),
        ({"image_ids": [1.5], "action": "normal"}, 400, "is not an image id"),
        ({"image_ids": [True], "action": "normal"}, 400, "is not an image id"),
        ({"image_ids": [10**30], "action": "normal"}, 400, "is not an image id"),
        ({"image_ids": ["7"], "action": "normal"}, 400, "is not an image id"),
        ({"image_ids": list(range(1, 1002)), "action": "normal"}, 400, "At most 1000"),
        ({"image_ids": [999999], "action": "normal"}, 400, "Not images of this project"),
        ({"image_ids": "all", "action": "normal"}, 400, "image_ids"),
        ({"image_ids": None, "action": "delete"}, 400, "image_ids"),
        ({"action": "normal"}, 400, "image_ids"),
        ({"image_ids": "FIRST", "action": "explode"}, 400, "Unknown action 'explode'"),
        ({"image_ids": "FIRST", "action": "inspect"}, 400, "no active anomaly model"),
        ({"image_ids": "FIRST", "action": "detect"}, 400, "no active detector"),
    ],
)
def test_bad_requests_change_nothing_and_say_why(grid, client_for, payload, status, message):
    if payload.get("image_ids") == "FIRST":
        payload = {**payload, "image_ids": ids(grid["images"][:1])}
    r = client_for(grid["admin"]).post(grid["url"], payload, format="json")
    assert r.status_code == status, r.json()
    assert message in str(r.json()), r.json()
    assert Image.objects.count() == 4 and not Image.objects.filter(is_normal=True).exists()


def test_roles_and_other_projects(grid, client_for, make_user):
    own = ids(grid["images"][1:2])
    r = client_for(grid["annotator"]).post(
        grid["url"], {"image_ids": own, "action": "normal"}, format="json"
    )
    assert r.status_code == 403
    r = client_for(grid["outsider"]).post(
        grid["url"], {"image_ids": own, "action": "normal"}, format="json"
    )
    assert r.status_code == 404
    # another project's admin cannot reach these images through their own project
    from inspection.services.projects import project_create

    other = project_create(user=grid["outsider"], name="Other")
    r = client_for(grid["outsider"]).post(
        f"/api/projects/{other.pk}/images/bulk/",
        {"image_ids": own, "action": "delete"},
        format="json",
    )
    assert r.status_code == 400 and "Not images of this project" in r.json()["error"]
    assert Image.objects.count() == 4


def test_inspect_selected_starts_one_run_of_the_active_model(grid, client_for):
    from inspection.models import ModelVersion

    ModelVersion.objects.create(
        project=grid["project"], number=1, architecture="padim", status="ready", is_active=True
    )
    chosen = ids(grid["images"][1:3])
    r = client_for(grid["reviewer"]).post(
        grid["url"], {"image_ids": chosen, "action": "inspect"}, format="json"
    )
    assert r.status_code == 200, r.json()
    run = InspectionRun.objects.get(pk=r.json()["run"])
    assert run.image_ids == chosen and r.json()["message"] == "2 images sent to the anomaly model."


def test_pages_offer_the_actions_each_role_may_take(grid):
    def page(who):
        c = Client()
        assert c.login(username=grid[who].username, password=PASSWORD)
        return c.get(f"/projects/{grid['project'].pk}/").content.decode()

    admin, reviewer, annotator = page("admin"), page("reviewer"), page("annotator")
    assert 'id="bulkbar"' in admin and 'data-bulk="delete"' in admin
    assert 'class="pick"' in reviewer and 'data-bulk="delete"' not in reviewer
    assert 'data-bulk="inspect"' not in reviewer  # no active anomaly model yet
    assert 'id="bulkbar"' not in annotator and 'class="pick"' not in annotator
    # the workspace offers "Review →" only to those who may review (an annotator got a 403)
    image = grid["images"][1].pk
    for who, shown in (("annotator", False), ("reviewer", True)):
        c = Client()
        assert c.login(username=grid[who].username, password=PASSWORD)
        html = c.get(f"/images/{image}/").content.decode()
        assert (f"/review/?image={image}" in html) is shown, who


def test_project_rename_and_delete_on_the_settings_page(grid):
    project = grid["project"]
    url = f"/projects/{project.pk}/settings/"
    c = Client()
    assert c.login(username="padmin", password=PASSWORD)
    page = c.post(url, {"action": "rename", "name": "Bottles 2", "description": "line 3"})
    assert page.status_code == 302
    project.refresh_from_db()
    assert (project.name, project.description) == ("Bottles 2", "line 3")
    page = c.post(url, {"action": "rename", "name": "  "}, follow=True)
    assert b"A project needs a name." in page.content
    # the file-name rule that pairs uploads with their references is set here too
    assert b"_test=_temp</textarea>" in c.get(url).content
    c.post(url, {"action": "rename", "name": "Bottles 2", "reference_rule": "_after=_before"})
    project.refresh_from_db()
    assert project.reference_rule == "_after=_before"
    page = c.post(
        url, {"action": "rename", "name": "Bottles 2", "reference_rule": "after"}, follow=True
    )
    assert b"is not &#x27;image suffix=reference suffix&#x27;" in page.content
    project.refresh_from_db()
    assert project.reference_rule == "_after=_before"

    # a reviewer cannot delete; the admin must type the name
    r = Client()
    assert r.login(username="rita", password=PASSWORD)
    assert r.post(url, {"action": "delete-project", "confirm_name": "Bottles 2"}).status_code == 403
    page = c.post(url, {"action": "delete-project", "confirm_name": "bottles 2"}, follow=True)
    assert b"Type the project&#x27;s name, &#x27;Bottles 2&#x27;, to delete it." in page.content
    assert Project.objects.filter(pk=project.pk).exists()
    page = c.post(url, {"action": "delete-project", "confirm_name": "Bottles 2"}, follow=True)
    assert page.redirect_chain[-1][0] == "/"
    assert b"Project &#x27;Bottles 2&#x27; deleted, with its images and labels." in page.content
    assert not Project.objects.filter(pk=project.pk).exists() and not Image.objects.exists()
