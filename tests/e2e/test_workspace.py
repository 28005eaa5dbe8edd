"""The labeling workspace in a real browser on a 6000x4000 image: draw, relabel, undo, navigate,
reload, and check the stored full-resolution coordinates."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from annotations.models import Annotation
from annotations.services.categories import category_create
from inspection.models import Image, ImageHeatmap
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.projects import project_create
from tests.conftest import PASSWORD

pytestmark = pytest.mark.e2e


def part_photo(width: int, height: int, seed: int) -> bytes:
    """Something like a part on a bench: smooth shading, texture, a dark scratch."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 110 + 50 * np.sin(xx / 900.0 + seed) * np.cos(yy / 700.0)
    rng = np.random.default_rng(seed)
    img = np.clip(base[..., None] + rng.normal(0, 5, (height, width, 3)), 0, 255).astype(np.uint8)
    img[2000:2006, 2900:3300] = 30
    buf = io.BytesIO()
    PILImage.fromarray(img).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def heatmap_png(width: int, height: int) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = np.exp(
        -(
            ((xx - width * 0.52) / (width * 0.04)) ** 2
            + ((yy - height * 0.5) / (height * 0.03)) ** 2
        )
    )
    buf = io.BytesIO()
    PILImage.fromarray((blob * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def workspace_images(transactional_db, make_user, tmp_path):
    user = make_user("labeler")
    project = project_create(user=user, name="Housings")
    scratch = category_create(user=user, project=project, name="scratch", color="#ff3b30")
    dent = category_create(user=user, project=project, name="dent", color="#34c759")
    images = []
    for i, (w, h) in enumerate([(6000, 4000), (3000, 2000)]):
        path = tmp_path / f"housing-{i}.jpg"
        path.write_bytes(part_photo(w, h, seed=i))
        outcome = image_store_one(
            project=project, user=user, incoming=IncomingFile(path.name, path)
        )
        image = Image.objects.get(pk=outcome.image_id)
        image_build_derivatives(image=image)
        images.append(image)
    name = default_storage.save("heatmaps/test.png", ContentFile(heatmap_png(750, 500)))
    ImageHeatmap.objects.create(image=images[0], path=name, label="EfficientAD-S (test)")
    return {"user": user, "project": project, "images": images, "scratch": scratch, "dent": dent}


def login(page, username):
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def open_workspace(page, image_id):
    page.goto(f"/images/{image_id}/")
    page.locator("#viewer[data-annotations-loaded]").wait_for()
    page.locator("#viewer[data-tile-loaded]").wait_for()


def wait_saved(page, shapes=None):
    """Wait until `shapes` shapes exist (Annotorious reports a new one a tick after the mouse
    is released) and every change has reached the server."""
    if shapes is not None:
        page.wait_for_function(
            f"() => window.loupeWorkspace.anno.getAnnotations().length === {shapes}"
        )
    page.wait_for_function("() => window.loupeWorkspace.idle()")
    page.locator('#save-status[data-state="saved"]').wait_for()


def zoom_to(page, x, y, pixel_ratio):
    """Centre image point (x, y) with `pixel_ratio` screen pixels per image pixel; returns once
    the viewer (and the shape layer with it) has drawn the new view."""
    page.evaluate(
        """async ([x, y, r]) => { const ws = window.loupeWorkspace; const v = ws.viewer.viewport;
            v.zoomTo(v.imageToViewportZoom(r), null, true);
            v.panTo(v.imageToViewportCoordinates(x, y), true);
            await ws.drawn(); }""",
        [x, y, pixel_ratio],
    )


def pause(page):
    """Annotorious merges changes less than 250 ms apart into one undo step: wait until the last
    change is older than that, as a person's pause between two changes would be."""
    page.wait_for_function("() => window.loupeWorkspace.sinceLastChange() > 300")


def to_image(page, sx, sy):
    return page.evaluate("([x, y]) => window.loupeWorkspace.windowToImage(x, y)", [sx, sy])


def viewer_box(page):
    return page.locator("#viewer").bounding_box()


def shot(page, name, full_page=False):
    folder = os.environ.get("LOUPE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=full_page)


def test_draw_relabel_undo_navigate_reload(page, live_server, workspace_images):
    first, second = workspace_images["images"]
    scratch, dent = workspace_images["scratch"], workspace_images["dent"]
    login(page, "labeler")
    open_workspace(page, first.pk)
    vb = viewer_box(page)
    cx, cy = vb["x"] + vb["width"] / 2, vb["y"] + vb["height"] / 2

    # zoom to the highest magnification on the scratch and drag a box around it
    zoom_to(page, 3100, 2003, 16)
    page.keyboard.press("b")
    start, end = (cx - 200, cy - 120), (cx + 180, cy + 100)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(cx, cy, steps=5)
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    wait_saved(page, shapes=1)
    want_box = (to_image(page, *start), to_image(page, *end))

    # a polygon elsewhere, at 4x, closed by clicking its first point
    zoom_to(page, 1500, 1200, 4)
    page.keyboard.press("g")
    pts = [(cx - 150, cy - 100), (cx + 160, cy - 80), (cx + 120, cy + 130), (cx - 130, cy + 90)]
    for p in pts:
        page.mouse.click(*p)
    page.mouse.click(*pts[0])
    wait_saved(page, shapes=2)
    want_poly = [to_image(page, *p) for p in pts]

    # a third shape that we then undo (a pause first, so that it is an undo step of its own)
    pause(page)
    page.keyboard.press("b")
    page.wait_for_function(
        "() => window.loupeWorkspace.anno.isDrawingEnabled() && !window.loupeWorkspace.anno.getSelected().length"
    )
    page.mouse.move(cx - 380, cy - 260)  # top left: the minimap sits bottom right
    page.mouse.down()
    page.mouse.move(cx - 300, cy - 190, steps=4)
    page.mouse.up()
    wait_saved(page, shapes=3)
    assert Annotation.objects.filter(image=first).count() == 3
    pause(page)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+z")
    wait_saved(page, shapes=2)
    assert Annotation.objects.filter(image=first).count() == 2

    # new shapes took the first category, 'dent' (key 1); select the box from the list and
    # relabel it with the key '2' ('scratch')
    assert set(Annotation.objects.filter(image=first).values_list("category", flat=True)) == {
        dent.pk
    }
    page.keyboard.press("v")
    page.locator("#shape-list li", has_text="box").click()
    page.keyboard.press("2")
    page.keyboard.press("Escape")
    wait_saved(page)
    box = Annotation.objects.get(image=first, kind="box")
    assert box.category == scratch and box.version >= 2

    # heatmap overlay on, then a screenshot for the docs
    page.keyboard.press("h")
    page.locator('#viewer[data-heatmap="shown"]').wait_for()
    page.evaluate(
        "async () => { window.loupeWorkspace.viewer.viewport.goHome(true); await window.loupeWorkspace.loaded(); }"
    )
    shot(page, "workspace-heatmap")

    # next image and back, then reload: the shapes come back from the server
    page.keyboard.press("n")
    page.wait_for_url(f"**/images/{second.pk}/")
    page.locator("#viewer[data-annotations-loaded]").wait_for()
    assert page.locator("#shape-list li").count() == 0
    page.keyboard.press("p")
    page.wait_for_url(f"**/images/{first.pk}/")
    page.reload()
    page.locator("#viewer[data-annotations-loaded]").wait_for()
    items = page.locator("#shape-list li")
    assert items.count() == 2
    assert "scratch" in items.nth(0).inner_text() and "labeler" in items.nth(0).inner_text()
    assert "dent" in items.nth(1).inner_text()

    # stored coordinates are full-resolution pixels, within 1 px of where the mouse was
    g = Annotation.objects.get(image=first, kind="box").geometry
    (x0, y0), (x1, y1) = (want_box[0]["x"], want_box[0]["y"]), (want_box[1]["x"], want_box[1]["y"])
    assert abs(g["x"] - x0) <= 1 and abs(g["y"] - y0) <= 1
    assert abs(g["x"] + g["w"] - x1) <= 1 and abs(g["y"] + g["h"] - y1) <= 1
    assert 3050 < g["x"] < 3100 and 1990 < g["y"] < 2003  # the scratch is inside
    poly = Annotation.objects.get(image=first, kind="polygon")
    assert poly.category == dent
    got = poly.geometry["points"]
    assert len(got) == 4
    for (gx, gy), w in zip(got, want_poly, strict=True):
        assert abs(gx - w["x"]) <= 1 and abs(gy - w["y"]) <= 1


def draw_box(page, start, end):
    page.keyboard.press("b")
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=4)
    page.mouse.move(*end, steps=4)
    page.mouse.up()


def test_next_and_previous_switch_images_without_a_page_load(
    page, live_server, workspace_images, tmp_path
):
    """N / P (issue #17: <= 500 ms): the other image comes on screen inside the open page, with
    its own shapes, heatmap state, bar and address; new shapes and undo go to the image on
    screen; the browser's back button comes back; an image without a zoomable view yet is opened
    as a page (which says so)."""
    first, second = workspace_images["images"]
    # a third image whose zoomable view is not made yet
    path = tmp_path / "housing-2.jpg"
    path.write_bytes(part_photo(800, 600, seed=2))
    third = image_store_one(
        project=workspace_images["project"],
        user=workspace_images["user"],
        incoming=IncomingFile(path.name, path),
    ).image_id
    login(page, "labeler")
    open_workspace(page, first.pk)
    vb = viewer_box(page)
    cx, cy = vb["x"] + vb["width"] / 2, vb["y"] + vb["height"] / 2
    draw_box(page, (cx - 120, cy - 80), (cx - 20, cy))
    wait_saved(page, shapes=1)
    page.keyboard.press("h")
    page.locator('#viewer[data-heatmap="shown"]').wait_for()
    page.evaluate("() => { window.noPageLoad = true; }")  # gone if a new page loads

    # move the box and go on at once: Annotorious reports the move only as the box is
    # deselected, a moment later; the move is stored on this image all the same
    was = Annotation.objects.get(image=first).geometry
    page.keyboard.press("v")
    page.mouse.click(cx - 70, cy - 40)
    page.wait_for_function("() => window.loupeWorkspace.anno.getSelected().length === 1")
    page.mouse.move(cx - 70, cy - 40)
    page.mouse.down()
    page.mouse.move(cx - 40, cy - 40, steps=5)
    page.mouse.up()
    # a comment typed and not added stays with its image (it was posted on the next one)
    page.fill("#comment-text", "half a thought")
    page.click("#next-image")  # the bar's arrow (N would type into the comment)
    page.wait_for_url(f"**/images/{second.pk}/")
    page.locator("#toast", has_text="Your comment on housing-0.jpg was not added").wait_for()
    assert page.input_value("#comment-text") == ""
    moved = Annotation.objects.get(image=first).geometry
    assert moved["x"] > was["x"] + 10 and moved["w"] == was["w"], (was, moved)
    page.locator("#viewer[data-annotations-loaded]").wait_for()
    page.wait_for_function("() => window.loupeWorkspace.loaded().then(() => true)")
    assert page.evaluate("() => window.noPageLoad") is True
    assert page.locator("#ws-name").inner_text() == "housing-1.jpg"
    assert "3000×2000" in page.locator("#ws-details").inner_text()
    assert page.title().startswith("housing-1.jpg")
    assert page.locator("#shape-list li").count() == 0
    # the second image has no heatmap: the switch is off for it, the choice is kept
    assert page.locator("#heatmap-toggle").is_disabled()
    assert page.locator("#viewer[data-heatmap]").count() == 0
    assert page.locator("#next-image").get_attribute("href").endswith(f"/images/{third}/")
    assert page.locator("#prev-image").get_attribute("href").endswith(f"/images/{first.pk}/")

    # a box drawn now belongs to the second image; undo stays on it
    page.keyboard.press("Escape")
    draw_box(page, (cx + 20, cy + 20), (cx + 140, cy + 100))
    wait_saved(page, shapes=1)
    assert Annotation.objects.filter(image=second).count() == 1
    assert Annotation.objects.filter(image=first).count() == 1
    pause(page)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+z")
    wait_saved(page, shapes=0)
    assert Annotation.objects.filter(image=second).count() == 0
    page.keyboard.press("Control+z")  # nothing left to undo on this image: the first's box stays
    page.keyboard.press("Control+y")
    wait_saved(page, shapes=1)
    page.keyboard.press("Control+y")  # nothing left to redo
    wait_saved(page, shapes=1)
    assert Annotation.objects.filter(image=second).count() == 1
    assert Annotation.objects.filter(image=first).count() == 1

    # the browser's back button: the first image again, its box and its heatmap
    page.go_back()
    page.wait_for_url(f"**/images/{first.pk}/")  # at once: the page then switches to it
    page.locator("#ws-name", has_text="housing-0.jpg").wait_for()
    page.locator("#viewer[data-annotations-loaded]").wait_for()
    page.locator('#viewer[data-heatmap="shown"]').wait_for()
    assert page.evaluate("() => window.noPageLoad") is True
    assert page.locator("#shape-list li").count() == 1
    page.keyboard.press("p")
    page.locator("#toast", has_text="first image of the list").wait_for()

    # the image without a zoomable view yet: N loads its page, which says so
    page.keyboard.press("n")
    page.wait_for_url(f"**/images/{second.pk}/")
    page.locator("#viewer[data-annotations-loaded]").wait_for()
    assert page.evaluate("() => window.noPageLoad") is True
    page.keyboard.press("n")
    page.wait_for_url(f"**/images/{third}/")
    page.locator("#viewer-pending").wait_for()
    assert page.evaluate("() => window.noPageLoad") is None


def test_offline_edits_are_queued_and_conflicts_are_shown(
    page, live_server, workspace_images, make_user, client_for, settings
):
    settings.LOUPE_WORKSPACE_POLL_SECONDS = 3600  # the page must not see the change by polling
    from inspection.models import Role
    from inspection.services.projects import member_set

    first = workspace_images["images"][0]
    dent, scratch = workspace_images["dent"], workspace_images["scratch"]
    make_user("colleague")
    member_set(
        user=workspace_images["user"],
        project=workspace_images["project"],
        username="colleague",
        role=Role.REVIEWER,  # a reviewer may change someone else's label (annotators may not)
    )
    login(page, "labeler")
    open_workspace(page, first.pk)
    vb = viewer_box(page)
    cx, cy = vb["x"] + vb["width"] / 2, vb["y"] + vb["height"] / 2
    zoom_to(page, 3000, 2000, 2)

    # the network drops: the new box waits in the queue, and the page says so
    page.context.set_offline(True)
    page.keyboard.press("b")
    page.mouse.move(cx - 100, cy - 80)
    page.mouse.down()
    page.mouse.move(cx + 100, cy + 60, steps=5)
    page.mouse.up()
    page.wait_for_function("() => window.loupeWorkspace.anno.getAnnotations().length === 1")
    page.locator('#save-status[data-state="offline"]').wait_for()
    assert "server unreachable" in page.locator("#save-status").inner_text()

    # a second box, drawn and deleted again while offline: it never reaches the server, and
    # the page does not wait for it forever once the network is back
    page.keyboard.press("b")
    page.wait_for_function(
        "() => window.loupeWorkspace.anno.isDrawingEnabled() && !window.loupeWorkspace.anno.getSelected().length"
    )
    page.mouse.move(cx - 380, cy - 260)
    page.mouse.down()
    page.mouse.move(cx - 300, cy - 190, steps=4)
    page.mouse.up()
    page.wait_for_function("() => window.loupeWorkspace.anno.getAnnotations().length === 2")
    page.wait_for_function("() => window.loupeWorkspace.anno.getSelected().length === 1")
    page.keyboard.press("Delete")
    page.wait_for_function("() => window.loupeWorkspace.anno.getAnnotations().length === 1")
    assert Annotation.objects.filter(image=first).count() == 0
    page.context.set_offline(False)
    wait_saved(page)
    assert Annotation.objects.filter(image=first).count() == 1
    box = Annotation.objects.get(image=first)
    assert box.author.username == "labeler"

    # after a reload (the box now comes from the server), offline again: the box is deleted and
    # the delete undone before it could be sent; back online it is still the same stored box,
    # not deleted and stored again
    page.reload()
    page.locator("#viewer[data-annotations-loaded]").wait_for()
    page.context.set_offline(True)
    page.keyboard.press("v")
    page.locator("#shape-list li").first.click()
    page.keyboard.press("Delete")
    page.wait_for_function("() => window.loupeWorkspace.anno.getAnnotations().length === 0")
    page.locator('#save-status[data-state="offline"][data-pending="1"]').wait_for()
    page.keyboard.press("Control+z")
    page.wait_for_function("() => window.loupeWorkspace.anno.getAnnotations().length === 1")
    # the delete is withdrawn: nothing is left to send, even before the network is back
    page.locator('#save-status[data-state="saved"][data-pending="0"]').wait_for()
    page.context.set_offline(False)
    wait_saved(page)
    assert list(Annotation.objects.filter(image=first).values_list("pk", flat=True)) == [box.pk]
    page.keyboard.press("Escape")

    # a colleague moves the same box meanwhile (before our page polls); our relabel is refused,
    # we are told, and we see their change
    from django.contrib.auth import get_user_model

    colleague = get_user_model().objects.get(username="colleague")
    current = Annotation.objects.get(pk=box.pk)
    moved = {"type": "box", "x": 100.0, "y": 120.0, "w": 40.0, "h": 30.0}
    r = client_for(colleague).patch(
        f"/api/annotations/{box.pk}/",
        {"version": current.version, "geometry": moved},
        format="json",
    )
    assert r.status_code == 200
    page.keyboard.press("v")
    page.locator("#shape-list li").first.click()
    page.keyboard.press("2")  # relabel to 'scratch', made on the old version
    page.keyboard.press("Escape")
    toast = page.locator("#toast")
    toast.wait_for()
    assert "colleague changed this annotation first" in toast.inner_text()
    wait_saved(page)
    stored = Annotation.objects.get(pk=box.pk)
    assert stored.category == dent and stored.geometry == moved and stored.updated_by == colleague
    item = page.locator("#shape-list li").first
    assert "dent" in item.inner_text() and "edited by colleague" in item.inner_text()
    shown = page.evaluate(
        "() => window.loupeWorkspace.anno.getAnnotations()[0].target.selector.geometry"
    )
    assert (shown["x"], shown["y"], shown["w"], shown["h"]) == (100, 120, 40, 30)
    assert scratch.pk != dent.pk


def test_an_annotator_finds_what_came_back_to_them(page, live_server, workspace_images, make_user):
    """The grid filters "with labels sent back to me"; the shapes list says approved / sent back."""
    from annotations.services.labels import annotation_create
    from annotations.services.review import annotation_approve, annotation_return
    from inspection.models import Role
    from inspection.services.projects import member_set

    user, project = workspace_images["user"], workspace_images["project"]
    first, second = workspace_images["images"]
    make_user("rita")
    member_set(user=user, project=project, username="rita", role=Role.REVIEWER)
    from django.contrib.auth import get_user_model

    rita = get_user_model().objects.get(username="rita")
    box = {"type": "box", "x": 100, "y": 100, "w": 80, "h": 60}
    kept = annotation_create(
        user=user, image=first, category_id=workspace_images["scratch"].pk, geometry=box
    )
    back = annotation_create(
        user=user, image=first, category_id=workspace_images["dent"].pk, geometry=box
    )
    annotation_create(
        user=user, image=second, category_id=workspace_images["dent"].pk, geometry=box
    )
    annotation_approve(user=rita, annotation=kept)
    annotation_return(user=rita, annotation=back, comment="this is a scratch, not a dent")

    login(page, "labeler")
    page.goto(f"/projects/{project.pk}/?state=returned")
    page.locator(f"a.tile[data-image='{first.pk}']").wait_for()
    assert page.locator(f"a.tile[data-image='{second.pk}']").count() == 0
    assert page.locator("select[name=state]").input_value() == "returned"
    open_workspace(page, first.pk)
    returned = page.locator("#shape-list li[data-review='returned']")
    returned.wait_for()
    assert "sent back" in returned.inner_text() and "dent" in returned.inner_text()
    assert "approved" in page.locator("#shape-list li[data-review='approved']").inner_text()


def test_a_box_dragged_onto_the_minimap_is_kept(page, live_server, workspace_images):
    """Issue #17: a box dragged from the image onto the minimap (bottom right) was lost: the
    minimap took the mouse-up, the outline stayed and the next click discarded it."""
    first = workspace_images["images"][0]
    login(page, "labeler")
    open_workspace(page, first.pk)
    vb = viewer_box(page)
    nav = page.evaluate(
        "() => { const r = window.loupeWorkspace.viewer.navigator.element.getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; }"
    )
    assert nav["width"] > 0 and nav["x"] > vb["x"] + vb["width"] / 2  # bottom right
    page.keyboard.press("b")
    start = (vb["x"] + vb["width"] / 2, vb["y"] + vb["height"] / 2)
    end = (nav["x"] + nav["width"] / 2, nav["y"] + nav["height"] / 2)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=5)
    page.mouse.move(*end, steps=5)
    page.mouse.up()
    wait_saved(page, shapes=1)
    box = Annotation.objects.get(image=first)
    top_left, bottom_right = to_image(page, *start), to_image(page, *end)
    assert box.geometry["x"] == pytest.approx(top_left["x"], abs=3)
    assert box.geometry["y"] == pytest.approx(top_left["y"], abs=3)
    assert box.geometry["x"] + box.geometry["w"] == pytest.approx(bottom_right["x"], abs=3)
    assert page.locator("#shape-list li").count() == 1
    # the minimap still moves the view once the drawing is done
    page.keyboard.press("v")
    before = page.evaluate("() => window.loupeWorkspace.viewer.viewport.getCenter().x")
    page.mouse.click(nav["x"] + 5, nav["y"] + 5)
    page.wait_for_function(
        f"() => Math.abs(window.loupeWorkspace.viewer.viewport.getCenter(true).x - {before}) > 0.01"
    )


def test_question_mark_shows_the_keys_and_holds_them_back(page, live_server, workspace_images):
    first = workspace_images["images"][0]
    login(page, "labeler")
    open_workspace(page, first.pk)
    page.keyboard.press("v")
    page.keyboard.press("?")
    dialog = page.locator("#keys-dialog")
    dialog.wait_for(state="visible")
    assert "next / previous image" in dialog.inner_text()
    page.keyboard.press("b")  # read about, not acted on
    assert page.get_attribute("#viewer", "data-tool") == "select"
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.keyboard.press("b")
    assert page.get_attribute("#viewer", "data-tool") == "rectangle"
    page.keyboard.press("?")
    dialog.wait_for(state="visible")
    page.keyboard.press("?")
    dialog.wait_for(state="hidden")
