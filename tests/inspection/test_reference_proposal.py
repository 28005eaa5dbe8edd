"""Golden samples marked from the grid, and each new image paired with its most similar
reference: ranked by a global descriptor, checked by aligning, the first that aligns kept; an
image no reference matches stays unpaired with the reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspection.models import Image, Job
from tests.inspection.test_references import png, post_files
from workers.tasks.references import propose_references
from workers.tasks.runner import run_job

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("torch_one_thread")]


def product(kind: str, size=(256, 200)) -> np.ndarray:
    """Two products that look nothing alike (a grid of holes, a board of pads) and a third."""
    w, h = size[0] + 20, size[1] + 20
    img = np.full((h, w, 3), 150, np.uint8)
    rng = np.random.default_rng({"holes": 1, "pads": 2, "other": 3}[kind])
    if kind == "holes":
        for y in range(10, h, 28):
            for x in range(10, w, 28):
                cv2.circle(img, (x + int(rng.integers(0, 6)), y), 7, (40, 40, 40), -1)
    elif kind == "pads":  # a board: copper pads of many sizes
        for _ in range(90):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            pw, ph = int(rng.integers(4, 24)), int(rng.integers(4, 24))
            cv2.rectangle(img, (x, y), (x + pw, y + ph), (230, 200, 90), -1)
    else:
        img[:] = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (3, 3), 0.8)


def shot(big: np.ndarray, dx: int, dy: int, size=(256, 200)) -> bytes:
    w, h = size
    return png(big[10 + dy : 10 + dy + h, 10 + dx : 10 + dx + w].copy())


def bulk(client, project, ids, action):
    return client.post(
        f"/api/projects/{project.pk}/images/bulk/",
        {"image_ids": ids, "action": action},
        format="json",
    )


def test_new_images_find_their_most_similar_reference(team, client_for, upload):
    project = team["project"]
    reviewer, annotator = client_for(team["reviewer"]), client_for(team["annotator"])
    holes, pads = product("holes"), product("pads")
    post_files(
        reviewer,
        project,
        [
            upload("golden-holes.png", shot(holes, 0, 0)),
            upload("golden-pads.png", shot(pads, 0, 0)),
        ],
    )
    goldens = list(
        Image.objects.filter(project=project).order_by("id").values_list("id", flat=True)
    )
    r = bulk(annotator, project, goldens, "reference")
    assert r.status_code == 403  # marking golden samples is a reviewer's decision
    r = bulk(reviewer, project, goldens, "reference")
    assert r.status_code == 200 and r.json()["done"] == goldens, r.json()

    # new shots: each finds its own product's golden sample; the third product none
    r = post_files(
        reviewer,
        project,
        [
            upload("part-17.png", shot(pads, 4, 3)),
            upload("part-18.png", shot(holes, -3, 2)),
            upload("odd.png", shot(product("other"), 0, 0)),
        ],
    )
    job = Job.objects.get(pk=r.json()["reference_job"])
    assert job.kind == "reference_propose" and len(job.payload["image_ids"]) == 3
    assert run_job(str(job.pk), propose_references.body) == "succeeded", Job.objects.get(
        pk=job.pk
    ).error
    job.refresh_from_db()
    p17, p18, odd = (
        Image.objects.get(original_name=n) for n in ("part-17.png", "part-18.png", "odd.png")
    )
    assert p17.reference is not None, job.result
    assert p17.reference.original_name == "golden-pads.png", job.result
    assert p18.reference.original_name == "golden-holes.png", job.result
    assert p17.alignment["status"] == "ok" and p17.alignment["proposed"] is True
    assert 0 < p17.alignment["similarity"] <= 1
    assert odd.reference is None
    (left,) = job.result["unpaired"]
    assert left["name"] == "odd.png" and "no reference aligns" in left["reason"]
    assert "2 image(s) paired with a proposed reference" in job.message
    # the workspace shows the proposal like any pair
    body = annotator.get(f"/api/images/{p17.pk}/").json()
    assert body["urls"]["reference_dzi"] and body["urls"]["difference"]

    # again from the grid: an image paired meanwhile is left as it is
    r = bulk(annotator, project, [odd.pk, p17.pk], "propose_reference")
    assert r.status_code == 200 and r.json()["job"], r.json()
    assert run_job(r.json()["job"], propose_references.body) == "succeeded"
    p17.refresh_from_db()
    assert p17.reference.original_name == "golden-pads.png"


def test_reference_marks_refuse_what_makes_no_sense(team, client_for, upload):
    project, reviewer = team["project"], client_for(team["reviewer"])
    r = bulk(client_for(team["annotator"]), project, [1], "propose_reference")
    assert r.status_code == 400  # not an image of the project
    post_files(reviewer, project, [upload("a.png", png(product("holes")[:200, :256]))])
    a = Image.objects.get(original_name="a.png")
    r = bulk(client_for(team["annotator"]), project, [a.pk], "propose_reference")
    assert r.status_code == 400 and "no reference images to propose from" in str(r.json())
    post_files(reviewer, project, [upload("b.png", png(product("pads")[:200, :256]))])
    b = Image.objects.get(original_name="b.png")
    assert (
        reviewer.post(
            f"/api/images/{a.pk}/reference/", {"reference": b.pk}, format="json"
        ).status_code
        == 200
    )
    r = bulk(reviewer, project, [a.pk], "reference")
    assert (
        r.json()["done"] == []
        and "compared with a reference itself" in r.json()["refused"][0]["reason"]
    )
    r = bulk(reviewer, project, [b.pk], "not_reference")
    assert (
        r.json()["done"] == [] and "is the reference of 1 image" in r.json()["refused"][0]["reason"]
    )
