"""The review loop's rules: who decides, races, records, image status, verdicts and normal images."""

import threading

import pytest
from django.db import connection

from annotations.models import Annotation, Review, Suggestion
from inspection.models import Image

pytestmark = pytest.mark.django_db


def test_queue_ordered_by_score_with_filters(loop, client_for):
    url = f"/api/projects/{loop['project'].pk}/suggestions/"
    got = client_for(loop["reviewer"]).get(url, {"status": "pending"}).json()["results"]
    assert [s["score"] for s in got] == [0.9, 0.7]
    assert [
        s["score"]
        for s in client_for(loop["reviewer"]).get(url, {"score_min": 0.8}).json()["results"]
    ] == [0.9]
    assert client_for(loop["outsider"]).get(url).status_code == 404


def test_review_page_offers_model_run_category_and_score_menus(loop, client):
    """Issue #17: after a second model version the queue mixed both; the page's menus pick a
    version, a run, a category or a lowest score (the API filters behind them are tested
    above), and say how many suggestions wait under each."""
    project, version, run = loop["project"], loop["version"], loop["run"]
    client.force_login(loop["reviewer"])
    html = client.get(f"/projects/{project.pk}/review/").content.decode()
    assert f'<option value="{version.pk}">anomaly v1 (padim) · 2 pending</option>' in html
    assert f'<option value="{run.pk}">run {run.pk} · anomaly v1 · ' in html
    assert f'<option value="{loop["crack"].pk}">crack</option>' in html
    # chosen filters stay selected, reach the page's script, and others ride along hidden
    html = client.get(
        f"/projects/{project.pk}/review/",
        {"model_version": version.pk, "score_min": "0.8", "image": loop["images"][0].pk},
    ).content.decode()
    assert f'<option value="{version.pk}" selected>' in html
    assert 'name="score_min" type="number" min="0" max="1" step="0.05" value="0.8"' in html
    assert f'<input type="hidden" name="image" value="{loop["images"][0].pk}">' in html
    assert f'"model_version": "{version.pk}"' in html and '"score_min": "0.8"' in html
    # decided suggestions leave the counts
    Suggestion.objects.filter(pk=loop["suggestions"][0].pk).update(status="rejected")
    html = client.get(f"/projects/{project.pk}/review/").content.decode()
    assert "anomaly v1 (padim) · 1 pending" in html


def test_accept_creates_a_label_that_points_back(loop, client_for):
    s = loop["suggestions"][0]
    r = client_for(loop["reviewer"]).post(
        f"/api/suggestions/{s.pk}/accept/", {"category": loop["crack"].pk}, format="json"
    )
    assert r.status_code == 201, r.content
    ann = Annotation.objects.get(pk=r.json()["id"])
    assert (ann.suggestion, ann.source, ann.review_status, ann.category) == (
        s,
        "suggestion",
        "approved",
        loop["crack"],
    )
    s.refresh_from_db()
    assert s.status == "accepted" and s.decided_by == loop["reviewer"]
    rev = Review.objects.get(suggestion=s)
    assert rev.action == "accept" and rev.geometry_before == rev.geometry_after == s.geometry
    # decided twice -> conflict
    r = client_for(loop["admin"]).post(f"/api/suggestions/{s.pk}/reject/", {}, format="json")
    assert r.status_code == 409 and "already accepted by rita" in r.json()["error"]


def test_edit_then_accept_records_before_and_after(loop, client_for):
    s = loop["suggestions"][0]
    edited = {"type": "box", "x": 12, "y": 12, "w": 10, "h": 10}
    r = client_for(loop["admin"]).post(
        f"/api/suggestions/{s.pk}/accept/",
        {"category": loop["crack"].pk, "geometry": edited},
        format="json",
    )
    assert r.status_code == 201 and r.json()["geometry"] == edited
    rev = Review.objects.get(suggestion=s)
    assert (
        rev.action == "edit_accept"
        and rev.geometry_before["type"] == "polygon"
        and rev.geometry_after == edited
    )
    history = client_for(loop["annotator"]).get(f"/api/images/{s.image_id}/reviews/").json()
    assert [(h["action"], h["decided_by"]) for h in history] == [("edit_accept", "padmin")]


def test_reject_with_reason_and_who_may_decide(loop, client_for):
    s = loop["suggestions"][1]
    r = client_for(loop["annotator"]).post(
        f"/api/suggestions/{s.pk}/reject/", {"reason": "reflection"}, format="json"
    )
    assert r.status_code == 403
    r = client_for(loop["reviewer"]).post(
        f"/api/suggestions/{s.pk}/reject/", {"reason": "bored"}, format="json"
    )
    assert r.status_code == 400
    r = client_for(loop["reviewer"]).post(
        f"/api/suggestions/{s.pk}/reject/", {"reason": "reflection"}, format="json"
    )
    assert (
        r.status_code == 200
        and r.json()["status"] == "rejected"
        and r.json()["reject_reason"] == "reflection"
    )
    assert Review.objects.get(suggestion=s).reason == "reflection"


@pytest.mark.django_db(transaction=True)
def test_two_reviewers_at_once_one_wins(loop, client_for):
    """Two threads decide the same suggestion at the same moment: one 2xx, one 409."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no row locks; the race is checked on PostgreSQL (CI)")
    s = loop["suggestions"][0]
    barrier = threading.Barrier(2)
    codes = []

    def decide(user, action):
        barrier.wait()
        body = {"category": loop["crack"].pk} if action == "accept" else {"reason": "false_alarm"}
        codes.append(
            client_for(user)
            .post(f"/api/suggestions/{s.pk}/{action}/", body, format="json")
            .status_code
        )
        connection.close()

    threads = [
        threading.Thread(target=decide, args=(loop["reviewer"], "accept")),
        threading.Thread(target=decide, args=(loop["admin"], "reject")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) in ([200, 409], [201, 409])
    assert Review.objects.filter(suggestion=s).count() == 1


def test_labels_are_approved_by_someone_else(loop, client_for):
    image = loop["images"][1]
    r = client_for(loop["reviewer"]).post(
        f"/api/images/{image.pk}/annotations/",
        {"category": loop["crack"].pk, "geometry": {"type": "box", "x": 1, "y": 1, "w": 5, "h": 5}},
        format="json",
    )
    own = r.json()["id"]
    assert (
        client_for(loop["reviewer"]).post(f"/api/annotations/{own}/approve/").status_code == 400
    )  # own label
    pending = (
        client_for(loop["admin"])
        .get(f"/api/projects/{loop['project'].pk}/pending-labels/")
        .json()["results"]
    )
    assert [p["id"] for p in pending] == [own]
    url = f"/api/projects/{loop['project'].pk}/pending-labels/"
    assert (
        client_for(loop["admin"]).get(url, {"image": loop["images"][0].pk}).json()["results"] == []
    )
    r = client_for(loop["admin"]).post(f"/api/annotations/{own}/return/", {}, format="json")
    assert r.status_code == 400 and "Say what should change" in r.json()["error"]
    r = client_for(loop["admin"]).post(
        f"/api/annotations/{own}/return/", {"comment": "too loose"}, format="json"
    )
    assert r.json()["review_status"] == "returned"
    # the author fixes it: it is pending again, and can then be approved by another reviewer
    current = Annotation.objects.get(pk=own)
    r = client_for(loop["reviewer"]).patch(
        f"/api/annotations/{own}/",
        {"version": current.version, "geometry": {"type": "box", "x": 1, "y": 1, "w": 4, "h": 4}},
        format="json",
    )
    assert r.status_code == 200 and r.json()["review_status"] == "pending"
    pending = client_for(loop["admin"]).get(f"/api/projects/{loop['project'].pk}/pending-labels/")
    assert [p["id"] for p in pending.json()["results"]] == [own]
    r = client_for(loop["admin"]).post(
        f"/api/annotations/{own}/approve/", {"comment": "good"}, format="json"
    )
    assert r.status_code == 200 and r.json()["review_status"] == "approved"
    assert client_for(loop["annotator"]).post(f"/api/annotations/{own}/approve/").status_code == 403
    image.refresh_from_db()
    assert image.status == "reviewed"
    # deciding it again is a conflict that shows the label as it is now
    r = client_for(loop["admin"]).post(
        f"/api/annotations/{own}/return/", {"comment": "again"}, format="json"
    )
    assert r.status_code == 409 and "already approved" in r.json()["error"]
    assert r.json()["current"]["id"] == own and r.json()["current"]["review_status"] == "approved"


def test_a_confirmed_defect_clears_ok_and_normal_but_keeps_a_request_for_review(loop, client_for):
    image = loop["images"][0]
    first, second = loop["suggestions"]
    client_for(loop["annotator"]).post(
        f"/api/images/{image.pk}/verdict/", {"verdict": "needs_review"}, format="json"
    )
    client_for(loop["reviewer"]).post(
        f"/api/suggestions/{first.pk}/accept/", {"category": loop["crack"].pk}, format="json"
    )
    image.refresh_from_db()
    assert image.verdict == "needs_review" and not image.is_normal  # a defect agrees with it
    Image.objects.filter(pk=image.pk).update(verdict="ok", verdict_by=loop["reviewer"])
    Image.objects.filter(pk=image.pk).update(is_normal=True)
    client_for(loop["reviewer"]).post(
        f"/api/suggestions/{second.pk}/accept/", {"category": loop["crack"].pk}, format="json"
    )
    image.refresh_from_db()
    assert (image.verdict, image.verdict_by, image.is_normal) == ("", None, False)


def test_image_status_follows_the_work(loop, client_for):
    image = loop["images"][0]
    from annotations.services.image_state import image_update_status

    assert image_update_status(image=image).status == "inspected"
    for s in loop["suggestions"]:
        client_for(loop["reviewer"]).post(
            f"/api/suggestions/{s.pk}/reject/", {"reason": "false_alarm"}, format="json"
        )
    image.refresh_from_db()
    assert image.status == "reviewed"


def test_ok_verdict_by_a_reviewer_confirms_a_normal_image(loop, client_for):
    image = loop["images"][0]
    client_for(loop["annotator"]).post(
        f"/api/images/{image.pk}/verdict/", {"verdict": "ok"}, format="json"
    )
    image.refresh_from_db()
    assert not image.is_normal  # an annotator's OK is not a confirmation
    assert image.status == "inspected"  # its suggestions still wait
    client_for(loop["reviewer"]).post(
        f"/api/images/{image.pk}/verdict/", {"verdict": "ok"}, format="json"
    )
    image.refresh_from_db()
    assert image.is_normal and image.status == "reviewed"
    assert set(Suggestion.objects.filter(image=image).values_list("status", flat=True)) == {
        "rejected"
    }


def test_an_annotators_ok_is_not_a_decision(loop, client_for):
    image = loop["images"][1]  # no suggestions
    client_for(loop["annotator"]).post(
        f"/api/images/{image.pk}/verdict/", {"verdict": "ok"}, format="json"
    )
    image.refresh_from_db()
    assert image.verdict == "ok" and not image.is_normal and image.status != "reviewed"


def test_a_defect_on_a_normal_image_makes_it_not_normal(loop, client_for):
    from inspection.services.inspections import training_images

    image = loop["images"][1]
    client_for(loop["reviewer"]).post(
        f"/api/images/{image.pk}/verdict/", {"verdict": "ok"}, format="json"
    )
    image.refresh_from_db()
    assert image.is_normal and image.status == "reviewed"
    client_for(loop["annotator"]).post(
        f"/api/images/{image.pk}/annotations/",
        {"category": loop["crack"].pk, "geometry": {"type": "box", "x": 1, "y": 1, "w": 5, "h": 5}},
        format="json",
    )
    image.refresh_from_db()
    assert not image.is_normal and image.verdict == "" and image.status == "labeled"
    assert image not in training_images(loop["project"])


def test_marking_an_image_normal_is_a_reviewers_decision_with_rules(loop, client_for):
    clean, defective = loop["images"][1], loop["images"][0]
    url = f"/api/images/{clean.pk}/normal/"
    r = client_for(loop["annotator"]).post(url, {"is_normal": True}, format="json")
    assert r.status_code == 403
    r = client_for(loop["reviewer"]).post(url, {"is_normal": True}, format="json")
    assert r.status_code == 200 and r.json()["is_normal"] is True
    # a form without the field does not unmark it by omission (DRF reads a missing boolean in a
    # form as false; schemathesis found it)
    r = client_for(loop["reviewer"]).post(url, {"other": "1"}, format="multipart")
    assert r.status_code == 400 and "is_normal" in r.json()["detail"]
    r = client_for(loop["reviewer"]).post(url, {"is_normal": "false"}, format="multipart")
    assert r.status_code == 200 and r.json()["is_normal"] is False
    r = client_for(loop["reviewer"]).post(url, {"is_normal": True}, format="json")
    # the old PATCH of the flag is refused with the way to do it, not silently ignored
    r = client_for(loop["reviewer"]).patch(
        f"/api/images/{clean.pk}/", {"is_normal": False}, format="json"
    )
    assert r.status_code == 400 and "/normal/" in r.json()["error"]
    clean.refresh_from_db()
    assert clean.is_normal
    # an image with an accepted defect cannot be called normal
    client_for(loop["reviewer"]).post(
        f"/api/suggestions/{loop['suggestions'][0].pk}/accept/",
        {"category": loop["crack"].pk},
        format="json",
    )
    r = client_for(loop["reviewer"]).post(
        f"/api/images/{defective.pk}/normal/", {"is_normal": True}, format="json"
    )
    assert r.status_code == 400 and "defect labels" in r.json()["error"]
    defective.refresh_from_db()
    assert not defective.is_normal
    r = client_for(loop["admin"]).post(url, {"is_normal": False}, format="json")
    assert r.status_code == 200 and r.json()["is_normal"] is False
