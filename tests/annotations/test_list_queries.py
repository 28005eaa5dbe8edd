"""The lists a team loads all day (the grid, an image's labels, the review queue, an image's
overlay) make as many queries for many rows as for few: nothing is fetched row by row. The
review queue loads only the columns its serializer shows of each suggestion's image, model
version and decider (``SuggestionSerializer.RELATED_COLUMNS``): a field that read another one
would make a query per row, and this test would count them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotations.services.categories import category_create
from annotations.services.review import suggestion_accept
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection.models import Image, InspectionRun, ModelVersion
from tests.annotations.test_datasets import add_image, box, label

pytestmark = pytest.mark.django_db


def _get(client, url, params=None) -> tuple[int, object]:
    with CaptureQueriesContext(connection) as queries:
        r = client.get(url, params or {})
    assert r.status_code == 200, r.content
    return len(queries.captured_queries), r.json()


def _fill(team, tmp_path, start: int, count: int, models, dent) -> list[Image]:
    """``count`` images with a reference, two labels, a pending suggestion of each model at
    the same place (one queue item with an echo) and an accepted one."""
    project, admin = team["project"], team["admin"]
    anomaly, detector = models
    images = []
    for n in range(start, start + count):
        image = add_image(project, admin, tmp_path, f"part-{n}.png", size=(200, 100))
        # as the alignment job leaves a paired image (the queue links its reference's files)
        Image.objects.filter(pk=image.pk).update(
            reference_pyramid_path=f"x/{n}.dzi",
            difference_path=f"x/{n}.png",
            alignment={"stamp": f"s{n}"},
        )
        label(image, "crack", box(5, 5, 10, 10))
        label(image, "dent", box(30, 5, 10, 10))
        made = {}
        for version, category in ((anomaly, None), (detector, "dent")):
            run = InspectionRun.objects.create(
                project=project, model_version=version, image_ids=[image.pk]
            )
            made[version.kind] = suggestions_store(
                image=image,
                run=run,
                model_version=version,
                suggestions=[
                    SuggestionIn(box=(60, 20, 30, 30), score=0.8, category=category),
                    SuggestionIn(box=(150, 60, 20, 20), score=0.5, category=category),
                ],
            )
        suggestion_accept(user=team["reviewer"], suggestion=made["anomaly"][1], category_id=dent.pk)
        images.append(image)
    return images


def test_lists_make_the_same_queries_for_many_rows_as_for_few(team, tmp_path, client_for):
    project = team["project"]
    dent = category_create(user=team["admin"], project=project, name="dent")
    # models as training leaves them: every training image's id, metrics with curves
    anomaly, detector = (
        ModelVersion.objects.create(
            project=project,
            number=1,
            kind=kind,
            architecture=arch,
            status="ready",
            image_ids=list(range(5000)),
            metrics={"calibration": {"expected_share": [[0.1 * t, 0.5] for t in range(100)]}},
        )
        for kind, arch in (("anomaly", "padim"), ("detector", "ppyoloe-sod-s"))
    )
    first = _fill(team, tmp_path, 0, 2, (anomaly, detector), dent)
    client = client_for(team["reviewer"])
    pid = project.pk
    lists = {
        "grid": (f"/api/projects/{pid}/images/", {}),
        "grid, filtered": (f"/api/projects/{pid}/images/", {"state": "labeled"}),
        "queue": (f"/api/projects/{pid}/suggestions/", {"status": "pending"}),
        "queue, everything": (f"/api/projects/{pid}/suggestions/", {}),
        "labels": (f"/api/projects/{pid}/annotations/", {}),
        "overlay": (f"/api/images/{first[0].pk}/suggestions/", {}),
        "image labels": (f"/api/images/{first[0].pk}/annotations/", {}),
    }
    few = {name: _get(client, url, params) for name, (url, params) in lists.items()}
    _fill(team, tmp_path, 2, 10, (anomaly, detector), dent)
    many = {name: _get(client, url, params) for name, (url, params) in lists.items()}

    assert {name: n for name, (n, _) in many.items()} == {name: n for name, (n, _) in few.items()}
    assert few["queue"][1]["count"] == 2 and many["queue"][1]["count"] == 12
    assert (
        len(many["grid"][1]["results"]) == 12 and len(many["labels"][1]["results"]) == 36
    )  # 2 drawn + 1 accepted each
    # what the queue shows of the related rows is there
    item = next(s for s in many["queue"][1]["results"] if s["image"] == first[0].pk)
    assert (item["image_name"], item["image_width"], item["model"], item["source"]) == (
        "part-0.png",
        200,
        "padim v1",
        "anomaly",
    )
    assert item["reference"]["dzi"].endswith(f"/api/images/{first[0].pk}/reference/image.dzi?v=s0")
    assert [(e["source"], e["model"], e["category_name"]) for e in item["also"]] == [
        ("detector", "ppyoloe-sod-s v1", "dent")
    ]
    decided = [s for s in many["queue, everything"][1]["results"] if s["status"] == "accepted"]
    assert len(decided) == 12 and {s["decided_by"] for s in decided} == {"rita"}
