"""Detector training from a dataset version: the proposal, who may train, every refused
parameter, lineage; detection runs; suggestions with categories and superseding."""

from __future__ import annotations

import pytest

from annotations.models import Suggestion
from annotations.services.categories import category_create
from annotations.services.dataset_versions import dataset_version_freeze
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection.models import InspectionRun, Job, ModelVersion
from inspection.services.projects import project_create
from tests.annotations.test_datasets import add_image, box, label

pytestmark = pytest.mark.django_db


def frozen(team, tmp_path, size=(64, 48), boxes=True):
    project, admin = team["project"], team["admin"]
    for n in range(4):
        image = add_image(project, admin, tmp_path, f"p{n}.png", size=size, split="train")
        if boxes:
            label(image, "scratch", box(5, 5, 10, 4))
            label(image, "dent", box(30, 20, 6, 6))
        else:
            image.is_normal = True
            image.save(update_fields=["is_normal"])
    add_image(project, admin, tmp_path, "v.png", size=size, split="val", is_normal=True)
    return dataset_version_freeze(user=admin, project=project)


def url(team, version, tail="detector/"):
    return f"/api/projects/{team['project'].pk}/datasets/{version.number}/{tail}"


def test_the_form_proposes_slices_for_large_photos_and_says_why(team, tmp_path, client_for):
    version = frozen(team, tmp_path, size=(2000, 1500))
    r = client_for(team["admin"]).get(url(team, version))
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["params"] == {
        "backbone": "lite0",
        "input_size": 640,
        "slice": True,
        "overlap": 0.25,
        "epochs": 80,
        "batch_size": 4,
        "reference": "none",  # no image of the version has a reference
        "rotate": False,  # only the user knows whether the parts have an up
        "negatives": 0.1,
        "transplant": False,  # no reference to copy defects along, and the user's choice
    }
    assert "2000 px on their long side" in body["reasons"][0]
    assert "8 labelled boxes" in body["reasons"][1]
    assert body["facts"]["per_category"] == {
        "dent": {"train": 4, "val": 0, "test": 0},
        "scratch": {"train": 4, "val": 0, "test": 0},
    }
    assert body["estimate_seconds"] > 0


def test_small_images_are_resized_whole(team, tmp_path, client_for):
    body = client_for(team["admin"]).get(url(team, frozen(team, tmp_path))).json()
    assert body["params"]["slice"] is False and "resized whole" in body["reasons"][0]


def test_a_smaller_input_size_makes_large_enough_photos_slices(team, tmp_path):
    """640 px photos are resized whole to the default 640 px input; asked for 416 px, they
    are over 1.5x the input and train (and predict) as slices at full resolution. The slice
    decision once stayed the default's, and shrank every photo to 0.65x without saying so."""
    from annotations.services.detectors import detector_proposal, detector_train

    version = frozen(team, tmp_path, size=(640, 480))
    default = detector_proposal(user=team["admin"], version=version)
    assert default["params"]["slice"] is False
    smaller = detector_proposal(user=team["admin"], version=version, params={"input_size": 416})
    assert smaller["params"]["slice"] is True and "416 px slices" in smaller["reasons"][0]
    model = detector_train(
        user=team["admin"], project=team["project"], version=version, params={"input_size": 416}
    )
    assert model.params["slice"] is True
    kept = detector_train(
        user=team["admin"],
        project=team["project"],
        version=version,
        params={"input_size": 416, "slice": False},  # asked for: kept
    )
    assert kept.params["slice"] is False


def test_training_a_detector_records_its_lineage_and_queues_the_job(team, tmp_path, client_for):
    version = frozen(team, tmp_path)
    r = client_for(team["admin"]).post(
        url(team, version), {"params": {"epochs": 3, "backbone": "s"}}, format="json"
    )
    assert r.status_code == 202, r.content
    model = ModelVersion.objects.get(pk=r.json()["id"])
    assert (model.kind, model.number, model.architecture) == ("detector", 1, "ppyoloe-sod-s")
    assert model.params["dataset_version"] == version.pk and model.params["dataset_number"] == 1
    assert model.params["content_hash"] == version.content_hash
    assert model.params["categories"] == ["dent", "scratch"] and model.params["epochs"] == 3
    assert len(model.image_ids) == 4  # the train split
    job = Job.objects.get(pk=model.job_id)
    assert (job.kind, job.queue, job.payload["model_version"]) == (
        "detection_train",
        "gpu",
        model.pk,
    )
    # numbered apart from the anomaly models
    again = client_for(team["admin"]).post(url(team, version), {}, format="json")
    assert ModelVersion.objects.get(pk=again.json()["id"]).number == 2


def test_who_may_train_a_detector(team, tmp_path, client_for):
    version = frozen(team, tmp_path)
    for who, code in (("outsider", 404), ("annotator", 403), ("reviewer", 403)):
        assert client_for(team[who]).post(url(team, version), {}, format="json").status_code == code
        assert client_for(team[who]).get(url(team, version)).status_code == code
    other = project_create(user=team["admin"], name="Other")
    r = client_for(team["admin"]).post(
        f"/api/projects/{other.pk}/datasets/{version.number}/detector/", {}, format="json"
    )
    assert r.status_code == 404  # a version of another project is not found there
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"colour": "red"}, "Unknown parameter(s): colour"),
        ({"backbone": "xl"}, "backbone is one of lite0, s, m, l"),
        ({"input_size": 650}, "multiple of 32"),
        ({"input_size": 64}, "input_size is a whole number from 160 to 1280"),
        ({"epochs": 0}, "epochs is a whole number from 1 to 500"),
        ({"epochs": 2.5}, "epochs is a whole number"),
        ({"batch_size": True}, "batch_size is a whole number"),
        ({"slice": "yes"}, "slice is true or false"),
        ({"rotate": 1}, "rotate is true or false"),
        ({"transplant": "yes"}, "transplant is true or false"),
        ({"transplant": True}, "(transplant) needs labelled train images with an aligned"),
        ({"negatives": 1.5}, "negatives is the largest share of an epoch's images"),
        ({"negatives": "all"}, "negatives is the largest share of an epoch's images"),
        ({"negatives": True}, "negatives is the largest share of an epoch's images"),
        ({"overlap": 0.9}, "overlap is a fraction"),
        ({"iterations_per_epoch": 0}, "iterations_per_epoch is a whole number"),
        ({"reference": "both"}, "'stacked' (the image, its reference and their difference"),
        ({"reference": "stacked"}, "A stacked detector learns from images with an aligned"),
        ({"reference": "two-stage"}, "two-stage change detector learns from images with an"),
        (
            {"reference": "two-stage", "slice": True},
            "takes only epochs, networks and seed, not slice.",
        ),
        ({"reference": "two-stage", "networks": 0}, "networks is a whole number from 1 to 5."),
        ({"reference": "two-stage", "networks": 2.5}, "networks is a whole number from 1 to 5."),
        ({"networks": 2}, "Unknown parameter(s): networks."),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_queued(
    team, tmp_path, client_for, params, says
):
    version = frozen(team, tmp_path)
    r = client_for(team["admin"]).post(url(team, version), {"params": params}, format="json")
    assert r.status_code == 400 and says in r.json()["error"], r.json()
    assert not Job.objects.exists()


def test_images_without_a_box_are_capped_per_epoch_and_the_estimate_follows(
    team, tmp_path, client_for
):
    """Four labelled train images and twelve normal ones (references, confirmed normals): an
    epoch takes the four and 10 % of its images without a box, so the estimate is that of
    four images, not sixteen; null takes every one, and the form's query says "all"."""
    from annotations.services.detectors import epoch_negatives as service_rule
    from workers.detection.trainer import epoch_negatives as trainer_rule

    project, admin = team["project"], team["admin"]
    for n in range(12):
        add_image(project, admin, tmp_path, f"n{n}.png", split="train", is_normal=True)
    version = frozen(team, tmp_path)
    client = client_for(admin)
    body = client.get(url(team, version)).json()
    assert body["facts"]["train_negatives"] == 12 and body["params"]["negatives"] == 0.1
    assert any(
        "12 of the 16 train images have no box" in r and "less than one image" in r
        for r in body["reasons"]
    ), body["reasons"]
    capped = body["estimate_seconds"]
    every = client.get(url(team, version) + "?negatives=all").json()
    assert every["params"]["negatives"] is None
    assert every["estimate_seconds"] == pytest.approx(4 * capped, rel=0.01)  # 16 images, not 4
    half = client.get(url(team, version) + "?negatives=0.5").json()
    assert half["estimate_seconds"] == pytest.approx(2 * capped, rel=0.01)  # 4 + 4
    assert client.get(url(team, version) + "?negatives=lots").status_code == 400
    r = client.post(url(team, version), {"params": {"negatives": None}}, format="json")
    assert (
        r.status_code == 202
        and ModelVersion.objects.get(pk=r.json()["id"]).params["negatives"] is None
    )
    # five more labelled images: 10 % of an epoch of nine is one of the twelve
    for n in range(5):
        label(
            add_image(project, admin, tmp_path, f"l{n}.png", split="train"), "dent", box(5, 5, 9, 9)
        )
    more = dataset_version_freeze(user=admin, project=project)
    reasons = client.get(url(team, more)).json()["reasons"]
    assert any("every labelled image and 1 of them, drawn afresh" in r for r in reasons), reasons
    # the time estimate's copy of the rule is the trainer's
    for pos, neg in ((135, 135), (4, 12), (0, 5), (10, 0), (9, 100)):
        for share in (None, 0.0, 0.1, 0.25, 0.5, 1.0):
            assert service_rule(pos, neg, share) == trainer_rule(pos, neg, share)


def test_a_version_without_boxes_cannot_train_a_detector(team, tmp_path, client_for):
    version = frozen(team, tmp_path, boxes=False)
    r = client_for(team["admin"]).post(url(team, version), {}, format="json")
    assert r.status_code == 400 and "no labels in its train split" in r.json()["error"]


def test_a_detection_run_needs_an_active_detector(team, client_for):
    r = client_for(team["reviewer"]).post(
        f"/api/projects/{team['project'].pk}/runs/", {"kind": "detector"}, format="json"
    )
    assert r.status_code == 400 and "no active detector" in r.json()["error"]


def test_detector_suggestions_carry_their_category_and_supersede_older_ones(team, tmp_path):
    project = team["project"]
    image = add_image(project, team["admin"], tmp_path, "a.png", size=(200, 100))
    dent = category_create(user=team["admin"], project=project, name="Dent")
    v1, v2 = (
        ModelVersion.objects.create(
            project=project, number=n, kind="detector", architecture="ppyoloe-sod-s", status="ready"
        )
        for n in (1, 2)
    )
    run = InspectionRun.objects.create(project=project, model_version=v1, image_ids=[image.pk])
    old = suggestions_store(
        image=image,
        run=run,
        model_version=v1,
        suggestions=[
            SuggestionIn(box=(10, 10, 20, 20), score=0.8, category="dent"),
            SuggestionIn(box=(100, 50, 10, 10), score=0.7, category="gone"),  # no such category
            SuggestionIn(box=(150, 10, 10, 10), score=0.6, category="dent"),
        ],
    )
    assert [(s.category, s.kind) for s in old] == [(dent, "box"), (None, "box"), (dent, "box")]
    Suggestion.objects.filter(pk=old[2].pk).update(status="rejected")
    run2 = InspectionRun.objects.create(project=project, model_version=v2, image_ids=[image.pk])
    new = suggestions_store(
        image=image,
        run=run2,
        model_version=v2,
        suggestions=[
            SuggestionIn(box=(11, 10, 20, 20), score=0.9, category="Dent"),  # the same place
            SuggestionIn(box=(150, 10, 10, 10), score=0.9, category="dent"),  # decided place
        ],
    )
    assert [(s.model_version, s.category) for s in new] == [(v2, dent)]
    left = Suggestion.objects.filter(image=image, status="pending").order_by("id")
    # v1's undecided suggestion at that place is superseded; the one elsewhere stays
    assert [(s.model_version, s.geometry["x"]) for s in left] == [(v1, 100.0), (v2, 11.0)]
    # running the older version again (made active again): its run is the latest, it wins
    run3 = InspectionRun.objects.create(
        project=project, model_version=v1, image_ids=[image.pk], params={"score_threshold": 0.1}
    )
    suggestions_store(
        image=image,
        run=run3,
        model_version=v1,
        suggestions=[SuggestionIn(box=(12, 10, 20, 20), score=0.85, category="dent")],
    )
    left = Suggestion.objects.filter(image=image, status="pending").order_by("id")
    assert [(s.model_version, s.geometry["x"]) for s in left] == [(v1, 12.0)]


def test_the_queue_filters_by_source_and_new_runs_skip_what_a_detector_saw(
    team, tmp_path, client_for
):
    from inspection.services.inspections import images_run_by, inspection_run_start

    project = team["project"]
    a = add_image(project, team["admin"], tmp_path, "a.png", size=(200, 100))
    b = add_image(project, team["admin"], tmp_path, "b.png", size=(200, 100))
    detector = ModelVersion.objects.create(
        project=project, number=1, kind="detector", architecture="ppyoloe-sod-s",
        status="ready", is_active=True,
    )  # fmt: skip
    anomaly = ModelVersion.objects.create(
        project=project, number=1, kind="anomaly", architecture="padim", status="ready"
    )
    for version, x in ((detector, 10), (anomaly, 120)):  # two places: two queue items
        run = InspectionRun.objects.create(
            project=project, model_version=version, image_ids=[a.pk],
            results={str(a.pk): {"suggestions": 1}},
        )  # fmt: skip
        suggestions_store(
            image=a, run=run, model_version=version,
            suggestions=[SuggestionIn(box=(x, 10, 20, 20), score=0.8)],
        )  # fmt: skip
    url = f"/api/projects/{project.pk}/suggestions/"
    got = client_for(team["reviewer"]).get(url, {"source": "detector"}).json()["results"]
    assert [(s["source"], s["model_version"]) for s in got] == [("detector", detector.pk)]
    got = client_for(team["reviewer"]).get(url, {"source": "anomaly"}).json()["results"]
    assert [s["source"] for s in got] == ["anomaly"]
    assert images_run_by(detector) == {a.pk}
    run = inspection_run_start(user=team["reviewer"], project=project, kind="detector")
    assert run.image_ids == [b.pk] and run.params == {"score_threshold": 0.3}


def test_the_form_asks_how_long_its_edits_would_take(team, tmp_path, client_for):
    version = frozen(team, tmp_path, size=(2000, 1500))
    admin = client_for(team["admin"])
    base = admin.get(url(team, version)).json()
    half = admin.get(url(team, version), {"epochs": base["params"]["epochs"] // 2}).json()
    assert half["params"]["epochs"] == base["params"]["epochs"] // 2
    assert half["params"]["slice"] is True  # what was not edited stays as proposed
    assert half["proposed"] == base["params"]
    assert abs(half["estimate_seconds"] - base["estimate_seconds"] / 2) <= 1
    assert set(base["backbones"]) == {"lite0", "s", "m", "l"}
    whole = admin.get(url(team, version), {"slice": "false", "input_size": "320"}).json()
    assert whole["params"]["slice"] is False and whole["params"]["input_size"] == 320
    r = admin.get(url(team, version), {"input_size": 650})
    assert r.status_code == 400 and "multiple of 32" in r.json()["error"]


def test_the_run_page_says_how_often_reviewers_keep_the_detectors_category(
    team, tmp_path, client_for, client
):
    from annotations.figures import run_figures

    project = team["project"]
    image = add_image(project, team["admin"], tmp_path, "a.png", size=(200, 100))
    dent = category_create(user=team["admin"], project=project, name="dent")
    scratch = category_create(user=team["admin"], project=project, name="scratch")
    model = ModelVersion.objects.create(
        project=project, number=1, kind="detector", architecture="ppyoloe-sod-s", status="ready"
    )
    run = InspectionRun.objects.create(project=project, model_version=model, image_ids=[image.pk])
    a, b = suggestions_store(
        image=image,
        run=run,
        model_version=model,
        suggestions=[
            SuggestionIn(box=(10, 10, 20, 20), score=0.8, category="dent", category_score=0.8),
            SuggestionIn(box=(100, 50, 10, 10), score=0.7, category="dent", category_score=0.7),
        ],
    )
    assert (a.proposed_category, a.category_score) == (dent, 0.8)
    reviewer = client_for(team["reviewer"])
    reviewer.post(f"/api/suggestions/{a.pk}/accept/", {"category": dent.pk}, format="json")
    reviewer.post(f"/api/suggestions/{b.pk}/accept/", {"category": scratch.pk}, format="json")
    b.refresh_from_db()
    assert (b.category, b.proposed_category) == (scratch, dent)  # the proposal is kept
    figures = run_figures(run)
    assert (figures.category_proposed, figures.category_kept) == (2, 1)
    assert figures.category_kept_share == 0.5
    client.force_login(team["reviewer"])
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "1 of 2 accepted (0.500)" in page


def test_the_queue_can_put_the_most_uncertain_suggestions_first(team, tmp_path, client_for):
    project = team["project"]
    image = add_image(project, team["admin"], tmp_path, "a.png", size=(300, 100))
    category_create(user=team["admin"], project=project, name="dent")
    model = ModelVersion.objects.create(
        project=project, number=1, kind="detector", architecture="ppyoloe-sod-s", status="ready"
    )
    run = InspectionRun.objects.create(project=project, model_version=model, image_ids=[image.pk])
    suggestions_store(
        image=image,
        run=run,
        model_version=model,
        suggestions=[
            SuggestionIn(box=(10, 10, 20, 20), score=0.95),  # sure
            SuggestionIn(box=(60, 10, 20, 20), score=0.52),  # on the edge
            SuggestionIn(box=(110, 10, 20, 20), score=0.9, category="dent", category_score=0.45),
            SuggestionIn(box=(160, 10, 20, 20), score=0.7),
        ],
    )
    url = f"/api/projects/{project.pk}/suggestions/"
    order = [
        s["score"]
        for s in client_for(team["reviewer"]).get(url, {"order": "uncertainty"}).json()["results"]
    ]
    assert order == [0.52, 0.9, 0.7, 0.95]  # 0.9's category is the uncertain part
    by_score = client_for(team["reviewer"]).get(url).json()["results"]
    assert [s["score"] for s in by_score] == [0.95, 0.9, 0.7, 0.52]


def test_a_detector_of_another_project_is_neither_run_activated_nor_read(team, client_for):
    """Two projects: the admin of this one runs only this project's versions; a member of this
    project only does not see the other's detector at all; a reviewer there reads it but only
    its admins activate it."""
    from inspection.models import Role
    from inspection.services.projects import member_set

    other = project_create(user=team["admin"], name="Other line")
    theirs = ModelVersion.objects.create(
        project=other,
        kind=ModelVersion.Kind.DETECTOR,
        number=1,
        architecture="ppyoloe-sod-lite0",
        status=ModelVersion.Status.READY,
        artifact="x/model.pt",
    )
    r = client_for(team["admin"]).post(
        f"/api/projects/{team['project'].pk}/runs/",
        {"kind": "detector", "scope": "all", "model_version": theirs.pk},
        format="json",
    )
    assert r.status_code == 404, r.content  # looked up within this project only
    assert not InspectionRun.objects.exists() and not Job.objects.exists()
    reviewer = client_for(team["reviewer"])
    assert reviewer.get(f"/api/models/{theirs.pk}/").status_code == 404
    assert reviewer.post(f"/api/models/{theirs.pk}/activate/").status_code == 404
    assert reviewer.delete(f"/api/models/{theirs.pk}/").status_code == 404
    member_set(user=team["admin"], project=other, username="ann", role=Role.REVIEWER)
    guest = client_for(team["annotator"])  # an annotator here, a reviewer there
    assert guest.get(f"/api/models/{theirs.pk}/").json()["id"] == theirs.pk
    assert guest.post(f"/api/models/{theirs.pk}/activate/").status_code == 403
    theirs.refresh_from_db()
    assert ModelVersion.objects.filter(pk=theirs.pk).exists() and not theirs.is_active


def test_the_time_estimate_rests_on_the_last_training_measured_here(team, tmp_path, client_for):
    """Before any training: the development machine's figures, said so. After one: its own
    seconds per epoch, scaled to the form's images, input size and epochs, and named."""
    version = frozen(team, tmp_path)
    admin = client_for(team["admin"])
    params = {"backbone": "lite0", "input_size": 320, "epochs": 10, "slice": "false"}
    before = admin.get(url(team, version), params).json()
    assert "development machine" in before["estimate_basis"]
    # a finished lite0 training of 8 images a epoch at 640 px, 40 s per epoch (40 s of
    # validation not counted: the job records training seconds only)
    ModelVersion.objects.create(
        project=team["project"],
        kind=ModelVersion.Kind.DETECTOR,
        number=7,
        architecture="ppyoloe-sod-lite0",
        status=ModelVersion.Status.READY,
        params={"backbone": "lite0", "input_size": 640, "batch_size": 4, "epochs": 3},
        image_ids=list(range(1, 9)),
        metrics={"history": [{"epoch": e, "seconds": s} for e, s in ((1, 44), (2, 40), (3, 39))]},
    )
    after = admin.get(url(team, version), params).json()
    assert "latest lite0 training of this project (v7)" in after["estimate_basis"]
    # 40 s / 8 images at 640 px = 5 s per image; at 320 px a quarter; 4 images x 10 epochs
    assert after["estimate_seconds"] == round(5 * 0.25 * 4 * 10)
    siamese = admin.get(url(team, version), {**params, "reference": "siamese"}).json()
    assert siamese["estimate_seconds"] == round(5 * 0.25 * 4 * 10 * 1.56)
    # the two-stage change detector has no backbone: the benchmark's figure per pair and epoch
    # over the paired train images it learns from, at least the 20 batches of 64 crops an epoch
    # makes (34 DeepPCB pairs' worth: none here), plus validating the val pairs (none here)
    # two networks by default: each its epochs
    pairs = admin.get(url(team, version), {"reference": "two-stage", "epochs": 10}).json()
    assert pairs["estimate_seconds"] == round(0.32 * 34 * 10 * 2)
    one = {"reference": "two-stage", "epochs": 10, "networks": 1}
    assert admin.get(url(team, version), one).json()["estimate_seconds"] == round(0.32 * 34 * 10)
    assert "DeepPCB benchmark" in pairs["estimate_basis"]
    from annotations.services.detectors import estimate_seconds

    two_stage = {"reference": "two-stage", "epochs": 12, "networks": 2}
    # 100 pairs; 3 val pairs predicted after each network's epochs 5, 10 and 12 at 1.05 s each
    assert estimate_seconds(two_stage, 100, None, 3)[0] == round(
        0.32 * 100 * 12 * 2 + 1.05 * 3 * 3 * 2
    )
    assert pairs["params"] == {"epochs": 10, "networks": 2, "reference": "two-stage"}
    r = admin.get(url(team, version), {**params, "reference": "two-stage"})
    assert r.status_code == 400 and "not backbone, input_size, slice" in r.json()["error"]
    # a newer training in another project: this project's own still comes first; a project
    # without one gets the installation's figure, without the other project's name
    other = project_create(user=team["admin"], name="Secret line")
    ModelVersion.objects.create(
        project=other,
        kind=ModelVersion.Kind.DETECTOR,
        number=1,
        architecture="ppyoloe-sod-lite0",
        status=ModelVersion.Status.READY,
        params={"backbone": "lite0", "input_size": 640, "batch_size": 4, "epochs": 1},
        image_ids=list(range(1, 9)),
        metrics={"history": [{"epoch": 1, "seconds": 80}]},
    )
    again = admin.get(url(team, version), params).json()
    assert again["estimate_seconds"] == after["estimate_seconds"]
    seconds, basis = estimate_seconds(
        {**params, "batch_size": 4}, 4, project_create(user=team["admin"], name="New line")
    )
    assert basis.endswith("training on this installation") and "Secret" not in basis
    assert seconds == round(10 * 0.25 * 4 * 10)  # 80 s / 8 images at 640 px
