"""The threshold card's curve (issue #15): false suggestions per good image and recall of the
approved labels per threshold, from the active anomaly model's stored heatmaps of reviewed
images (annotations.services.threshold_effect, GET /api/models/{id}/threshold-effect/)."""

import io
import json
import time

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotations.models import Annotation, DefectCategory
from annotations.services.threshold_effect import threshold_effect
from inspection.models import Image, ImageHeatmap, InspectionRun, ModelVersion
from inspection.services.projects import project_create

pytestmark = pytest.mark.django_db


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def make_image(project, name, *, normal=False, size=100):
    return Image.objects.create(
        project=project,
        file=f"x/{name}.png",
        original_name=f"{name}.png",
        sha256=f"{name:0>64}"[-64:],
        size_bytes=1,
        format="PNG",
        width=size,
        height=size,
        is_normal=normal,
    )


def heatmap(image, run, array, name=None):
    path = default_storage.save(f"heatmaps/{name or image.original_name}", ContentFile(png(array)))
    return ImageHeatmap.objects.create(image=image, run=run, path=path, score=0.5)


def blob(hm, value, rows, cols):
    hm[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = value


def label(image, category, geometry, **extra):
    return Annotation.objects.create(
        image=image,
        category=category,
        kind=geometry["type"],
        geometry=geometry,
        review_status=extra.pop("review_status", Annotation.ReviewStatus.APPROVED),
        **extra,
    )


@pytest.fixture
def reviewed(team):
    """100 x 100 px images with 50 x 50 heatmaps (a heatmap pixel is 4 image pixels), min_area
    16 image px = 4 heatmap px, the project's threshold 0.62 (grid levels: t -> round(255 t)).

    good g1: a 3x3 area of 200 (0.78) and a lone pixel of 250 (too small); good g2: a 2x2 area of
    100 (0.39, exactly min_area). Defect d1: a box label with a 4x4 area of 230 (0.90) inside and
    a stray 3x3 area of 180 (0.71) outside. Defect d2: a polygon with a 4x4 area of 150 (0.59)
    inside, and a box label nothing reaches (a dent; the others are scratches)."""
    project = team["project"]
    project.inspection = {"min_area": 16, "threshold": 0.62}
    project.save()
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(project=project, model_version=version, image_ids=[])
    category = DefectCategory.objects.create(project=project, name="scratch")

    g1, g2 = make_image(project, "g1", normal=True), make_image(project, "g2", normal=True)
    d1, d2 = make_image(project, "d1"), make_image(project, "d2")
    hm = np.zeros((50, 50))
    blob(hm, 200, (5, 7), (5, 7))
    hm[40, 40] = 250
    heatmap(g1, run, hm)
    hm = np.zeros((50, 50))
    blob(hm, 100, (20, 21), (20, 21))
    heatmap(g2, run, hm)
    hm = np.zeros((50, 50))
    blob(hm, 230, (12, 15), (12, 15))
    blob(hm, 180, (40, 42), (40, 42))
    heatmap(d1, run, hm)
    label(d1, category, {"type": "box", "x": 20, "y": 20, "w": 20, "h": 20})
    hm = np.zeros((50, 50))
    blob(hm, 150, (32, 35), (32, 35))
    heatmap(d2, run, hm)
    square = [[60, 60], [80, 60], [80, 80], [60, 80]]
    label(d2, category, {"type": "polygon", "points": square})
    label(
        d2,
        DefectCategory.objects.create(project=project, name="dent"),
        {"type": "box", "x": 0, "y": 80, "w": 10, "h": 10},
        source=Annotation.Source.GROUND_TRUTH,
        review_status=Annotation.ReviewStatus.PENDING,
    )

    # not counted: an older heatmap of d1 (the latest counts), a label sent back, an image
    # nobody reviewed, another version's heatmap of a normal image
    old = heatmap(d1, run, np.full((50, 50), 255), name="old.png")
    ImageHeatmap.objects.filter(pk=old.pk).update(created_at="2020-01-01T00:00:00Z")
    label(
        d1,
        category,
        {"type": "box", "x": 80, "y": 0, "w": 10, "h": 10},
        review_status=Annotation.ReviewStatus.RETURNED,
    )
    heatmap(make_image(project, "pending"), run, np.full((50, 50), 255))
    other = ModelVersion.objects.create(project=project, number=2, architecture="padim")
    other_run = InspectionRun.objects.create(project=project, model_version=other, image_ids=[])
    heatmap(make_image(project, "g3", normal=True), other_run, np.full((50, 50), 255))
    # and a normal image the version was trained on, inspected afterwards (it learnt that one)
    trained = make_image(project, "t1", normal=True)
    ModelVersion.objects.filter(pk=version.pk).update(image_ids=[trained.pk])
    version.refresh_from_db()
    heatmap(trained, run, np.full((50, 50), 255))
    return {"project": project, "version": version, "run": run, "category": category}


def test_the_curve_on_hand_made_heatmaps(reviewed):
    out = threshold_effect(reviewed["version"])
    assert (out["images_used"], out["good_images"], out["defect_images"]) == (4, 2, 2)
    assert (out["labels"], out["capped"], out["unreadable"], out["threshold"]) == (
        3,
        False,
        0,
        0.62,
    )
    rows = {r["threshold"]: r for r in out["curve"]}
    assert 0.62 in rows and len(out["curve"]) == 15  # the grid, and the project's own

    def at(t):
        r = rows[t]
        return r["false_per_good_image"], r["false_on_defect_images"], r["found"], r["recall"]

    assert at(0.3) == (1.0, 1, 2, 0.6667)
    assert at(0.4) == (0.5, 1, 2, 0.6667)  # g2's area is below 0.4
    assert at(0.55) == (0.5, 1, 2, 0.6667)
    assert at(0.6) == (0.5, 1, 1, 0.3333)  # d2's polygon is lost
    assert at(0.62) == (0.5, 1, 1, 0.3333)
    assert at(0.75) == (0.5, 0, 1, 0.3333)  # d1's stray area is gone
    assert at(0.8) == (0.0, 0, 1, 0.3333)
    assert at(0.95) == (0.0, 0, 0, 0.0)
    # per category: which kind of defect a higher threshold loses
    assert out["labels_by_category"] == {"dent": 1, "scratch": 2}
    assert rows[0.55]["found_by_category"] == {"dent": 0, "scratch": 2}
    assert rows[0.6]["found_by_category"] == {"dent": 0, "scratch": 1}
    assert rows[0.95]["found_by_category"] == {"dent": 0, "scratch": 0}


def test_members_read_it_outsiders_get_404(reviewed, team, client_for, make_user):
    url = f"/api/models/{reviewed['version'].pk}/threshold-effect/"
    r = client_for(team["annotator"]).get(url)
    assert r.status_code == 200
    assert r.json()["images_used"] == 4 and r.json()["curve"][0]["threshold"] == 0.3
    assert client_for(team["outsider"]).get(url).status_code == 404
    assert client_for(None).get(url).status_code in (401, 403)
    # a version of another project, for a member of this one
    stranger = make_user("stranger")
    elsewhere = project_create(user=stranger, name="Elsewhere")
    theirs = ModelVersion.objects.create(project=elsewhere, number=1, architecture="padim")
    r = client_for(team["annotator"]).get(f"/api/models/{theirs.pk}/threshold-effect/")
    assert r.status_code == 404
    assert client_for(stranger).get(url).status_code == 404


def test_no_reviewed_images(team, client_for):
    version = ModelVersion.objects.create(
        project=team["project"], number=1, architecture="padim", status="ready"
    )
    r = client_for(team["admin"]).get(f"/api/models/{version.pk}/threshold-effect/")
    assert r.status_code == 200
    body = r.json()
    assert body["images_used"] == 0 and body["capped"] is False
    assert all(
        row["recall"] is None and row["false_per_good_image"] is None for row in body["curve"]
    )


def test_the_cap_takes_the_most_recently_reviewed(reviewed):
    out = threshold_effect(reviewed["version"], limit=3)
    assert out["images_used"] == 3 and out["capped"] is True


def test_300_small_heatmaps_are_read_up_to_the_cap(reviewed):
    """301 reviewed normal images with 64 x 64 heatmaps: 300 are read (the cap); prints the
    time it takes (no timed assertion: the test processes share noisy cores)."""
    project, run = reviewed["project"], reviewed["run"]
    rng = np.random.default_rng(0)
    for i in range(297):
        image = make_image(project, f"n{i}", normal=True, size=256)
        heatmap(image, run, rng.integers(0, 160, (64, 64)))
    started = time.perf_counter()
    out = threshold_effect(reviewed["version"])
    seconds = time.perf_counter() - started
    print(f"threshold effect on {out['images_used']} heatmaps of 64x64: {seconds:.2f} s")
    assert out["images_used"] == 300 and out["capped"] is True


def test_the_models_page_tells_the_card_where_to_fetch_it(reviewed, team, client):
    version = reviewed["version"]
    version.metrics = {"calibration": {"normal_peaks": [0.2, 0.3], "expected_share": [[0.5, 0.1]]}}
    version.save()
    client.force_login(team["annotator"])
    page = client.get(f"/projects/{reviewed['project'].pk}/models/").content.decode()
    assert f"/api/models/{version.pk}/threshold-effect/" in page
    assert 'class="threshold-curve"' in page


def test_a_model_with_its_line_detector_shows_the_sums_calibration(reviewed, team, client):
    """Its suggestions come from the model's and the line detector's maps added and calibrated
    again: the card shows where the held-out normal images' peaks are on that scale."""
    version = reviewed["version"]
    own = {"normal_peaks": [0.2, 0.3], "expected_share": [[0.5, 0.1]], "suggest_rate": 0.25}
    summed = {"normal_peaks": [0.11, 0.42, 0.61], "expected_share": [[0.5, 0.25]]}
    version.metrics = {"calibration": {**own, "with_lines": {**own, **summed}}}
    version.save()
    client.force_login(team["annotator"])
    page = client.get(f"/projects/{reviewed['project'].pk}/models/").content.decode()
    data = json.loads(page.split('id="calibration-data" type="application/json">')[1].split("<")[0])
    assert data["peaks"] == [0.11, 0.42, 0.61] and data["expected_share"] == [[0.5, 0.25]]
