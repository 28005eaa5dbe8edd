"""Reference images in a real browser with a real worker. The workspace: the alignment is
reported, F lays the aligned reference over the image (the defect disappears where the reference
shows), the swipe slider limits it to the left part, D shows the difference over the defect, and
the reference is unset, found again (the most similar reference that aligns) and set by hand from
the side panel (the worker aligns it anew). The change
detector: calibrated and run from the models page, its suggestion looked at with F / D and
accepted in the review queue."""

import io
import time

import numpy as np
import pytest
from PIL import Image as PILImage

from inspection.models import Image
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.projects import project_create
from inspection.services.references import image_set_reference
from tests.e2e.test_workspace import login

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SIZE = (1600, 1200)
DEFECT = (1100, 600, 45)  # x, y, radius of a dark pit on the tested part only
LEFT_MARK = (400, 600, 45)  # a bright spot, also only on the tested part


def textured(seed: int = 4) -> np.ndarray:
    """A machined surface: coarse blurred texture, larger than the picture (for the shift)."""
    rng = np.random.default_rng(seed)
    w, h = SIZE[0] + 40, SIZE[1] + 40
    coarse = rng.integers(90, 200, (h // 16, w // 16), dtype=np.uint8)
    big = np.array(PILImage.fromarray(coarse).resize((w, h), PILImage.BILINEAR))
    return big


def jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array).convert("RGB").save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture
def paired(transactional_db, make_user, tmp_path):
    user = make_user("inspector")
    project = project_create(user=user, name="Machined plates")
    big = textured()
    w, h = SIZE
    reference = big[20 : 20 + h, 20 : 20 + w]
    tested = big[23 : 23 + h, 25 : 25 + w].copy()  # the part sits 5 px left, 3 px up
    yy, xx = np.mgrid[0:h, 0:w]
    x, y, r = DEFECT
    tested[(xx - x) ** 2 + (yy - y) ** 2 < r * r] = 20
    x, y, r = LEFT_MARK
    tested[(xx - x) ** 2 + (yy - y) ** 2 < r * r] = 250
    images = {}
    for name, array in (("plate-7.jpg", tested), ("plate-golden.jpg", reference)):
        path = tmp_path / name
        path.write_bytes(jpeg(array))
        out = image_store_one(project=project, user=user, incoming=IncomingFile(name, path))
        images[name] = Image.objects.get(pk=out.image_id)
        image_build_derivatives(image=images[name])
    return {"user": user, "image": images["plate-7.jpg"], "reference": images["plate-golden.jpg"]}


def brightness(page, x: float, y: float, half: int = 6) -> float:
    """Mean grey level of the screen around image pixel (x, y)."""
    p = page.evaluate("([x, y]) => window.loupeWorkspace.imageToWindow(x, y)", [x, y])
    shot = page.screenshot(
        clip={"x": p["x"] - half, "y": p["y"] - half, "width": 2 * half, "height": 2 * half}
    )
    return float(np.asarray(PILImage.open(io.BytesIO(shot)).convert("L")).mean())


def settle(page):
    page.evaluate("() => window.loupeWorkspace.loaded()")
    page.wait_for_timeout(300)


def test_flicker_swipe_and_difference_against_the_reference(page, celery_worker, paired):
    image, reference = paired["image"], paired["reference"]
    pending = image_set_reference(user=paired["user"], image=image, reference=reference)
    assert pending.alignment == {"status": "pending"}
    login(page, "inspector")
    page.goto(f"/images/{image.pk}/")
    page.locator("#viewer[data-tile-loaded]").wait_for()
    status = page.locator("#reference-status")
    # the page polls while the worker aligns
    status.filter(has_text="Aligned with plate-golden.jpg").wait_for(timeout=60_000)
    assert "inliers" in status.inner_text() or "residual" in status.inner_text()
    page.locator("#viewer[data-reference=hidden]").wait_for()
    settle(page)
    x, y, _ = DEFECT
    lx, ly, _ = LEFT_MARK
    dark, bright = brightness(page, x, y), brightness(page, lx, ly)
    assert dark < 60 and bright > 200, (dark, bright)

    page.locator("#viewer").focus()
    page.keyboard.press("f")  # flicker: the reference, where neither mark is
    page.locator("#viewer[data-reference=shown]").wait_for()
    settle(page)
    assert brightness(page, x, y) > 80 and brightness(page, lx, ly) < 200
    page.keyboard.press("f")
    page.locator("#viewer[data-reference=hidden]").wait_for()
    settle(page)
    assert brightness(page, x, y) < 60

    # swipe: the reference over the left 40 % only -> the left mark goes, the pit stays
    page.keyboard.press("f")
    page.locator("#reference-swipe").fill("40")
    settle(page)
    assert brightness(page, lx, ly) < 200 and brightness(page, x, y) < 60
    page.locator("#reference-swipe").fill("100")
    page.locator("#viewer").focus()  # keys go to the view again (also from the slider)
    page.keyboard.press("f")
    page.locator("#viewer[data-reference=hidden]").wait_for()

    # the difference: coloured where the pit is, clear on the unchanged surface around it
    plain = brightness(page, x - 150, y)
    page.keyboard.press("d")
    page.locator("#viewer[data-difference=shown]").wait_for()
    settle(page)
    assert brightness(page, x, y) > 60  # the colour ramp lights up the pit
    assert abs(brightness(page, x - 150, y) - plain) < 25
    page.keyboard.press("d")
    page.locator("#viewer[data-difference=hidden]").wait_for()

    # unpair and pair again from the side panel; the worker aligns again
    select = page.locator("#reference-select")
    select.select_option("")
    status.filter(has_text="No reference").wait_for()
    assert page.locator("#reference-toggle").is_disabled()
    image.refresh_from_db()
    assert image.reference is None
    # the panel finds it again: the most similar reference that aligns
    page.locator("#reference-find").click()
    status.filter(has_text="Aligned with plate-golden.jpg").wait_for(timeout=60_000)
    assert page.locator("#reference-toggle").is_enabled()
    image.refresh_from_db()
    assert image.reference_id == reference.pk and image.alignment["proposed"] is True
    # and set by hand from the menu
    select.select_option("")
    status.filter(has_text="No reference").wait_for()
    select.select_option(str(reference.pk))
    status.filter(has_text="Aligned with plate-golden.jpg").wait_for(timeout=60_000)
    image.refresh_from_db()
    assert image.reference_id == reference.pk and image.alignment["status"] == "ok"
    # the reference's own page says what it is
    page.goto(f"/images/{reference.pk}/")
    status.filter(has_text="This image is a reference").wait_for()
    assert page.locator("#reference-choice").is_hidden()


@pytest.fixture
def golden_line(transactional_db, make_user, tmp_path):
    """A project admin's golden sample and three plates aligned to it: one confirmed normal (the
    calibration), one with a pit, one unchanged."""
    from annotations.services.categories import category_create
    from inspection.models import Membership, Role

    admin = make_user("qe")
    project = project_create(user=admin, name="Plates line 2")
    category_create(user=admin, project=project, name="pit", color="#ff3b30")
    assert Membership.objects.get(project=project, user=admin).role == Role.ADMIN
    big = textured(seed=11)
    w, h = SIZE
    rng = np.random.default_rng(0)

    def shot(dy: int, dx: int, pit: bool = False) -> np.ndarray:
        crop = big[dy : dy + h, dx : dx + w].astype(np.float32)
        if pit:
            x, y, r = DEFECT
            yy, xx = np.mgrid[0:h, 0:w]
            crop[(xx - x) ** 2 + (yy - y) ** 2 < r * r] = 20
        return np.clip(crop + rng.normal(0, 3, crop.shape), 0, 255).astype(np.uint8)

    files = {
        "golden.jpg": shot(20, 20),
        "plate-1.jpg": shot(22, 23),
        "plate-2.jpg": shot(18, 21, pit=True),
        "plate-3.jpg": shot(21, 17),
    }
    images = {}
    for name, array in files.items():
        path = tmp_path / name
        path.write_bytes(jpeg(array))
        out = image_store_one(
            project=project,
            user=admin,
            incoming=IncomingFile(name, path),
            is_normal=name in ("golden.jpg", "plate-1.jpg"),
        )
        images[name] = Image.objects.get(pk=out.image_id)
        image_build_derivatives(image=images[name])
    for name in ("plate-1.jpg", "plate-2.jpg", "plate-3.jpg"):
        image_set_reference(user=admin, image=images[name], reference=images["golden.jpg"])
    return {"project": project, "images": images}


def test_calibrate_run_and_accept_a_change_suggestion(page, celery_worker, golden_line):
    from annotations.models import Annotation, Suggestion

    project, images = golden_line["project"], golden_line["images"]
    wait = time.time() + 60
    while Image.objects.filter(project=project, alignment__status="ok").count() < 3:
        assert time.time() < wait, "the worker did not align the three pairs"
        time.sleep(0.3)
    login(page, "qe")
    page.goto(f"/projects/{project.pk}/models/")
    page.locator(
        "#change-pairs", has_text="3 aligned pairs, 1 of them normal or labelled"
    ).wait_for()
    page.locator("#change-calibrate-form button", has_text="Calibrate on 1 pair").click()
    # the page reloads when the job is done, with the active change detector and its run form
    page.locator("tr[data-kind=change][data-status=ready]", has_text="active").wait_for(
        timeout=90_000
    )
    page.locator("#change-run-form button").click()
    page.wait_for_url("**/runs/*/", timeout=90_000)
    found = Suggestion.objects.filter(image=images["plate-2.jpg"], status="pending")
    assert found.exists() and not Suggestion.objects.filter(image=images["plate-3.jpg"]).exists()

    page.goto(f"/projects/{project.pk}/review/?source=change")
    page.locator("#viewer[data-loaded]").wait_for()
    # the reviewer looks at the pair as in the workspace: F flickers, D shows the difference
    page.locator("#viewer[data-reference=hidden][data-difference=hidden]").wait_for()
    page.keyboard.press("f")
    page.locator("#viewer[data-reference=shown]").wait_for()
    page.keyboard.press("d")
    page.locator("#viewer[data-difference=shown]").wait_for()
    page.keyboard.press("f")
    page.locator("#viewer[data-reference=hidden]").wait_for()
    page.keyboard.press("1")  # pit
    page.keyboard.press("a")
    page.wait_for_function("() => document.getElementById('tally').textContent.startsWith('1 acc')")
    label = Annotation.objects.get(image=images["plate-2.jpg"])
    decided = Suggestion.objects.get(image=images["plate-2.jpg"], status="accepted")
    assert label.category.name == "pit" and decided.model_version.kind == "change"
    g = label.geometry
    xs = [p[0] for p in g["points"]] if g["type"] == "polygon" else [g["x"], g["x"] + g["w"]]
    ys = [p[1] for p in g["points"]] if g["type"] == "polygon" else [g["y"], g["y"] + g["h"]]
    x, y, _ = DEFECT
    assert min(xs) <= x <= max(xs) and min(ys) <= y <= max(ys), g
