"""The review loop's rules: who decides, races, records, image status, model versions, figures."""

import threading

import pytest
from django.db import connection

from annotations.figures import run_figures
from annotations.models import Annotation, Review, Suggestion
from annotations.services.categories import category_create
from annotations.services.suggestions import suggestions_store
from inspection.models import Image, InspectionRun, ModelVersion
from tests.conftest import image_bytes
from workers.anomaly.regions import Region

pytestmark = pytest.mark.django_db


def region(box, polygon, peak_score, mean_score=0.6, area=100.0) -> Region:
    """A region as the anomaly engine returns it (box in COCO order)."""
    return Region(box=box, polygon=polygon, area=area, peak_score=peak_score, mean_score=mean_score)


def square(x, y, s):
    return [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]


@pytest.fixture
def loop(team, client_for, upload):
    project = team["project"]
    r = client_for(team["admin"]).post(
        f"/api/projects/{project.pk}/images/",
        {
            "files": [
                upload("a.png", image_bytes(size=(200, 100), seed=1)),
                upload("b.png", image_bytes(size=(200, 100), seed=2)),
            ]
        },
        format="multipart",
    )
    images = [Image.objects.get(pk=f["image_id"]) for f in r.json()["files"]]
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(
        project=project, model_version=version, image_ids=[i.pk for i in images]
    )
    made = suggestions_store(
        image=images[0],
        run=run,
        model_version=version,
        regions=[
            region([10, 10, 20, 20], square(10, 10, 20), 0.9),
            region([100, 50, 10, 10], square(100, 50, 10), 0.7),
        ],
    )
    crack = category_create(user=team["admin"], project=project, name="crack")
    return {
        "images": images,
        "version": version,
        "run": run,
        "suggestions": made,
        "crack": crack,
        **team,
    }


def test_rerun_never_duplicates(loop):
    again = suggestions_store(
        image=loop["images"][0],
        run=loop["run"],
        model_version=loop["version"],
        regions=[region([1, 1, 5, 5], square(1, 1, 5), 0.99)],
    )
    assert again == [] and Suggestion.objects.filter(image=loop["images"][0]).count() == 2


def test_rerun_with_new_settings_replaces_what_nobody_decided(loop, client_for):
    image, version = loop["images"][0], loop["version"]
    accepted, pending = loop["suggestions"]  # at (10, 10) and (100, 50)
    r = client_for(loop["reviewer"]).post(
        f"/api/suggestions/{accepted.pk}/accept/", {"category": loop["crack"].pk}, format="json"
    )
    assert r.status_code == 201
    rerun = InspectionRun.objects.create(
        project=loop["project"], model_version=version, image_ids=[image.pk],
        params={"threshold": 0.7, "specular_mask": True},
    )  # fmt: skip
    made = suggestions_store(
        image=image,
        run=rerun,
        model_version=version,
        regions=[
            region([10, 10, 21, 20], square(10, 10, 21), 0.95),  # the accepted place again
            region([150, 20, 8, 8], square(150, 20, 8), 0.8),  # new
        ],
    )
    assert [s.geometry["points"][0] for s in made] == [[150, 20]]
    left = Suggestion.objects.filter(image=image).order_by("id")
    assert [(s.pk, s.status) for s in left] == [(accepted.pk, "accepted"), (made[0].pk, "pending")]
    assert not Suggestion.objects.filter(pk=pending.pk).exists()
    # the same settings again: nothing new
    again = InspectionRun.objects.create(
        project=loop["project"], model_version=version, image_ids=[image.pk],
        params={"specular_mask": True, "threshold": 0.7, "min_area": 64},
    )  # fmt: skip
    regions = [region([150, 20, 8, 8], square(150, 20, 8), 0.8)]
    assert suggestions_store(image=image, run=again, model_version=version, regions=regions) == []


def test_queue_ordered_by_score_with_filters(loop, client_for):
    url = f"/api/projects/{loop['project'].pk}/suggestions/"
    got = client_for(loop["reviewer"]).get(url, {"status": "pending"}).json()["results"]
    assert [s["score"] for s in got] == [0.9, 0.7]
    assert [
        s["score"]
        for s in client_for(loop["reviewer"]).get(url, {"score_min": 0.8}).json()["results"]
    ] == [0.9]
    assert client_for(loop["outsider"]).get(url).status_code == 404


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


def test_deleting_a_model_version_keeps_its_labels(loop, client_for):
    s = loop["suggestions"][0]
    client_for(loop["reviewer"]).post(
        f"/api/suggestions/{s.pk}/accept/", {"category": loop["crack"].pk}, format="json"
    )
    assert (
        client_for(loop["reviewer"]).delete(f"/api/models/{loop['version'].pk}/").status_code == 403
    )
    assert client_for(loop["admin"]).delete(f"/api/models/{loop['version'].pk}/").status_code == 204
    ann = Annotation.objects.get(suggestion=s)
    assert ann.category == loop["crack"] and ann.source == "suggestion"
    s.refresh_from_db()
    assert s.model_version is None and s.status == "accepted"


def test_training_needs_normal_images_and_an_admin(loop, client_for):
    url = f"/api/projects/{loop['project'].pk}/models/"
    assert (
        client_for(loop["reviewer"]).post(url, {"architecture": "padim"}, format="json").status_code
        == 403
    )
    r = client_for(loop["admin"]).post(url, {"architecture": "padim"}, format="json")
    assert r.status_code == 400 and "at least 2 normal" in r.json()["error"]
    Image.objects.filter(project=loop["project"]).update(is_normal=True)
    r = client_for(loop["admin"]).post(
        url, {"architecture": "padim", "params": {"input_size": 64}}, format="json"
    )
    assert r.status_code == 202 and r.json()["number"] == 2 and r.json()["status"] == "training"
    r = client_for(loop["admin"]).post(
        url, {"architecture": "padim", "params": {"bogus": 1}}, format="json"
    )
    assert r.status_code == 400 and "bogus" in r.json()["error"]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"scale": 0}, "scale is the tiles' resolution"),
        ({"scale": 5}, "scale is the tiles' resolution"),
        ({"scale": "1"}, "scale is the tiles' resolution"),
        ({"scale": True}, "scale is the tiles' resolution"),
        ({"scale": 1, "tile_overlap": 0.95}, "tile_overlap"),
        ({"scale": 1, "coarse_pass": "yes"}, "coarse_pass is true or false"),
        ({"coarse_pass": True}, "set scale too"),
    ],
)
def test_tile_parameters_are_checked_before_training(loop, client_for, params, says):
    Image.objects.filter(project=loop["project"]).update(is_normal=True)
    url = f"/api/projects/{loop['project'].pk}/models/"
    r = client_for(loop["admin"]).post(url, {"architecture": "padim", "params": params}, "json")
    assert r.status_code == 400 and says in r.json()["error"]
    assert ModelVersion.objects.filter(project=loop["project"]).count() == 1  # nothing queued


def test_tiled_training_is_stored_and_shown(loop, client, client_for):
    Image.objects.filter(project=loop["project"]).update(is_normal=True)
    url = f"/api/projects/{loop['project'].pk}/models/"
    params = {"input_size": 128, "scale": 0.5, "tile_overlap": 0.1, "coarse_pass": True}
    r = client_for(loop["admin"]).post(url, {"architecture": "padim", "params": params}, "json")
    assert r.status_code == 202
    assert r.json()["params"] == {"model": "padim", **params}
    client.force_login(loop["admin"])
    page = client.get(f"/projects/{loop['project'].pk}/models/").content.decode()
    assert "tiles of 128 px at scale 0.5 + whole-image pass" in page
    assert "whole image at 256 px" in page  # the fixture's version, trained before
    # 200 px images are small enough to be seen whole: that is what the form proposes
    assert "200 px on their long side (median)" in page and "small enough" in page
    assert '<option value="" selected>' in page


def test_inspection_needs_a_ready_model(loop, client_for):
    url = f"/api/projects/{loop['project'].pk}/runs/"
    ModelVersion.objects.update(is_active=False)
    r = client_for(loop["reviewer"]).post(url, {"scope": "all"}, format="json")
    assert r.status_code == 400 and "train one first" in r.json()["error"]
    ModelVersion.objects.update(is_active=True)
    assert (
        client_for(loop["annotator"]).post(url, {"scope": "all"}, format="json").status_code == 403
    )
    r = client_for(loop["reviewer"]).post(
        url, {"scope": "selected", "image_ids": [999999]}, format="json"
    )
    assert r.status_code == 400
    r = client_for(loop["reviewer"]).post(url, {"scope": "all"}, format="json")
    assert (
        r.status_code == 202
        and r.json()["image_count"] == 2
        and r.json()["job_detail"]["queue"] == "gpu"
    )


def test_run_figures_against_ground_truth(loop, client_for):
    image = loop["images"][0]
    other = loop["images"][1]
    Image.objects.filter(pk=other.pk).update(source_group="test/good")
    gt = {"type": "polygon", "points": square(12, 12, 10)}
    Annotation.objects.create(
        image=image, category=loop["crack"], kind="polygon", geometry=gt, source="ground_truth"
    )
    Annotation.objects.create(
        image=image,
        category=loop["crack"],
        kind="polygon",
        geometry={"type": "polygon", "points": square(150, 10, 5)},
        source="ground_truth",
    )
    suggestions_store(
        image=other,
        run=loop["run"],
        model_version=loop["version"],
        regions=[region([1, 1, 5, 5], square(1, 1, 5), 0.8)],
    )
    fig = run_figures(loop["run"], threshold=0.5)
    assert (fig.gt_regions, fig.normal_images, fig.suggestions) == (2, 1, 3)
    assert fig.region_recall == 0.5  # the 0.9 suggestion covers the first region; none the second
    assert fig.precision_gt == round(
        1 / 3, 4
    )  # 0.9 true; 0.7 and the one on the normal image false
    assert fig.false_per_normal_image == 1.0
    at_085 = next(p for p in fig.curve if p["threshold"] == 0.9)
    assert at_085["precision"] == 1.0 and at_085["recall"] == 0.5
    body = client_for(loop["annotator"]).get(f"/api/runs/{loop['run'].pk}/").json()
    assert body["figures"]["region_recall"] == 0.5
    r = client_for(loop["annotator"]).get(f"/api/runs/{loop['run'].pk}/", {"threshold": "high"})
    assert r.status_code == 400 and "threshold" in r.json()["error"]


def test_models_and_run_pages(loop, client, client_for):
    client.force_login(loop["annotator"])
    page = client.get(f"/projects/{loop['project'].pk}/models/").content.decode()
    assert (
        "padim" in page and "active" in page and "Train on" not in page
    )  # annotators do not train
    client.force_login(loop["admin"])
    page = client.get(f"/projects/{loop['project'].pk}/models/").content.decode()
    assert "Train on 0 normal images" in page and f"/runs/{loop['run'].pk}/" in page
    client_for(loop["reviewer"]).post(
        f"/api/suggestions/{loop['suggestions'][0].pk}/accept/",
        {"category": loop["crack"].pk},
        format="json",
    )
    page = client.get(f"/runs/{loop['run'].pk}/").content.decode()
    assert "1 / 0 / 1" in page and "1.000" in page  # accepted / rejected / pending, precision
    assert "has ground truth" in page
    client.force_login(loop["outsider"])
    assert client.get(f"/runs/{loop['run'].pk}/").status_code == 404
    client.force_login(loop["annotator"])
    assert client.get(f"/projects/{loop['project'].pk}/review/").status_code == 403


def test_auto_inspect_on_upload(loop, client_for, upload):
    r = client_for(loop["admin"]).patch(
        f"/api/projects/{loop['project'].pk}/", {"auto_inspect": True}, format="json"
    )
    assert r.status_code == 200 and r.json()["auto_inspect"] is True
    r = client_for(loop["reviewer"]).post(
        f"/api/projects/{loop['project'].pk}/images/",
        {"files": [upload("new.png", image_bytes(seed=77))]},
        format="multipart",
    )
    run = InspectionRun.objects.get(pk=r.json()["inspection_run"])
    assert (
        run.image_ids == [r.json()["files"][0]["image_id"]] and run.model_version == loop["version"]
    )
    assert run.job.kind == "anomaly_inspect"


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


def test_inspection_settings_on_the_models_and_run_pages(loop, client, client_for):
    from inspection.services.projects import project_update

    project = loop["project"]
    client.force_login(loop["reviewer"])
    page = client.get(f"/projects/{project.pk}/models/").content.decode()
    assert "Run inspection" in page and "inspection-form" not in page  # admins only
    project_update(user=loop["admin"], project=project, inspection={"threshold": 0.8})
    client.force_login(loop["admin"])
    page = client.get(f"/projects/{project.pk}/models/").content.decode()
    assert "(changed)" in page and 'name="threshold" type="number"' in page
    assert 'value="0.8"' in page and 'value="64"' in page
    loop["run"].params = {**project.inspection, "min_area": 64, "max_regions": 20}
    loop["run"].params |= {"specular_mask": True, "specular_v_min": 230, "specular_s_max": 30}
    loop["run"].save()
    page = client.get(f"/runs/{loop['run'].pk}/").content.decode()
    assert "calibrated score 0.8 up, at least 64 px, at most 20 per image" in page
    assert "specular mask on (value &gt; 230, saturation &lt; 30)" in page
    # its figures count from the score it suggested from, unless asked otherwise
    body = client_for(loop["admin"]).get(f"/api/runs/{loop['run'].pk}/").json()
    assert body["params"]["threshold"] == 0.8 and body["figures"]["threshold"] == 0.8
    body = client_for(loop["admin"]).get(f"/api/runs/{loop['run'].pk}/", {"threshold": 0.5})
    assert body.json()["figures"]["threshold"] == 0.5
