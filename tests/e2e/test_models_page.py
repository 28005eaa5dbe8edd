"""An admin trains a tiled anomaly model from the models page on 1600 x 1200 photos (the page
proposes tiles for photos this large), then inspects one with a thin scratch: the suggestion is
on the scratch, in full-resolution pixels, and the heatmap covers the whole photo."""

import io
import re
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotations.models import Suggestion
from inspection.models import Image, ImageHeatmap, ModelVersion
from inspection.services.images import IncomingFile, image_store_one
from tests.e2e.test_workspace import login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WIDTH, HEIGHT = 1600, 1200
SCRATCH = (700, 560, 820, 563)  # x0, y0, x1, y1: 120 x 3 px, dark


def photo(seed: int, scratch: bool = False) -> bytes:
    """A brushed, evenly lit surface (a new phase and grain per seed), optionally scratched."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = 140 + 25 * np.sin(xx / 400.0 + seed) * np.cos(yy / 300.0)
    rng = np.random.default_rng(seed)
    img = base[..., None] + rng.normal(0, 4, (HEIGHT, WIDTH, 3))
    if scratch:
        x0, y0, x1, y1 = SCRATCH
        img[y0:y1, x0:x1] = 40
    buf = io.BytesIO()
    PILImage.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def store(project, user, tmp_path, name: str, data: bytes, **kw) -> Image:
    path = tmp_path / name
    path.write_bytes(data)
    out = image_store_one(project=project, user=user, incoming=IncomingFile(name, path), **kw)
    assert out.status == "stored", out
    return Image.objects.get(pk=out.image_id)


def test_train_tiles_and_inspect_from_the_models_page(page, celery_worker, team, tmp_path):
    project, admin = team["project"], team["admin"]
    for i in range(4):
        store(project, admin, tmp_path, f"good-{i}.jpg", photo(seed=i), is_normal=True)
    scratched = store(project, admin, tmp_path, "part-17.jpg", photo(seed=17, scratch=True))

    login(page, admin.username)
    page.goto(f"/projects/{project.pk}/models/")

    # 1600 px photos: the page proposes full-resolution tiles, and says why
    form = page.locator("#train-form")
    assert form.locator("select[name=scale]").input_value() == "1"
    assert "1600 px on their long side" in form.inner_text()
    form.locator("button[type=submit]").click()
    page.locator("tr[data-version] .status-ready").wait_for(timeout=180_000)
    version = ModelVersion.objects.get(project=project)
    assert version.params["scale"] == 1 and version.params["coarse_pass"] is False
    assert version.metrics["tiles"] > 4 * 3  # every training photo was cut into many tiles
    row = page.locator(f'tr[data-version="{version.pk}"]')
    assert "tiles of 256 px at full resolution" in row.inner_text()
    assert "active" in row.inner_text()

    # how heatmaps become suggestions: a smaller minimum area, saved for the next runs
    page.click("#inspection-settings summary")
    page.fill("#inspection-form input[name=min_area]", "32")
    # detector runs: every flip of each image (the select offers 1, 2, 4 and 8 views)
    views = page.locator("#inspection-form select[name=detector_views]")
    assert views.input_value() == "1"
    assert [o.get_attribute("value") for o in views.locator("option").all()] == ["1", "2", "4", "8"]
    views.select_option("4")
    page.click("#inspection-form button[type=submit]")
    page.get_by_text("Saved: the next inspection runs use these settings.").wait_for()
    project.refresh_from_db()
    assert project.inspection["min_area"] == 32 and project.inspection["specular_mask"] is False
    assert project.inspection["detector_views"] == 4

    # inspect: the run page opens when the job is done, and says which settings it used
    page.select_option("#run-form select[name=scope]", "new")
    page.click("#run-form button[type=submit]")
    page.wait_for_url("**/runs/*/", timeout=180_000)
    assert "at least 32 px, at most 20 per image" in page.locator("#run-settings").inner_text()
    heatmap = ImageHeatmap.objects.get(image=scratched)
    with default_storage.open(heatmap.path) as fh:
        assert PILImage.open(fh).size == (1024, 768)  # the whole photo, at most 1024 px

    # the 3 px scratch is a suggestion at its place, in full-resolution pixels
    def bounds(g: dict) -> tuple:
        if g["type"] == "box":
            return g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]
        xs, ys = [p[0] for p in g["points"]], [p[1] for p in g["points"]]
        return min(xs), min(ys), max(xs), max(ys)

    x0, y0, x1, y1 = SCRATCH
    found = [
        bounds(s.geometry)
        for s in Suggestion.objects.filter(image=scratched, model_version=version)
    ]
    assert any(
        bx0 <= x1 and bx1 >= x0 and by0 <= y1 and by1 >= y0 for bx0, by0, bx1, by1 in found
    ), found

    # the threshold card: where the held-out normal images peak, and what a threshold does
    from annotations.services.categories import category_create
    from annotations.services.review import suggestion_accept, suggestion_reject

    on_scratch = [
        s
        for s in Suggestion.objects.filter(image=scratched, model_version=version)
        if (b := bounds(s.geometry))[0] <= x1 and b[2] >= x0 and b[1] <= y1 and b[3] >= y0
    ]
    scratch_category = category_create(user=admin, project=project, name="scratch")
    suggestion_accept(user=admin, suggestion=on_scratch[0], category_id=scratch_category.pk)
    others = list(Suggestion.objects.filter(model_version=version, status="pending"))
    for s in others:
        suggestion_reject(user=admin, suggestion=s)
    # and a dent the model never suggested: an annotator drew it in a corner, the admin approved
    from annotations.services.labels import annotation_create
    from annotations.services.review import annotation_approve

    dent = category_create(user=admin, project=project, name="dent")
    corner = {"type": "box", "x": 4, "y": 4, "w": 24, "h": 24}
    annotation_approve(
        user=admin,
        annotation=annotation_create(
            user=team["annotator"], image=scratched, category_id=dent.pk, geometry=corner
        ),
    )
    page.goto(f"/projects/{project.pk}/models/")
    card = page.locator("#threshold-card")
    card.locator("rect.bar").first.wait_for()
    page.locator(f'#threshold-card[data-reviewed="{1 + len(others)}"]').wait_for()
    calibration = ModelVersion.objects.get(pk=version.pk).metrics["calibration"]
    held_out = len(calibration["normal_peaks"])
    bars = card.locator("rect.bar")
    assert (
        sum(int(bars.nth(i).get_attribute("data-count")) for i in range(bars.count())) == held_out
    )
    text = card.locator(".threshold-effect").inner_text()
    assert "From a score of 0.5: about 25 % of normal images would get a suggestion" in text
    assert f"peaks of {held_out} held-out normal image" in text
    assert f"1 of 1 accepted and {len(others)} of {len(others)} rejected" in text
    # the verdict's own threshold, which the score from does not move
    share = Decimal(100 * calibration["verdict_share"])  # as the card rounds it (half up)
    places = Decimal("0.1") if share < 10 else Decimal("1")
    verdict = "under 0.1" if share < Decimal("0.1") else share.quantize(places, ROUND_HALF_UP)
    assert "The verdict (an image flagged anomalous; NG at a station from its unsure" in text
    assert f"about {verdict} % of normal images would reach it (flag rate asked: 5.0 %" in text
    assert card.locator("line.tick-accepted").count() == 1
    # what the score does on the reviewed images' stored heatmaps, per kind of defect
    page.locator("#threshold-card[data-effect]").wait_for(state="attached")
    text = card.locator(".threshold-effect").inner_text()
    assert re.search(r"of 2 labelled defects found \(dent [01] of 1, scratch 1 of 1\)", text), text
    # an admin types a higher threshold: the card follows before anything is saved
    page.fill("#inspection-form input[name=threshold]", "4")
    card.locator('line.project-threshold[data-threshold="4"]').wait_for(state="attached")
    text = card.locator(".threshold-effect").inner_text()
    assert "From a score of 4:" in text and "about 25 %" not in text
    strong = on_scratch[0].score >= 4
    assert f"{int(strong)} of 1 accepted" in text


def test_a_two_scale_model_from_the_models_page(page, celery_worker, team, tmp_path):
    """ "plus half the input size, fused": the form asks for a PaDiM at 128 and 64 px, the job
    trains one network per scale, and the models table says so; "correct uneven lighting" asks
    for the shading correction, and the model stores it."""
    project, admin = team["project"], team["admin"]
    for i in range(3):
        store(project, admin, tmp_path, f"good-{i}.jpg", photo(seed=i), is_normal=True)
    login(page, admin.username)
    page.goto(f"/projects/{project.pk}/models/")
    form = page.locator("#train-form")
    form.locator("select[name=scale]").select_option("")
    form.locator("input[name=input_size]").fill("96")  # half of it is not a multiple of 32
    form.locator("input[name=multiscale]").check()
    form.locator("button[type=submit]").click()
    assert "not a multiple of 32" in page.locator("#train-status").inner_text()
    assert not ModelVersion.objects.exists()
    form.locator("input[name=input_size]").fill("128")
    form.locator("input[name=shading]").check()
    form.locator("button[type=submit]").click()
    page.locator("tr[data-version] .status-ready").wait_for(timeout=180_000)
    version = ModelVersion.objects.get(project=project)
    assert version.params["multiscale"] == [128, 64] and version.architecture == "padim"
    assert version.params["shading"] == 0.2
    assert "s64_pixel_threshold" in version.metrics
    row = page.locator(f'tr[data-version="{version.pk}"]')
    assert "whole image at 128 px; scales 128 + 64 px fused; lighting corrected" in row.inner_text()
