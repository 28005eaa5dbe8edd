""" "Label next": unlabelled images ranked by how unsure the models are about them, in the grid
(API and page), the workspace's previous/next, and the button that opens the first one."""

import pytest

from annotations.models import Suggestion
from annotations.services.categories import category_create
from annotations.services.suggestions import suggestions_store
from inspection.models import Image, ImageHeatmap, InspectionRun, ModelVersion
from tests.annotations.conftest import region, square
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def ranked(team, client_for, upload):
    """Six images: a sure suggestion (a), a doubtful one beside a sure one (b), a heatmap
    near its threshold (c), nothing any model said (d), a doubtful one already labelled (e),
    a normal image (f)."""
    project = team["project"]
    names = "abcdef"
    r = client_for(team["admin"]).post(
        f"/api/projects/{project.pk}/images/",
        {
            "files": [
                upload(f"{n}.png", image_bytes(size=(120, 80), seed=i)) for i, n in enumerate(names)
            ]
        },
        format="multipart",
    )
    images = {
        n: Image.objects.get(pk=f["image_id"])
        for n, f in zip(names, r.json()["files"], strict=True)
    }
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(
        project=project, model_version=version, image_ids=[i.pk for i in images.values()]
    )

    def suggest(name, *scores):
        return suggestions_store(
            image=images[name],
            run=run,
            model_version=version,
            suggestions=[
                region([10 + 20 * k, 10, 10, 10], square(10 + 20 * k, 10, 10), s)
                for k, s in enumerate(scores)
            ],
        )

    decided = suggest("a", 0.9, 0.5)[1]  # a coin toss, but already decided: it does not count
    Suggestion.objects.filter(pk=decided.pk).update(status=Suggestion.Status.REJECTED)
    suggest("b", 0.97, 0.55)
    ImageHeatmap.objects.create(image=images["c"], run=run, score=0.42, path="x.png")
    ImageHeatmap.objects.create(image=images["c"], run=None, score=0.99, path="old.png")
    ImageHeatmap.objects.filter(path="old.png").update(created_at="2020-01-01T00:00:00Z")
    suggest("e", 0.52)
    crack = category_create(user=team["admin"], project=project, name="crack")
    client_for(team["annotator"]).post(
        f"/api/images/{images['e'].pk}/annotations/",
        {"category": crack.pk, "geometry": {"type": "box", "x": 1, "y": 1, "w": 5, "h": 5}},
        format="json",
    )
    Image.objects.filter(pk=images["f"].pk).update(is_normal=True)
    return {"images": images, "crack": crack, **team}


def browser_for(user):
    """A logged-in session, as the HTML pages need."""
    from django.test import Client

    c = Client()
    c.force_login(user)
    return c


def names_of(ranked, results):
    by_id = {im.pk: n for n, im in ranked["images"].items()}
    return "".join(by_id[r["id"]] for r in results)


def test_the_grid_ranks_unlabelled_images_most_uncertain_first(ranked, client_for):
    client = client_for(ranked["annotator"])
    url = f"/api/projects/{ranked['project'].pk}/images/"
    got = client.get(url, {"state": "unlabeled", "order": "uncertainty"}).json()["results"]
    # b: 0.55 is 0.05 from the decision; c: its latest heatmap 0.42 (0.08); a: its pending
    # suggestion 0.9 (0.4); d: no model output, last
    assert names_of(ranked, got) == "bcad"
    assert names_of(ranked, client.get(url, {"order": "uncertainty"}).json()["results"]) == "ebcadf"
    assert names_of(ranked, client.get(url, {"order": "upload"}).json()["results"]) == "abcdef"
    assert names_of(ranked, client.get(url).json()["results"]) == "abcdef"
    r = client.get(url, {"order": "random"})
    assert r.status_code == 400 and r.json()["error"].startswith("order: Select a valid choice")
    # the page offers the same order
    page = browser_for(ranked["annotator"]).get(
        f"/projects/{ranked['project'].pk}/", {"order": "uncertainty"}
    )
    assert 'value="uncertainty" selected' in page.content.decode()


def test_label_next_opens_the_most_uncertain_image_and_next_goes_down_the_ranking(
    ranked, client_for
):
    images, client = ranked["images"], client_for(ranked["annotator"])
    browser = browser_for(ranked["annotator"])
    project_url = f"/projects/{ranked['project'].pk}/"
    assert 'id="label-next"' in browser.get(project_url).content.decode()
    r = browser.get(f"{project_url}label-next/")
    assert r.status_code == 302
    assert r["Location"] == f"/images/{images['b'].pk}/?state=unlabeled&order=uncertainty"
    query = {"state": "unlabeled", "order": "uncertainty"}
    n = client.get(f"/api/images/{images['b'].pk}/neighbors/", query).json()
    assert (n["previous"], n["next"], n["count"]) == (None, images["c"].pk, 4)
    n = client.get(f"/api/images/{images['a'].pk}/neighbors/", query).json()
    assert (n["previous"], n["next"]) == (images["c"].pk, images["d"].pk)
    # the workspace page carries the same neighbours
    assert f'"next": {images["c"].pk}' in browser.get(r["Location"]).content.decode()

    # b labelled: it leaves the ranking; its Next is the most uncertain image still in it
    client.post(
        f"/api/images/{images['b'].pk}/annotations/",
        {
            "category": ranked["crack"].pk,
            "geometry": {"type": "box", "x": 1, "y": 1, "w": 5, "h": 5},
        },
        format="json",
    )
    n = client.get(f"/api/images/{images['b'].pk}/neighbors/", query).json()
    assert (n["previous"], n["next"], n["count"]) == (None, images["c"].pk, 3)
    assert browser.get(f"{project_url}label-next/")["Location"].startswith(
        f"/images/{images['c'].pk}/"
    )


def test_label_next_with_nothing_left_says_so(ranked):
    Image.objects.filter(project=ranked["project"]).update(is_normal=True)
    r = browser_for(ranked["annotator"]).get(
        f"/projects/{ranked['project'].pk}/label-next/", follow=True
    )
    assert r.redirect_chain[-1][0] == f"/projects/{ranked['project'].pk}/"
    assert "nothing to label next" in r.content.decode()
    outsider = browser_for(ranked["outsider"])
    assert outsider.get(f"/projects/{ranked['project'].pk}/label-next/").status_code == 404
