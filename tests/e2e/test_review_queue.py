"""The review queue by keyboard in a real browser: A accepts, E edits then accepts, R rejects with
a reason, N skips; labels drawn by an annotator are approved or sent back."""

import pytest

from annotations.models import Annotation, Review, Suggestion
from annotations.services.categories import category_create
from annotations.services.suggestions import SuggestionIn, suggestions_store
from inspection.models import Image, InspectionRun, ModelVersion, Role
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.projects import member_set, project_create
from tests.annotations.conftest import region, square
from tests.e2e.test_workspace import login, part_photo, shot

pytestmark = pytest.mark.e2e


@pytest.fixture
def queue(transactional_db, make_user, tmp_path):
    boss = make_user("boss")
    make_user("rev")
    make_user("ann")
    project = project_create(user=boss, name="Castings")
    member_set(user=boss, project=project, username="rev", role=Role.REVIEWER)
    member_set(user=boss, project=project, username="ann", role=Role.ANNOTATOR)
    porosity = category_create(user=boss, project=project, name="porosity")
    crack = category_create(user=boss, project=project, name="crack")
    path = tmp_path / "casting.jpg"
    path.write_bytes(part_photo(2400, 1600, seed=5))
    image = Image.objects.get(
        pk=image_store_one(
            project=project, user=boss, incoming=IncomingFile(path.name, path)
        ).image_id
    )
    image_build_derivatives(image=image)
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(project=project, model_version=version, image_ids=[image.pk])
    suggestions_store(
        image=image,
        run=run,
        model_version=version,
        suggestions=[
            region([200, 200, 100, 100], square(200, 200, 100), 0.95),
            region([900, 600, 120, 120], square(900, 600, 120), 0.85),
            region([1500, 300, 80, 80], square(1500, 300, 80), 0.75),
            region([2000, 1200, 90, 90], square(2000, 1200, 90), 0.65),
        ],
    )
    from django.contrib.auth import get_user_model

    ann = get_user_model().objects.get(username="ann")
    label = Annotation.objects.create(
        image=image,
        category=crack,
        kind="box",
        geometry={"type": "box", "x": 50, "y": 60, "w": 30, "h": 20},
        author=ann,
    )
    return {
        "project": project,
        "image": image,
        "porosity": porosity,
        "crack": crack,
        "label": label,
    }


def wait_item(page, prefix):
    """Wait until the item is shown and every decision sent so far is answered (the page moves
    on before the server answers; the database is checked after)."""
    page.wait_for_function(
        f"() => (document.getElementById('viewer').dataset.item || '').startsWith('{prefix}')"
    )
    page.wait_for_function(
        "() => (document.getElementById('viewer').dataset.pending || '0') === '0'"
    )


def test_review_queue_by_keyboard(page, live_server, queue):
    project, crack, porosity = queue["project"], queue["crack"], queue["porosity"]
    s = list(Suggestion.objects.order_by("-score"))
    login(page, "rev")
    page.goto(f"/projects/{project.pk}/review/")
    page.locator("#viewer[data-loaded]").wait_for()
    wait_item(page, f"suggestion:{s[0].pk}")

    # ? lists the keys; A pressed while reading does not accept anything; Esc closes the list
    page.keyboard.press("?")
    page.locator("#keys-dialog", has_text="reject with a reason").wait_for()
    page.keyboard.press("a")
    page.keyboard.press("Escape")
    page.locator("#keys-dialog").wait_for(state="hidden")
    assert Suggestion.objects.get(pk=s[0].pk).status == "pending"

    # an anomaly suggestion proposes no category, and none is preselected: A asks for one
    # (a preselected first category once made every accept of a session the same, wrong, one)
    assert page.locator('#categories .cat[aria-pressed="true"]').count() == 0
    page.keyboard.press("a")
    page.locator("#toast", has_text="Which defect is it? Press 1-").wait_for()
    assert Suggestion.objects.get(pk=s[0].pk).status == "pending"

    # A: accept the best one with category 1 ('crack' sorts first)
    page.keyboard.press("1")
    page.keyboard.press("a")
    wait_item(page, f"suggestion:{s[1].pk}")
    # the next one starts without a category again
    assert page.locator('#categories .cat[aria-pressed="true"]').count() == 0

    # E: edit the second (drag it), then A: accepted with the new shape, as 'porosity' (key 2)
    page.keyboard.press("2")
    page.keyboard.press("e")
    page.locator('#viewer[data-mode="edit"]').wait_for()
    page.locator("#viewer .a9s-annotation.selected .a9s-shape-handle").wait_for()
    centre = page.evaluate(
        "() => { const v = window.loupeReview.viewer; const p = v.viewport.imageToWindowCoordinates(new OpenSeadragon.Point(960, 660)); return {x: p.x, y: p.y}; }"
    )
    page.mouse.move(centre["x"], centre["y"])
    page.mouse.down()
    page.mouse.move(centre["x"] + 40, centre["y"] + 25, steps=6)
    page.mouse.up()
    page.keyboard.press("a")
    wait_item(page, f"suggestion:{s[2].pk}")

    # R then 2: rejected as a reflection
    page.keyboard.press("r")
    page.locator('#viewer[data-mode="reject"]').wait_for()
    page.keyboard.press("2")
    wait_item(page, f"suggestion:{s[3].pk}")

    # N: skip the last suggestion; then the annotator's label: R sends it back with a comment
    page.keyboard.press("n")
    wait_item(page, f"label:{queue['label'].pk}")
    page.keyboard.press("r")
    page.locator("#return-comment").fill("the crack continues to the right")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.getElementById('tally').textContent.includes('1 sent back')"
    )
    assert "2 accepted · 1 rejected" in page.locator("#tally").inner_text()

    for x in s:
        x.refresh_from_db()
    assert [x.status for x in s] == ["accepted", "accepted", "rejected", "pending"]
    first = Annotation.objects.get(suggestion=s[0])
    assert first.category == crack and first.geometry == s[0].geometry
    second = Annotation.objects.get(suggestion=s[1])
    assert second.category == porosity and second.geometry != s[1].geometry
    edit = Review.objects.get(suggestion=s[1])
    assert (
        edit.action == "edit_accept"
        and edit.geometry_before == s[1].geometry
        and edit.geometry_after == second.geometry
    )
    moved_x = (
        [p[0] for p in second.geometry["points"]]
        if second.geometry["type"] == "polygon"
        else [second.geometry["x"]]
    )
    assert min(moved_x) > 900  # dragged right
    reject = Review.objects.get(suggestion=s[2])
    assert (reject.action, reject.reason, reject.decided_by.username) == (
        "reject",
        "reflection",
        "rev",
    )
    label = Annotation.objects.get(pk=queue["label"].pk)
    assert label.review_status == "returned"
    assert Review.objects.get(annotation=label).comment == "the crack continues to the right"


def test_one_item_for_a_defect_both_models_found(page, live_server, queue):
    """An anomaly region and a detector box at one place: one item that names both sources and
    preselects the detector's category; A accepts both."""
    project, image, porosity = queue["project"], queue["image"], queue["porosity"]
    detector = ModelVersion.objects.create(
        project=project, number=1, kind="detector", architecture="ppyoloe-sod-s", status="ready"
    )
    run = InspectionRun.objects.create(
        project=project, model_version=detector, image_ids=[image.pk]
    )
    (box,) = suggestions_store(
        image=image,
        run=run,
        model_version=detector,
        suggestions=[
            SuggestionIn(box=(210, 210, 80, 80), score=0.8, category="porosity", category_score=0.8)
        ],
    )
    top = Suggestion.objects.filter(model_version__kind="anomaly").order_by("-score")[0]
    assert box.same_as == top
    login(page, "rev")
    page.goto(f"/projects/{project.pk}/review/?source=detector")
    page.locator("#viewer[data-loaded]").wait_for()
    wait_item(page, f"suggestion:{top.pk}")
    assert "anomaly model and detector · porosity" in page.locator("#item-title").inner_text()
    assert (
        "also found by ppyoloe-sod-s v1 (porosity 0.80)" in page.locator("#item-info").inner_text()
    )
    chosen = page.locator('#categories .cat[aria-pressed="true"]')
    assert chosen.get_attribute("data-category") == str(porosity.pk)
    page.keyboard.press("a")
    page.wait_for_function("() => document.getElementById('tally').textContent.startsWith('1 acc')")
    assert set(
        Suggestion.objects.filter(pk__in=[top.pk, box.pk]).values_list("status", "category")
    ) == {("accepted", porosity.pk)}
    assert Annotation.objects.filter(suggestion=top, category=porosity).count() == 1


def test_a_refused_decision_brings_the_item_back_and_a_taken_one_is_skipped(
    page, live_server, queue
):
    """The queue moves on before the server answers. When the server refuses (here: the
    category was deleted meanwhile), the item comes back with the reason and nothing is
    decided; when someone else decided it first, the page says so and stays moved on."""
    project, porosity = queue["project"], queue["porosity"]
    s = list(Suggestion.objects.order_by("-score"))
    login(page, "rev")
    page.goto(f"/projects/{project.pk}/review/")
    wait_item(page, f"suggestion:{s[0].pk}")
    porosity.delete()  # behind the page's back; its button (key 2) stays
    page.keyboard.press("2")
    page.keyboard.press("a")
    page.locator("#toast", has_text="Not decided:").wait_for()
    assert "The item is back." in page.locator("#toast").inner_text()
    wait_item(page, f"suggestion:{s[0].pk}")
    assert Suggestion.objects.get(pk=s[0].pk).status == "pending"
    assert "0 accepted" in page.locator("#tally").inner_text()

    # someone else rejects the first item meanwhile: R, Enter says so and the queue goes on
    Suggestion.objects.filter(pk=s[0].pk).update(status="rejected")
    page.keyboard.press("r")
    page.keyboard.press("Enter")
    page.locator("#toast", has_text="already").wait_for()
    wait_item(page, f"suggestion:{s[1].pk}")
    assert "0 rejected" in page.locator("#tally").inner_text()


def test_a_phone_sized_window_can_review_by_touch(browser, live_server, queue):
    """At 390 px wide the viewer was 32 px wide. Now the side panel goes under it: the item is
    visible across the screen and the on-screen buttons decide."""
    project = queue["project"]
    s = list(Suggestion.objects.order_by("-score"))
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        has_touch=True,
        is_mobile=True,
        base_url=live_server.url,
    )
    page = context.new_page()
    try:
        login(page, "rev")
        page.goto(f"/projects/{project.pk}/review/")
        wait_item(page, f"suggestion:{s[0].pk}")
        viewer = page.locator("#viewer").bounding_box()
        assert viewer["width"] >= 350 and viewer["height"] >= 260, viewer
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390 + 1
        page.wait_for_function(
            "() => window.loupeReview.viewer.world.getItemAt(0).getFullyLoaded()"
        )
        shot(page, "first-day-review-phone")
        page.locator("#categories .cat", has_text="porosity").tap()
        page.locator('[data-key="a"]').tap()
        wait_item(page, f"suggestion:{s[1].pk}")
        page.locator('[data-key="r"]').tap()
        page.locator("[data-reason]").first.tap()
        wait_item(page, f"suggestion:{s[2].pk}")
        assert [x.status for x in Suggestion.objects.order_by("-score")][:2] == [
            "accepted",
            "rejected",
        ]
    finally:
        context.close()


def test_the_reviewer_picks_a_model_version_from_the_menu(page, live_server, queue):
    """Issue #17: after a second model version the queue mixed both versions' suggestions; the
    Model menu shows each version with what it has pending and keeps the queue to one."""
    project, image = queue["project"], queue["image"]
    v2 = ModelVersion.objects.create(
        project=project, number=2, architecture="patchcore", status="ready"
    )
    run = InspectionRun.objects.create(project=project, model_version=v2, image_ids=[image.pk])
    mine = suggestions_store(
        image=image,
        run=run,
        model_version=v2,
        suggestions=[
            region([400, 1200, 60, 60], square(400, 1200, 60), 0.55),
            region([1200, 1300, 70, 70], square(1200, 1300, 70), 0.52),
        ],
    )
    login(page, "rev")
    page.goto(f"/projects/{project.pk}/review/")
    page.locator("#viewer[data-loaded]").wait_for()
    shot(page, "review-queue-filters")
    page.select_option(
        "#queue-source select[name=model_version]", label="anomaly v2 (patchcore) · 2 pending"
    )
    page.click("#queue-source button[type=submit]")
    page.wait_for_url(f"**/review/?*model_version={v2.pk}*")
    page.locator("#viewer[data-loaded]").wait_for()
    wait_item(page, f"suggestion:{mine[0].pk}")
    assert "2 suggestions in this batch" in page.locator("#queue-count").inner_text()
    page.keyboard.press("n")
    wait_item(page, f"suggestion:{mine[1].pk}")
