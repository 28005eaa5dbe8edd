"""The review queue shows a suggestion's image beside its aligned reference as the workspace does
(issue #14): F flickers to the reference, its slider swipes it in from the left up to a vertical
line, D lays the aligned difference over the image and its slider sets its opacity; the
Reference section is there only for an image with an aligned reference. The pair is aligned
in-process (the alignment job's own body), so no worker is needed."""

import io

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage

from annotations.models import Suggestion
from annotations.services.suggestions import suggestions_store
from inspection.models import Image, InspectionRun, ModelVersion
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.projects import project_create
from inspection.services.references import image_set_reference, reference_alignment_store
from tests.annotations.conftest import region, square
from tests.e2e.test_reference_view import DEFECT, LEFT_MARK, SIZE, jpeg, textured
from tests.e2e.test_workspace import login
from workers.tasks.references import align_one

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair_queue(transactional_db, make_user, tmp_path):
    """A plate with a pit and a bright mark, aligned onto its golden sample, with a change
    suggestion on the pit; and a suggestion on the golden sample itself, which has no
    reference."""
    user = make_user("inspector")
    project = project_create(user=user, name="Machined plates")
    big = textured()
    w, h = SIZE
    golden = big[20 : 20 + h, 20 : 20 + w]
    tested = big[23 : 23 + h, 25 : 25 + w].copy()  # the part sits 5 px left, 3 px up
    yy, xx = np.mgrid[0:h, 0:w]
    for (x, y, r), grey in ((DEFECT, 20), (LEFT_MARK, 250)):
        tested[(xx - x) ** 2 + (yy - y) ** 2 < r * r] = grey
    images = {}
    for name, array in (("plate-7.jpg", tested), ("plate-golden.jpg", golden)):
        path = tmp_path / name
        path.write_bytes(jpeg(array))
        out = image_store_one(project=project, user=user, incoming=IncomingFile(name, path))
        images[name] = Image.objects.get(pk=out.image_id)
        image_build_derivatives(image=images[name])
    plate, reference = images["plate-7.jpg"], images["plate-golden.jpg"]
    plate = image_set_reference(user=user, image=plate, reference=reference)
    alignment, pyramid, difference = align_one(plate, reference, tile_size=settings.LOUPE_TILE_SIZE)
    assert alignment["status"] == "ok", alignment
    assert reference_alignment_store(
        image_id=plate.pk,
        reference_id=reference.pk,
        alignment=alignment,
        pyramid_path=pyramid,
        difference_path=difference,
    )
    version = ModelVersion.objects.create(
        project=project, number=1, kind="change", architecture="change", status="ready"
    )
    run = InspectionRun.objects.create(
        project=project, model_version=version, image_ids=[plate.pk, reference.pk]
    )
    x, y, r = DEFECT
    suggestions_store(
        image=plate,
        run=run,
        model_version=version,
        suggestions=[region([x - r, y - r, 2 * r, 2 * r], square(x - r, y - r, 2 * r), 0.9)],
    )
    suggestions_store(
        image=reference,
        run=run,
        model_version=version,
        suggestions=[region([300, 300, 80, 80], square(300, 300, 80), 0.8)],
    )
    return {"project": project, "plate": plate, "reference": reference}


def brightness(page, x: float, y: float, half: int = 6) -> float:
    """Mean grey level of the screen around image pixel (x, y) of the item on screen."""
    p = page.evaluate(
        """([x, y]) => {
          const p = window.loupeReview.viewer.viewport.imageToWindowCoordinates(
            new OpenSeadragon.Point(x, y));
          return {x: p.x, y: p.y};
        }""",
        [x, y],
    )
    shot = page.screenshot(
        clip={"x": p["x"] - half, "y": p["y"] - half, "width": 2 * half, "height": 2 * half}
    )
    return float(np.asarray(PILImage.open(io.BytesIO(shot)).convert("L")).mean())


def settle(page):
    """The viewer on screen has drawn its view with every tile of the items it shows (an item at
    opacity 0 is not drawn, and a hidden difference never loads)."""
    page.evaluate(
        """async () => {
          const v = window.loupeReview.viewer;
          await new Promise((resolve) => { v.addOnceHandler("update-viewport", resolve); v.forceRedraw(); });
          const shown = [];
          for (let i = 0; i < v.world.getItemCount(); i++) {
            const it = v.world.getItemAt(i);
            if (it.getOpacity() > 0) shown.push(it);
          }
          await Promise.all(shown.map((it) => new Promise((resolve) => it.whenFullyLoaded(resolve))));
        }"""
    )
    page.wait_for_timeout(400)


def wait_item(page, item):
    page.wait_for_function(f"() => document.getElementById('viewer').dataset.item === '{item}'")


def test_review_swipes_to_the_reference_and_sets_the_difference_opacity(page, pair_queue):
    plate_s = Suggestion.objects.get(image=pair_queue["plate"])
    golden_s = Suggestion.objects.get(image=pair_queue["reference"])
    login(page, "inspector")
    page.goto(f"/projects/{pair_queue['project'].pk}/review/")
    page.locator("#viewer[data-loaded]").wait_for()
    wait_item(page, f"suggestion:{plate_s.pk}")
    tools = page.locator("#reference-tools")
    tools.wait_for()  # the image has an aligned reference: the section is there
    page.locator("#viewer[data-reference=hidden][data-difference=hidden]").wait_for()
    assert page.locator("#reference-toggle").is_enabled()
    assert page.locator("#difference-opacity").is_enabled()

    # the whole plate on screen: the pit and the bright mark, neither on the reference
    page.evaluate("() => window.loupeReview.viewer.viewport.goHome(true)")
    settle(page)
    x, y, _ = DEFECT
    lx, ly, _ = LEFT_MARK
    assert brightness(page, x, y) < 60 and brightness(page, lx, ly) > 200

    # F: the reference over the whole image (the swipe starts at 100 %)
    page.locator("#viewer").focus()
    page.keyboard.press("f")
    page.locator("#viewer[data-reference=shown]").wait_for()
    assert page.locator("#reference-toggle").is_checked()
    settle(page)
    assert brightness(page, x, y) > 80 and brightness(page, lx, ly) < 200

    # the swipe: the reference over the left 40 % only -> the left mark is gone, the pit shows
    page.locator("#reference-swipe").fill("40")
    clip = page.evaluate(
        "() => { const c = window.loupeReview.reference.getClip(); return [c.x, c.width, c.height]; }"
    )
    assert clip == [0, pytest.approx(0.4 * SIZE[0]), SIZE[1]]
    settle(page)
    assert brightness(page, lx, ly) < 200 and brightness(page, x, y) < 60
    # F from the slider flickers (letters stay the queue's), and the swipe stays where it was
    page.locator("#reference-swipe").focus()
    page.keyboard.press("f")
    page.locator("#viewer[data-reference=hidden]").wait_for()
    assert page.evaluate("() => window.loupeReview.reference.getOpacity()") == 0
    settle(page)
    assert brightness(page, lx, ly) > 200

    # D: the difference over the image at the slider's opacity; the slider changes it
    page.locator("#viewer").focus()
    page.keyboard.press("d")
    page.locator("#viewer[data-difference=shown]").wait_for()
    assert page.locator("#difference-toggle").is_checked()
    opacity = "() => window.loupeReview.difference.getOpacity()"
    assert page.evaluate(opacity) == pytest.approx(0.7)
    page.locator("#difference-opacity").fill("100")
    assert page.evaluate(opacity) == pytest.approx(1.0)
    settle(page)
    lit = brightness(page, x, y)
    page.locator("#difference-opacity").fill("0")
    assert page.evaluate(opacity) == 0
    settle(page)
    faint = brightness(page, x, y)
    assert faint < 60 and lit > faint + 40, (lit, faint)  # the colour ramp lights up the pit
    page.locator("#difference-opacity").fill("50")
    assert page.evaluate(opacity) == pytest.approx(0.5)

    # the golden sample has no reference: no Reference section, F / D do nothing
    page.locator("#viewer").focus()
    page.keyboard.press("n")
    wait_item(page, f"suggestion:{golden_s.pk}")
    tools.wait_for(state="hidden")
    assert page.evaluate("() => window.loupeReview.reference") is None
    page.keyboard.press("f")
    page.keyboard.press("d")
    assert page.locator("#reference-toggle").is_checked() is False
    viewer = page.locator("#viewer")
    assert viewer.get_attribute("data-reference") is None
    assert viewer.get_attribute("data-difference") is None

    # back on the plate: the section and the reviewer's settings again
    page.keyboard.press("n")
    wait_item(page, f"suggestion:{plate_s.pk}")
    tools.wait_for()
    page.locator("#viewer[data-reference=hidden][data-difference=shown]").wait_for()
    assert page.evaluate(opacity) == pytest.approx(0.5)
    assert page.evaluate("() => window.loupeReview.reference.getClip().width") == pytest.approx(
        0.4 * SIZE[0]
    )
