"""Most uncertain first (issue #13): besides scores near the decision, a detector torn between
two categories at a box (``category_margin``) and the anomaly model and the detector
disagreeing move a suggestion ahead, in the review queue and in the image grid's label next."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from annotations.models import Suggestion
from annotations.services.categories import category_create
from annotations.services.image_state import image_detector_checked
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection.models import ImageHeatmap, InspectionRun, ModelVersion
from tests.annotations.test_datasets import add_image

pytestmark = pytest.mark.django_db


def detection(x, y, score, second=None, name="dent"):
    """A ``workers.detection.Detection`` as the app reads it (20 px square at x, y)."""
    return SimpleNamespace(
        x1=x, y1=y, x2=x + 20, y2=y + 20, score=score, category_name=name, second_score=second
    )


def versions(project):
    anomaly = ModelVersion.objects.create(
        project=project, number=1, kind="anomaly", architecture="padim", status="ready"
    )
    detector = ModelVersion.objects.create(
        project=project, number=1, kind="detector", architecture="ppyoloe-sod-s", status="ready"
    )
    return anomaly, detector


def queue(team, client_for, **params):
    url = f"/api/projects/{team['project'].pk}/suggestions/"
    r = client_for(team["reviewer"]).get(url, {"order": "uncertainty", **params})
    assert r.status_code == 200, r.content
    return r.json()["results"]


def test_a_small_margin_between_two_categories_goes_before_a_large_one(team, tmp_path, client_for):
    project = team["project"]
    category_create(user=team["admin"], project=project, name="dent")
    image = add_image(project, team["admin"], tmp_path, "a.png", size=(300, 100))
    _, detector = versions(project)
    run = InspectionRun.objects.create(project=project, model_version=detector)
    suggestions_store(
        image=image,
        run=run,
        model_version=detector,
        suggestions=[
            SuggestionIn.from_detection(d)
            for d in [
                detection(10, 10, 0.9, second=0.2),  # margin 0.7: sure of the category
                detection(60, 10, 0.9),  # the detector did not say
                detection(110, 10, 0.9, second=0.8),  # margin 0.1: torn between two
                detection(160, 10, 0.9, second=0.95),  # another category scored higher
                detection(210, 10, 0.6, second=0.1),  # near the decision anyway
            ]
        ],
    )
    got = queue(team, client_for)
    margins = [s["category_margin"] for s in got]
    # doubts: -0.05 -> 0; 0.1 -> 0.05; 0.6's |0.6 - 0.5| = 0.1; 0.7 -> 0.35; none: 0.4
    assert margins == pytest.approx([-0.05, 0.1, 0.5, 0.7, None], abs=1e-6)
    assert [s["score"] for s in got] == [0.9, 0.9, 0.6, 0.9, 0.9]
    # by score the order is the stored one, whatever the margins
    by_score = client_for(team["reviewer"]).get(f"/api/projects/{project.pk}/suggestions/")
    assert [s["category_margin"] for s in by_score.json()["results"]][:4] == pytest.approx(
        [0.7, None, 0.1, -0.05], abs=1e-6
    )


def test_the_margin_follows_the_category_to_an_anomaly_region():
    """The anomaly job classifies its regions with the detector box covering them: the margin
    comes along; a region no box covers has neither."""
    region = SuggestionIn(box=(10, 10, 20, 20), score=0.9)
    classified = region.classified([detection(5, 5, 0.8, second=0.3)])
    assert (classified.category, classified.category_score) == ("dent", 0.8)
    assert classified.category_margin == pytest.approx(0.5)
    assert region.classified([detection(200, 200, 0.8, second=0.3)]).category_margin is None


@pytest.fixture
def mixed(team, tmp_path):
    """An anomaly model and a detector on five images (all scores equal where compared):
    a: both found the defect (anomaly first, the detector box is its echo);
    b: the anomaly model found one, a detection run found nothing there;
    c: the detector found two, the anomaly model one of them (its echo);
    d: the anomaly model found one, the detection run failed on the image;
    e: a detector box on an image no anomaly model looked at."""
    project = team["project"]
    category_create(user=team["admin"], project=project, name="dent")
    images = {
        n: add_image(project, team["admin"], tmp_path, f"{n}.png", size=(300, 100)) for n in "abcde"
    }
    anomaly, detector = versions(project)
    a_run = InspectionRun.objects.create(project=project, model_version=anomaly)
    d_run = InspectionRun.objects.create(project=project, model_version=detector)
    # the detection run looked at b and found nothing; it failed on d (the job records the
    # first, workers/tasks/detection.py; the failure leaves no trace)
    image_detector_checked(image=images["b"])

    def store(name, version, items):
        run = a_run if version == anomaly else d_run
        return suggestions_store(
            image=images[name], run=run, model_version=version, suggestions=items
        )

    def spot(x, score):
        return SuggestionIn(box=(x, 10, 20, 20), score=score)

    for name in "abd":
        ImageHeatmap.objects.create(image=images[name], run=a_run, score=0.9, path="h.png")
    store("a", anomaly, [spot(10, 0.9)])
    store("a", detector, [SuggestionIn.from_detection(detection(10, 10, 0.9, second=0.05))])
    store("b", anomaly, [spot(10, 0.9)])
    store("d", anomaly, [spot(10, 0.92)])
    store(
        "c",
        detector,
        [
            SuggestionIn.from_detection(detection(10, 10, 0.8, second=0.05)),
            SuggestionIn.from_detection(detection(200, 10, 0.8, second=0.05)),
        ],
    )
    store("c", anomaly, [spot(12, 0.95)])  # at the first box: its echo
    store("e", detector, [SuggestionIn.from_detection(detection(10, 10, 0.8, second=0.05))])
    return {"images": images, **team}


def test_models_disagreeing_go_before_models_agreeing(mixed, client_for):
    images = {im.pk: n for n, im in mixed["images"].items()}
    got = [(images[s["image"]], s["source"], s["score"]) for s in queue(mixed, client_for)]
    assert got == [
        # b: anomaly 0.9, no detector box there though a detector ran: (1 - 0.9) / 2 = 0.05
        ("b", "anomaly", 0.9),
        # c, box 2: detector 0.8, no anomaly suggestion there: (1 - 0.8) / 2 = 0.1
        ("c", "detector", 0.8),
        # c, box 1 (with the anomaly echo) and e (no anomaly model ran): |0.8 - 0.5| = 0.3
        ("c", "detector", 0.8),
        ("e", "detector", 0.8),
        # a: both models found it: |0.9 - 0.5| = 0.4, as without the detector
        ("a", "anomaly", 0.9),
        # d: the detector failed on the image, so it did not disagree: 0.42
        ("d", "anomaly", 0.92),
    ]
    queued = queue(mixed, client_for)
    c1, c2 = queued[2], queued[1]
    assert [e["source"] for e in c1["also"]] == ["anomaly"] and c2["also"] == []
    assert c1["geometry"]["x"] < c2["geometry"]["x"]
    # a's anomaly region took the detector's category with its margin
    a = next(s for s in queued if images[s["image"]] == "a")
    assert (a["category_name"], a["category_score"]) == ("dent", 0.9)
    assert a["category_margin"] == pytest.approx(0.85)


def test_a_detector_that_classified_a_region_on_the_image_ran_there(mixed, client_for):
    """The active detector classifies an inspection run's regions: a region it gave a category
    says it looked at the image, so the image's unclassified regions disagree with it."""
    image = mixed["images"]["e"]
    anomaly = ModelVersion.objects.get(project=mixed["project"], kind="anomaly")
    run = InspectionRun.objects.create(project=mixed["project"], model_version=anomaly)
    made = suggestions_store(
        image=image,
        run=run,
        model_version=anomaly,
        suggestions=[
            SuggestionIn(box=(150, 10, 20, 20), score=0.9).classified(
                [detection(150, 10, 0.95, second=0.05)]
            ),
            SuggestionIn(box=(250, 10, 20, 20), score=0.9),
        ],
    )
    assert [s.category_score for s in made] == [0.95, None]
    got = [(s["id"], s["score"]) for s in queue(mixed, client_for, image=image.pk)]
    # the unclassified region: 0.05; e's detector box, now with an anomaly model on the image
    # and none at its place: 0.1; the classified region: |0.9 - 0.5| = 0.4
    detector_box = Suggestion.objects.get(image=image, model_version__kind="detector")
    assert got == [(made[1].pk, 0.9), (detector_box.pk, 0.8), (made[0].pk, 0.9)]


def test_label_next_ranks_images_by_the_same_doubt(mixed, client_for):
    images = {im.pk: n for n, im in mixed["images"].items()}
    url = f"/api/projects/{mixed['project'].pk}/images/"
    got = client_for(mixed["annotator"]).get(url, {"state": "unlabeled", "order": "uncertainty"})
    # b 0.05, c 0.1, e 0.3, a 0.4 (its heatmap's 0.9 too), d 0.42 (its heatmap 0.4)
    assert "".join(images[r["id"]] for r in got.json()["results"]) == "bcead"


def test_an_inspection_whose_detector_classified_nothing_still_disagrees(
    team, tmp_path, client_for
):
    """The active detector looked at the image's regions during the inspection and covered none
    (the job marks the image: ``image_detector_checked``): the regions disagree with it.
    Without a detector then, the same region is only as doubtful as its score."""
    project = team["project"]
    seen, unseen = (
        add_image(project, team["admin"], tmp_path, f"{n}.png", size=(100, 100)) for n in "fg"
    )
    anomaly, _ = versions(project)
    run = InspectionRun.objects.create(project=project, model_version=anomaly)
    image_detector_checked(image=seen)
    for image, score in ((seen, 0.9), (unseen, 0.8)):
        suggestions_store(
            image=image,
            run=run,
            model_version=anomaly,
            suggestions=[SuggestionIn(box=(10, 10, 20, 20), score=score)],
        )
    got = [s["image"] for s in queue(team, client_for)]
    # seen: (1 - 0.9) / 2 = 0.05 before unseen's |0.8 - 0.5| = 0.3 (by score alone: the reverse)
    assert got == [seen.pk, unseen.pk]
