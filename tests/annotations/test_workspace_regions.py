"""The workspace's data carries the project's regions of interest and how the image lies on the
reference they are drawn on (annotations.views._regions_data): the stored alignment's matrix
for an aligned image, the reference's own frame for the reference, and the reason for an image
they cannot be placed on. The rule is the one inspection runs follow (the Registrar uses the
stored matrix without registering the image again). Members read it; others get the workspace's
usual 404."""

import json

import numpy as np
import pytest
from django.test import Client

from inspection.models import Image
from inspection.services.references import (
    image_mark_reference,
    image_set_reference,
    reference_alignment_store,
)
from inspection.services.regions import region_create, registration_onto
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db

MATRIX = [[1.0, 0.02, -5.0], [-0.02, 1.0, -3.0], [0.0001, 0.0, 1.0]]
FACE = [[10.0, 10.0], [50.0, 10.0], [50.0, 40.0], [10.0, 40.0]]
LABEL = [[52.0, 5.0], [62.0, 5.0], [62.0, 20.0]]


@pytest.fixture
def regions(team, client_for, upload):
    """A golden sample with two regions (one excluded), an aligned image, one being aligned,
    one whose alignment failed and one unpaired."""
    project, admin = team["project"], team["admin"]
    names = ["golden", "aligned", "pending", "failed", "alone"]
    r = client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload(f"{n}.png", image_bytes(seed=i)) for i, n in enumerate(names)]},
        format="multipart",
    )
    images = {
        n: Image.objects.get(pk=f["image_id"])
        for n, f in zip(names, r.json()["files"], strict=True)
    }
    golden = image_mark_reference(user=admin, image=images["golden"], is_reference=True)
    for name in ("aligned", "pending", "failed"):
        image_set_reference(user=admin, image=images[name], reference=golden)
    reference_alignment_store(
        image_id=images["aligned"].pk,
        reference_id=golden.pk,
        alignment={"status": "ok", "method": "ecc", "matrix": MATRIX},
    )
    reference_alignment_store(
        image_id=images["failed"].pk,
        reference_id=golden.pk,
        alignment={"status": "failed", "reason": "too few agreeing matches"},
    )
    face = region_create(user=admin, project=project, name="face", reference=golden, polygon=FACE)
    label = region_create(
        user=admin, project=project, name="label", reference=golden, polygon=LABEL, mode="exclude"
    )
    images = {n: Image.objects.get(pk=i.pk) for n, i in images.items()}
    return {**team, "images": images, "face": face, "label": label}


def _client(user) -> Client:
    c = Client()
    c.force_login(user)
    return c


def _data(user, image_id: int):
    return _client(user).get(f"/images/{image_id}/workspace.json")


def test_an_aligned_image_gets_the_regions_and_its_stored_matrix(regions):
    images = regions["images"]
    r = _data(regions["annotator"], images["aligned"].pk)
    assert r.status_code == 200
    data = r.json()["image"]["regions"]
    assert data["state"] == "aligned" and data["matrix"] == MATRIX and data["reason"] == ""
    assert data["reference"] == {"id": images["golden"].pk, "name": "golden.png"}
    assert data["page"] == f"/projects/{regions['project'].pk}/regions/"
    assert data["items"] == [
        {"id": regions["face"].pk, "name": "face", "mode": "inspect", "polygon": FACE},
        {"id": regions["label"].pk, "name": "label", "mode": "exclude", "polygon": LABEL},
    ]


def test_the_reference_itself_and_images_the_regions_cannot_be_placed_on(regions):
    images, user = regions["images"], regions["annotator"]
    states = {
        name: _data(user, images[name].pk).json()["image"]["regions"]
        for name in ("golden", "pending", "failed", "alone")
    }
    assert states["golden"]["state"] == "reference" and states["golden"]["matrix"] is None
    assert states["pending"]["state"] == "pending" and states["pending"]["matrix"] is None
    assert states["failed"] == {
        **states["failed"],
        "state": "failed",
        "matrix": None,
        "reason": "too few agreeing matches",
    }
    assert states["alone"]["state"] == "unpaired" and states["alone"]["matrix"] is None
    # every one still lists the regions (the page says why they are not drawn)
    assert all(len(s["items"]) == 2 for s in states.values())


def test_the_page_embeds_the_regions_and_the_switch(regions):
    image = regions["images"]["aligned"]
    r = _client(regions["annotator"]).get(f"/images/{image.pk}/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'id="regions-toggle"' in html and "<kbd>I</kbd>" in html
    start = html.index('<script id="workspace-data" type="application/json">')
    embedded = json.loads(html[html.index(">", start) + 1 : html.index("</script>", start)])
    assert embedded["image"]["regions"]["matrix"] == MATRIX


def test_a_project_without_regions_gets_none(team, client_for, upload):
    project, admin = team["project"], team["admin"]
    r = client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": [upload("a.png", image_bytes())]},
        format="multipart",
    )
    image_id = r.json()["files"][0]["image_id"]
    assert _data(team["annotator"], image_id).json()["image"]["regions"] is None
    html = _client(team["annotator"]).get(f"/images/{image_id}/").content.decode()
    assert 'id="regions-label" title="The project\'s regions of interest (I)" hidden' in html


def test_only_members_read_it_and_unknown_images_are_404(regions):
    image = regions["images"]["aligned"]
    for role in ("annotator", "reviewer", "admin", "site_admin"):
        assert _data(regions[role], image.pk).status_code == 200, role
    assert _data(regions["outsider"], image.pk).status_code == 404
    assert _data(regions["annotator"], 999_999).status_code == 404
    anonymous = Client().get(f"/images/{image.pk}/workspace.json")
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]


def test_inspection_runs_use_the_same_stored_matrix(regions, tmp_path):
    from workers.tasks.regions import Registrar

    images = regions["images"]
    golden = images["golden"]
    assert registration_onto(images["aligned"], golden).matrix == MATRIX
    assert registration_onto(images["aligned"], images["alone"]).state == "other"
    assert registration_onto(images["alone"], golden).state == "unpaired"
    registrar = Registrar(golden, tmp_path)

    def unread():
        raise AssertionError("the stored alignment is used: no pixels are read")

    assert registrar.matrix(golden, unread) is None
    np.testing.assert_allclose(registrar.matrix(images["aligned"], unread), np.asarray(MATRIX))
    # a matrix that is not 3x3 is not trusted: the run registers the image itself
    Image.objects.filter(pk=images["aligned"].pk).update(
        alignment={"status": "ok", "matrix": [[1, 0], [0, 1]]}
    )
    broken = Image.objects.get(pk=images["aligned"].pk)
    assert registration_onto(broken, golden).state == "failed"
