"""Detectors under review: a detection run judged per category on its reviewed images, two
versions side by side, one queue item where the anomaly model and the detector found the same
defect."""

from __future__ import annotations

import pytest

from annotations.services.categories import category_create
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection.models import InspectionRun, ModelVersion
from tests.annotations.test_datasets import add_image, box
from tests.annotations.test_detectors import frozen

pytestmark = pytest.mark.django_db


def test_a_detection_run_is_judged_per_category_on_its_reviewed_images(
    team, tmp_path, client_for, client
):
    """Reviewers' decisions are the truth on the images they finished: a box accepted with its
    category is found, one accepted as another category is a false box of the predicted one
    and leaves the chosen one's label unfound, a rejected box is false, a label drawn by hand
    is a miss; an image not reviewed yet does not count."""
    project = team["project"]
    a = add_image(project, team["admin"], tmp_path, "a.png", size=(200, 100))
    b = add_image(project, team["admin"], tmp_path, "b.png", size=(200, 100))
    crack = category_create(user=team["admin"], project=project, name="crack")
    dent = category_create(user=team["admin"], project=project, name="dent")
    model = ModelVersion.objects.create(
        project=project, number=1, kind="detector", architecture="ppyoloe-sod-s", status="ready"
    )
    run = InspectionRun.objects.create(
        project=project,
        model_version=model,
        image_ids=[a.pk, b.pk],
        params={"score_threshold": 0.3},
    )
    s1, s2, s3 = suggestions_store(
        image=a,
        run=run,
        model_version=model,
        suggestions=[
            SuggestionIn(box=(10, 10, 20, 20), score=0.9, category="crack"),
            SuggestionIn(box=(50, 50, 10, 10), score=0.8, category="dent"),
            SuggestionIn(box=(70, 10, 10, 10), score=0.4, category="crack"),
        ],
    )
    suggestions_store(
        image=b,
        run=run,
        model_version=model,
        suggestions=[SuggestionIn(box=(10, 10, 20, 20), score=0.7, category="crack")],
    )
    reviewer = client_for(team["reviewer"])
    url = f"/api/runs/{run.pk}/"
    empty = reviewer.get(url).json()["per_category"]
    assert empty["reviewed_images"] == 0 and empty["categories"] == []

    reviewer.post(f"/api/suggestions/{s1.pk}/accept/", {"category": crack.pk}, format="json")
    reviewer.post(f"/api/suggestions/{s2.pk}/reject/", {}, format="json")
    reviewer.post(f"/api/suggestions/{s3.pk}/accept/", {"category": dent.pk}, format="json")
    r = reviewer.post(
        f"/api/images/{a.pk}/annotations/",
        {"category": dent.pk, "geometry": box(150, 40, 10, 10)},
        format="json",
    )
    assert r.status_code == 201 and r.json()["review_status"] == "pending"
    assert (
        client_for(team["admin"])
        .post(f"/api/annotations/{r.json()['id']}/approve/", {}, format="json")
        .status_code
        == 200
    )
    a.refresh_from_db()
    assert a.status == "reviewed"

    got = reviewer.get(url).json()["per_category"]
    assert got["reviewed_images"] == 1 and got["threshold"] == 0.3
    rows = {c["name"]: c for c in got["categories"]}
    assert {k: rows["crack"][k] for k in ("labels", "suggestions", "true_at_threshold")} == {
        "labels": 1,
        "suggestions": 2,  # s1, and s3 which the reviewer made a dent (b is not reviewed)
        "true_at_threshold": 1,
    }
    assert (rows["crack"]["precision"], rows["crack"]["recall"], rows["crack"]["ap50"]) == (
        0.5,
        1.0,
        1.0,  # its best box is right: full precision up to full recall
    )
    assert {k: rows["dent"][k] for k in ("labels", "suggestions", "true_at_threshold")} == {
        "labels": 2,  # s3 as the reviewer chose, and the one drawn by hand
        "suggestions": 1,
        "true_at_threshold": 0,
    }
    assert (rows["dent"]["precision"], rows["dent"]["recall"], rows["dent"]["ap50"]) == (
        0.0,
        0.0,
        0.0,
    )
    assert got["map50"] == 0.5
    assert rows["crack"]["curve"][0] == {"recall": 0.0, "precision": 1.0}
    # from 0.95 the crack box at 0.9 no longer counts
    high = reviewer.get(url, {"threshold": 0.95}).json()["per_category"]
    assert {c["name"]: c["true_at_threshold"] for c in high["categories"]} == {
        "crack": 0,
        "dent": 0,
    }

    client.force_login(team["reviewer"])
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "1 of this run's images is reviewed" in page
    assert 'data-figure="map50">0.500' in page
    assert '<tr data-category="crack">' in page and "<polyline" in page


def test_two_detector_versions_side_by_side(team, tmp_path, client):
    project = team["project"]
    client.force_login(team["annotator"])
    url = f"/projects/{project.pk}/models/compare/"
    assert "Comparing needs two detector versions" in client.get(url).content.decode()
    v1 = frozen(team, tmp_path)
    common = {"backbone": "lite0", "input_size": 640, "slice": False, "batch_size": 4}
    ModelVersion.objects.create(
        project=project,
        number=1,
        kind="detector",
        architecture="ppyoloe-sod-lite0",
        status="ready",
        params={**common, "epochs": 10, "dataset_version": v1.pk, "dataset_number": 1},
        metrics={
            "map50": 0.5,
            "map": 0.2,
            "ap_small": -1,
            "seconds": 60,
            "epochs": 10,
            "per_class_ap50": {"dent": 0.4, "scratch": 0.6},
        },
    )
    ModelVersion.objects.create(
        project=project,
        number=2,
        kind="detector",
        architecture="ppyoloe-sod-lite0",
        status="ready",
        is_active=True,
        params={**common, "epochs": 30, "dataset_version": v1.pk, "dataset_number": 1},
        metrics={
            "map50": 0.65,
            "map": 0.25,
            "ap_small": 0.1,
            "seconds": 180,
            "epochs": 30,
            "per_class_ap50": {"dent": 0.7, "scratch": 0.6, "hole": -1},
        },
    )
    assert "compare-link" in client.get(f"/projects/{project.pk}/models/").content.decode()
    page = client.get(url).content.decode()  # the two newest by default
    assert '<tr class="differs"><td>Epochs</td><td>10</td><td>30</td>' in page
    assert "<tr><td>Backbone</td><td>lite0</td><td>lite0</td>" in page
    assert '<tr data-figure="mAP50"><td>mAP50</td>' in page and "+0.150" in page
    assert '<tr data-category="dent"><td>dent</td>' in page and "+0.300" in page
    # no AP for a category without val labels, and no difference drawn from it
    hole = page.split('<tr data-category="hole">')[1].split("</tr>")[0]
    assert hole.count("—") == 3
    assert "compare-warning" not in page  # same dataset version: same val images
    swapped = client.get(url, {"a": 2, "b": 1}).content.decode()
    assert "-0.150" in swapped
    assert "<td>Slices at full resolution</td><td>no</td><td>no</td>" in page
    assert "<tr><td>Networks averaged</td><td>—</td><td>—</td>" in page  # not PP-YOLOE-SOD's
    # two-stage change detectors: one trained before networks were a choice (one network)
    for number, extra in ((4, {}), (5, {"networks": 2})):
        ModelVersion.objects.create(
            project=project,
            number=number,
            kind="detector",
            architecture="two-stage-change",
            status="ready",
            params={"reference": "two-stage", "epochs": 30, "dataset_version": v1.pk,
                    "dataset_number": 1, **extra},
            metrics={"map50": 0.9, "map": 0.7, "epochs": 30},
        )  # fmt: skip
    pairs = client.get(url, {"a": 4, "b": 5}).content.decode()
    assert '<tr class="differs"><td>Networks averaged</td><td>1</td><td>2</td>' in pairs
    assert "<tr><td>Compared with the reference</td><td>two-stage</td><td>two-stage</td>" in pairs
    ModelVersion.objects.create(
        project=project,
        number=3,
        kind="detector",
        architecture="ppyoloe-sod-lite0",
        status="training",
        params={**common, "epochs": 30, "dataset_version": v1.pk + 1, "dataset_number": 2},
    )
    newer = client.get(url, {"a": 1, "b": 3}).content.decode()
    assert "different dataset versions (v1 and v2)" in newer
    assert client.get(url, {"a": 7}).status_code == 404
    assert client.get(url, {"a": "x"}).status_code == 404
    client.force_login(team["outsider"])
    assert client.get(url).status_code == 404


def test_an_anomaly_region_and_a_detector_box_at_one_place_are_one_queue_item(
    team, tmp_path, client_for
):
    """Both models found the same defect: one item, with both sources, the detector's category
    preselected; deciding it decides both suggestions (a Review row each, one label)."""
    from annotations.models import Annotation, Review

    project = team["project"]
    image = add_image(project, team["admin"], tmp_path, "a.png", size=(200, 100))
    dent = category_create(user=team["admin"], project=project, name="dent")
    category_create(user=team["admin"], project=project, name="scratch")
    padim = ModelVersion.objects.create(
        project=project, number=1, kind="anomaly", architecture="padim", status="ready"
    )
    detector = ModelVersion.objects.create(
        project=project, number=1, kind="detector", architecture="ppyoloe-sod-s", status="ready"
    )
    inspect = InspectionRun.objects.create(
        project=project, model_version=padim, image_ids=[image.pk]
    )
    blob, elsewhere, third = suggestions_store(
        image=image,
        run=inspect,
        model_version=padim,
        suggestions=[
            SuggestionIn(
                box=(10, 10, 40, 40), score=0.7, polygon=[[10, 10], [50, 10], [50, 50], [10, 50]]
            ),
            SuggestionIn(box=(150, 50, 20, 20), score=0.6),
            SuggestionIn(box=(60, 60, 30, 30), score=0.55),
        ],
    )
    detect = InspectionRun.objects.create(
        project=project, model_version=detector, image_ids=[image.pk]
    )
    inside, alone, over_third = suggestions_store(
        image=image,
        run=detect,
        model_version=detector,
        suggestions=[
            SuggestionIn(box=(15, 15, 30, 30), score=0.8, category="dent", category_score=0.8),
            SuggestionIn(box=(100, 10, 10, 10), score=0.9, category="scratch", category_score=0.9),
            SuggestionIn(box=(62, 62, 30, 30), score=0.4, category="dent", category_score=0.4),
        ],
    )
    assert (inside.same_as, alone.same_as, over_third.same_as) == (blob, None, third)
    blob.refresh_from_db()  # the unclassified region takes the detector's category
    assert (blob.category, blob.proposed_category, blob.category_score) == (dent, dent, 0.8)

    reviewer = client_for(team["reviewer"])
    queue = f"/api/projects/{project.pk}/suggestions/"

    def ids(**filters):
        got = reviewer.get(queue, {"status": "pending", **filters}).json()["results"]
        return [s["id"] for s in got]

    assert ids() == [alone.pk, blob.pk, elsewhere.pk, third.pk]
    item = reviewer.get(queue, {"status": "pending"}).json()["results"][1]
    assert item["category_name"] == "dent" and item["also"] == [
        {
            "id": inside.pk,
            "source": "detector",
            "model": "ppyoloe-sod-s v1",
            "score": 0.8,
            "category_name": "dent",
            "status": "pending",
        }
    ]
    # the filters about model output see an item through its echo too
    assert ids(source="detector") == [alone.pk, blob.pk, third.pk]
    assert ids(run=detect.pk) == [alone.pk, blob.pk, third.pk]
    assert ids(model_version=detector.pk) == [alone.pk, blob.pk, third.pk]
    assert ids(source="anomaly") == [blob.pk, elsewhere.pk, third.pk]
    overlay = reviewer.get(f"/api/images/{image.pk}/suggestions/").json()
    assert inside.pk not in [s["id"] for s in overlay]

    r = reviewer.post(f"/api/suggestions/{blob.pk}/accept/", {"category": dent.pk}, format="json")
    assert r.status_code == 201, r.content
    for s in (blob, inside):
        s.refresh_from_db()
        assert (s.status, s.category, s.decided_by) == ("accepted", dent, team["reviewer"])
    assert Annotation.objects.filter(image=image).count() == 1
    assert sorted(
        Review.objects.filter(action="accept").values_list("suggestion", flat=True)
    ) == sorted([blob.pk, inside.pk])
    r = reviewer.post(
        f"/api/suggestions/{third.pk}/reject/", {"reason": "reflection"}, format="json"
    )
    assert r.status_code == 200, r.content
    over_third.refresh_from_db()
    assert (over_third.status, over_third.reject_reason) == ("rejected", "reflection")
    assert ids() == [alone.pk, elsewhere.pk]
