"""The regions of interest page in a real browser: a project admin draws a region on the
project's reference image (click four points, Enter closes the outline), names it, excludes it
and saves it; the list and the API have it (four points inside the image), a reload shows it
again, its mode is changed to "inspect" in the list and it is deleted. An annotator sees the
regions read-only: no drawing."""

import pytest

from inspection.models import Image
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.references import image_mark_reference
from tests.conftest import dataset
from tests.e2e.test_workspace import login

pytestmark = [pytest.mark.e2e, pytest.mark.datasets]


@pytest.fixture
def bottles(transactional_db, team):
    """Three real bottle photos (900 x 900) with their pyramids; the first is the reference."""
    root = dataset("mvtec_bottle") / "train" / "good"
    files = sorted(root.glob("*.png"))[:3]
    if len(files) < 3:
        pytest.skip(f"fewer than 3 images in {root}")
    project, admin = team["project"], team["admin"]
    images = []
    for path in files:
        out = image_store_one(
            project=project, user=admin, incoming=IncomingFile(path.name, path), is_normal=True
        )
        assert out.status == "stored", out
        image = Image.objects.get(pk=out.image_id)
        image_build_derivatives(image=image)
        image.refresh_from_db()
        images.append(image)
    reference = image_mark_reference(user=admin, image=images[0], is_reference=True)
    return {**team, "images": images, "reference": reference}


def open_regions(page, project):
    page.goto(f"/projects/{project.pk}/regions/")
    page.locator("#regions-page[data-loaded]").wait_for()


def test_admin_draws_excludes_edits_and_deletes_a_region(page, bottles):
    project, reference = bottles["project"], bottles["reference"]
    login(page, bottles["admin"].username)
    page.goto(f"/projects/{project.pk}/models/")
    page.click("#regions-link")
    page.locator("#regions-page[data-loaded]").wait_for()
    assert page.title().startswith(f"Regions of interest — {project.name}")
    assert page.locator("h1").inner_text() == f"Regions of interest — {project.name}"
    page.locator("#region-viewer[data-tile-loaded]").wait_for()
    # no region yet: the reference to draw on is chosen, the only one is
    choice = page.locator("#region-reference")
    assert choice.is_visible() and choice.input_value() == str(reference.pk)
    assert reference.original_name in choice.locator("option:checked").inner_text()
    assert "No region yet" in page.locator("#region-list").inner_text()
    assert page.locator("#outside-regions").input_value() == "inspect"

    # draw: four clicks around the middle of the view, Enter closes the outline
    page.click("#region-draw")
    hint = page.locator("#draw-hint")
    assert hint.is_visible() and "0 points" in hint.inner_text()
    viewer = page.locator("#region-viewer")
    box = viewer.bounding_box()
    cx, cy = box["width"] / 2, box["height"] / 2
    home = page.evaluate("() => window.loupeRegions.view()")
    for dx, dy in ((-120, -90), (110, -100), (130, 80), (-100, 110)):
        viewer.click(position={"x": cx + dx, "y": cy + dy})
        page.wait_for_timeout(400)  # not a double-click
    # clicking drew points, and did not zoom or pan the view
    assert page.evaluate("() => window.loupeRegions.view()") == home
    assert "4 points" in hint.inner_text()
    assert page.locator("svg.region-layer .draft-vertex").count() == 4
    page.keyboard.press("Enter")
    form = page.locator("#region-form")
    form.wait_for()
    assert "4 points" in form.inner_text()
    # a name is required
    page.click("#region-save")
    assert page.locator("#region-list li[data-region]").count() == 0
    page.fill("#region-name", "Label area")
    page.select_option("#region-mode", "exclude")
    page.click("#region-save")

    item = page.locator("#region-list li[data-region]")
    item.wait_for()
    assert item.count() == 1
    assert "Label area" in item.inner_text() and "excluded" in item.inner_text()
    assert not form.is_visible() and not page.locator("#region-error").is_visible()
    outline = page.locator("svg.region-layer g.region.excluded")
    outline.wait_for()
    assert "Label area" in outline.text_content()

    regions = page.evaluate(
        "async (url) => (await fetch(url, {credentials: 'same-origin'})).json()",
        f"/api/projects/{project.pk}/regions/",
    )
    assert regions["reference"]["id"] == reference.pk
    [region] = regions["results"]
    assert region["name"] == "Label area" and region["mode"] == "exclude"
    assert region["reference"] == reference.pk
    polygon = region["polygon"]
    assert len(polygon) == 4
    for x, y in polygon:
        assert 0 < x < reference.width and 0 < y < reference.height, polygon
    # the clicks' order: top left, top right, bottom right, bottom left
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = polygon
    assert x0 < x1 and y1 < y2 and x3 < x2 and y0 < y3

    # a reload shows it again, drawn on its reference (no choice of reference any more)
    open_regions(page, project)
    item = page.locator(f'#region-list li[data-region="{region["id"]}"]')
    item.wait_for()
    assert "Label area" in item.inner_text()
    assert not page.locator("#region-reference").is_visible()
    assert reference.original_name in page.locator("#reference-label").inner_text()
    page.locator("svg.region-layer g.region.excluded").wait_for()

    # a second outline with the same name: the server's refusal is shown, the outline kept
    page.click("#region-draw")
    for dx, dy in ((-60, 150), (60, 150), (0, 220)):
        viewer.click(position={"x": cx + dx, "y": cy + dy})
        page.wait_for_timeout(400)
    page.click("#region-finish")
    page.fill("#region-name", "Label area")
    page.click("#region-save")
    error = page.locator("#region-error")
    error.filter(has_text="already has a region named 'Label area'").wait_for()
    assert form.is_visible()
    page.keyboard.press("Escape")
    assert not form.is_visible() and page.locator("svg.region-layer .draft-vertex").count() == 0
    assert page.locator("#region-list li[data-region]").count() == 1

    # inspect it after all: the list changes its mode, the outline takes a colour
    item.locator("select.region-mode").select_option("inspect")
    page.locator(f'#region-list li[data-region="{region["id"]}"][data-mode="inspect"]').wait_for()
    page.locator("svg.region-layer g.region.inspected").wait_for()
    item = page.locator(f'#region-list li[data-region="{region["id"]}"]')
    assert "inspected" in item.inner_text()
    assert item.locator("input.region-threshold").get_attribute("placeholder") == "auto"
    assert item.locator("select.region-arch").input_value() == "padim"
    regions = page.evaluate(
        "async (url) => (await fetch(url, {credentials: 'same-origin'})).json()",
        f"/api/projects/{project.pk}/regions/",
    )
    assert regions["results"][0]["mode"] == "inspect"
    # its own threshold, out of range first (refused, said why), then 0.8; emptied: the project's
    threshold = item.locator("input.region-threshold")
    threshold.fill("50")
    threshold.press("Tab")
    error.filter(has_text="calibrated score in [0.05, 10]").wait_for()
    assert threshold.input_value() == ""  # back to what the server has
    threshold = item.locator("input.region-threshold")
    threshold.fill("0.8")
    threshold.press("Tab")
    item.filter(has_text="threshold 0.8").wait_for()
    assert not error.is_visible()
    regions = page.evaluate(
        "async (url) => (await fetch(url, {credentials: 'same-origin'})).json()",
        f"/api/projects/{project.pk}/regions/",
    )
    assert regions["results"][0]["threshold"] == 0.8
    # nothing outside the regions is inspected from now on
    page.select_option("#outside-regions", "ignore")
    page.locator("#outside-status").filter(has_text="Saved").wait_for()
    project.refresh_from_db()
    assert project.inspection["outside_regions"] == "ignore"

    # delete it (after a confirmation)
    page.once("dialog", lambda d: d.accept())
    item.locator("button.region-delete").click()
    page.locator("#region-list li[data-region]").wait_for(state="detached")
    assert "No region yet" in page.locator("#region-list").inner_text()
    assert page.locator("svg.region-layer g.region").count() == 0
    regions = page.evaluate(
        "async (url) => (await fetch(url, {credentials: 'same-origin'})).json()",
        f"/api/projects/{project.pk}/regions/",
    )
    assert regions["results"] == []


def test_escape_drops_an_outline_and_too_few_points_do_not_close(page, bottles):
    project = bottles["project"]
    login(page, bottles["admin"].username)
    open_regions(page, project)
    page.locator("#region-viewer[data-tile-loaded]").wait_for()
    page.click("#region-draw")
    viewer = page.locator("#region-viewer")
    box = viewer.bounding_box()
    cx, cy = box["width"] / 2, box["height"] / 2
    for dx, dy in ((-80, -60), (90, -40)):
        viewer.click(position={"x": cx + dx, "y": cy + dy})
        page.wait_for_timeout(400)
    page.keyboard.press("Enter")
    error = page.locator("#region-error")
    assert error.is_visible() and "at least 3 points" in error.inner_text()
    assert not page.locator("#region-form").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#draw-tools").is_visible()
    assert page.locator("#region-draw").is_visible()
    assert page.locator("svg.region-layer .draft-vertex").count() == 0


def test_an_annotator_sees_the_regions_without_drawing(page, bottles, client_for):
    project, reference = bottles["project"], bottles["reference"]
    r = client_for(bottles["admin"]).post(
        f"/api/projects/{project.pk}/regions/",
        {
            "name": "Neck",
            "reference": reference.pk,
            "polygon": [[300, 300], [600, 300], [600, 600], [300, 600]],
            "mode": "inspect",
        },
        format="json",
    )
    assert r.status_code == 201, r.content
    login(page, bottles["annotator"].username)
    open_regions(page, project)
    page.locator("#region-viewer[data-tile-loaded]").wait_for()
    item = page.locator("#region-list li[data-region]")
    assert item.count() == 1 and "Neck" in item.inner_text()
    page.locator("svg.region-layer g.region.inspected").wait_for()
    # read-only: no drawing, no edits, no delete; the outside setting shown but not changeable
    assert page.locator("#region-draw").count() == 0
    assert item.locator("select, input, button.region-delete, button.region-train").count() == 0
    assert page.locator("#outside-regions").is_disabled()
    assert page.get_by_role("button", name="Draw region").count() == 0
    assert "Neck" in page.locator("svg.region-layer").text_content()


def test_a_regions_suggestions_are_reviewed_from_its_row(page, bottles):
    """A reviewer follows a region's suggestion count to the review queue, which holds only that
    region's suggestions and says where each was found; accepting one with A makes the label."""
    from annotations.models import Annotation, DefectCategory, Suggestion
    from annotations.services.suggestions import SuggestionIn, suggestions_store
    from inspection.models import ModelVersion
    from inspection.services.regions import region_create, region_update

    project, reference, admin = bottles["project"], bottles["reference"], bottles["admin"]
    neck = region_create(
        user=admin,
        project=project,
        name="neck",
        reference=reference,
        polygon=[[300, 300], [600, 300], [600, 600], [300, 600]],
    )
    DefectCategory.objects.create(project=project, name="contamination", shortcut="c")
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    suggestions_store(  # what an inspection run with the region stores
        image=bottles["images"][1],
        run=None,
        model_version=version,
        suggestions=[
            SuggestionIn(box=(420, 430, 40, 30), score=0.93, roi=neck.pk),
            SuggestionIn(box=(80, 90, 30, 30), score=0.97),  # outside every region
        ],
    )
    in_neck = Suggestion.objects.get(region=neck)
    # the region's own model, trained on its crops; one normal image could not be registered
    own = ModelVersion.objects.create(
        project=project,
        number=2,
        architecture="padim",
        status="ready",
        params={"model": "padim", "region": neck.pk},
        image_ids=[i.pk for i in bottles["images"]],
        metrics={
            "region": {
                "name": "neck",
                "polygon": neck.polygon,  # the outline it learnt: the region's as it is
                "trained_on": 2,
                "skipped": [{"image": 0, "name": "odd.png", "reason": "odd.png could not be…"}],
            }
        },
    )
    region_update(user=admin, region=neck, model_version=own)

    login(page, bottles["reviewer"].username)
    open_regions(page, project)
    row = page.locator(f'li[data-region="{neck.pk}"]')
    assert "padim v2 · ready · trained on 2 normal images" in row.inner_text()
    assert row.locator(".region-skipped").inner_text() == (
        "1 normal image left out (not registered onto the reference): odd.png"
    )
    link = page.locator(f'li[data-region="{neck.pk}"] a.region-suggestions')
    assert link.inner_text() == "1 pending suggestion"
    link.click()
    page.locator("#viewer[data-loaded]").wait_for()
    page.wait_for_function(
        f"() => (document.getElementById('viewer').dataset.item || '') === 'suggestion:{in_neck.pk}'"
    )
    assert page.locator('select[name="region"]').input_value() == str(neck.pk)
    assert "region neck" in page.locator("#item-info").inner_text()
    assert page.locator("#queue-count").inner_text().startswith("1 to review")  # not the other
    page.keyboard.press("1")
    page.keyboard.press("a")
    page.wait_for_function(
        "() => (document.getElementById('viewer').dataset.pending || '0') === '0'"
    )
    label = Annotation.objects.get(suggestion=in_neck)
    assert label.category.name == "contamination"
    assert Suggestion.objects.get(pk=in_neck.pk).status == "accepted"
    assert Suggestion.objects.filter(region=None).get().status == "pending"
