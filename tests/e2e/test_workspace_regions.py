"""The project's regions of interest in the labeling workspace, in a real browser: on an image
aligned with the reference the regions are drawn on, each outline lands where the stored
homography puts the reference's polygon (checked on screen against the transformed vertices)
with its name; the excluded region is hatched and says so; I hides and shows the layer; N goes
on to an image without an alignment to that reference, where a status line says why nothing is
drawn, and P comes back to the outlines; opened directly it says so too, and once it is compared
with the regions' reference in the Reference panel and aligned, the outlines appear."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from inspection.models import Image
from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one
from inspection.services.references import image_mark_reference, reference_alignment_store
from inspection.services.regions import region_create
from tests.e2e.test_workspace import login

pytestmark = pytest.mark.e2e

SIZE = (900, 600)
# reference pixels -> image pixels: turned by about 3 degrees, shifted, a little perspective
MATRIX = [
    [0.9986, -0.0523, 42.0],
    [0.0523, 0.9986, 17.0],
    [0.00002, 0.00001, 1.0],
]
FACE = [[120.0, 110.0], [430.0, 130.0], [410.0, 380.0], [140.0, 360.0]]
LABEL = [[560.0, 90.0], [780.0, 90.0], [780.0, 230.0], [560.0, 230.0]]


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = SIZE
    coarse = rng.integers(80, 200, (h // 20, w // 20), dtype=np.uint8)
    grey = np.array(PILImage.fromarray(coarse).resize((w, h), PILImage.BILINEAR))
    buf = io.BytesIO()
    PILImage.fromarray(grey).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def expected(polygon) -> list[list[float]]:
    """The polygon in the aligned image's pixels, as the workers map it (OpenCV)."""
    points = np.asarray(polygon, np.float64).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(points, np.asarray(MATRIX)).reshape(-1, 2).tolist()


@pytest.fixture
def plates(transactional_db, team, tmp_path):
    """golden.jpg (the reference, two regions drawn on it: one excluded), plate-1.jpg aligned
    with it (the stored alignment, as the alignment job leaves it), plate-2.jpg not paired."""
    project, admin = team["project"], team["admin"]
    images = {}
    for i, name in enumerate(("golden.jpg", "plate-1.jpg", "plate-2.jpg")):
        path = tmp_path / name
        path.write_bytes(photo(i))
        out = image_store_one(project=project, user=admin, incoming=IncomingFile(name, path))
        image = Image.objects.get(pk=out.image_id)
        image_build_derivatives(image=image)
        images[name] = image
    golden = image_mark_reference(user=admin, image=images["golden.jpg"], is_reference=True)
    # paired as image_set_reference pairs, without queueing the alignment job: its result is
    # stored right away with a known matrix
    aligned = images["plate-1.jpg"]
    Image.objects.filter(pk=aligned.pk).update(reference=golden, alignment={"status": "pending"})
    assert reference_alignment_store(
        image_id=aligned.pk,
        reference_id=golden.pk,
        alignment={"status": "ok", "method": "ecc", "matrix": MATRIX, "residual_px": 0.2},
    )
    region_create(user=admin, project=project, name="face", reference=golden, polygon=FACE)
    region_create(
        user=admin, project=project, name="label", reference=golden, polygon=LABEL, mode="exclude"
    )
    return {**team, "golden": golden, "aligned": aligned, "alone": images["plate-2.jpg"]}


SHOWN = "#viewer .viewer-pane.shown svg.ws-region-layer"

# the outline's vertices and its name's place in OpenSeadragon's window coordinates (what the
# person sees; those count from the page's top left, so a scrolled page is added back)
ON_SCREEN = """(name) => {
  const g = document.querySelector(`#viewer .viewer-pane.shown svg.ws-region-layer g.region[data-name="${name}"]`);
  const poly = g.querySelector("polygon");
  const ctm = poly.getScreenCTM();
  const at = (x, y) => {
    const p = new DOMPoint(x, y).matrixTransform(ctm);
    return [p.x + window.scrollX, p.y + window.scrollY];
  };
  const text = g.querySelector("text");
  return {
    cls: g.getAttribute("class"),
    points: Array.from(poly.points).map((p) => at(p.x, p.y)),
    label: text.textContent,
    labelAt: at(Number(text.getAttribute("x")), Number(text.getAttribute("y"))),
    fill: getComputedStyle(poly).fill,
  };
}"""


def to_window(page, points) -> list[list[float]]:
    return [
        [p["x"], p["y"]]
        for p in (
            page.evaluate("([x, y]) => window.loupeWorkspace.imageToWindow(x, y)", pt)
            for pt in points
        )
    ]


def assert_near(actual, wanted, tolerance: float) -> None:
    assert len(actual) == len(wanted), (actual, wanted)
    for a, w in zip(actual, wanted, strict=True):
        assert abs(a[0] - w[0]) <= tolerance and abs(a[1] - w[1]) <= tolerance, (actual, wanted)


def test_regions_are_drawn_through_the_alignment_toggled_and_explained(page, plates):
    aligned, alone = plates["aligned"], plates["alone"]
    login(page, plates["annotator"].username)
    page.goto(f"/images/{aligned.pk}/?order=id")
    page.locator("#viewer[data-tile-loaded]").wait_for()
    page.locator("#viewer[data-regions=shown]").wait_for()
    page.evaluate("() => window.loupeWorkspace.loaded()")
    assert page.locator("#viewer").get_attribute("data-regions-state") == "aligned"
    assert not page.locator("#regions-status").is_visible()
    assert page.locator("#regions-toggle").is_checked()

    face = page.evaluate(ON_SCREEN, "face")
    assert face["label"] == "face" and "inspected" in face["cls"]
    # every vertex where the stored homography puts it, on screen (within 2 px) ...
    want = expected(FACE)
    assert_near(face["points"], to_window(page, want), 2.0)
    # ... and, back in the image's pixels, within a few pixels of the transformed polygon
    back = [
        [p["x"], p["y"]]
        for p in (
            page.evaluate("([x, y]) => window.loupeWorkspace.windowToImage(x, y)", pt)
            for pt in face["points"]
        )
    ]
    assert_near(back, want, 3.0)
    # not where the untransformed polygon would be
    assert max(abs(b[0] - f[0]) for b, f in zip(back, FACE, strict=True)) > 20
    # the name sits just above the outline's topmost vertex
    top = min(face["points"], key=lambda p: p[1])
    assert abs(face["labelAt"][0] - top[0]) <= 2 and 0 < top[1] - face["labelAt"][1] <= 10

    label = page.evaluate(ON_SCREEN, "label")
    assert "excluded" in label["cls"] and "excluded" in label["label"]
    assert label["fill"].startswith("url(") and "ws-region-hatch" in label["fill"]
    assert_near(label["points"], to_window(page, expected(LABEL)), 2.0)
    # the hatching shows: the excluded area's pixels vary more than the same place without it
    box = page.locator("#viewer").bounding_box()
    xs = [p[0] for p in label["points"]]
    ys = [p[1] for p in label["points"]]
    sx, sy = page.evaluate("() => [window.scrollX, window.scrollY]")  # clips count from the view
    clip = {
        "x": (min(xs) + max(xs)) / 2 - 20 - sx,
        "y": (min(ys) + max(ys)) / 2 - 20 - sy,
        "width": 40,
        "height": 40,
    }
    assert box["x"] < clip["x"] and clip["y"] + 40 < box["y"] + box["height"]
    hatched = np.asarray(PILImage.open(io.BytesIO(page.screenshot(clip=clip))).convert("L"))

    # I hides the layer, and shows it again
    page.locator("#viewer").focus()
    page.keyboard.press("i")
    page.locator("#viewer[data-regions=hidden]").wait_for()
    assert page.locator(f"{SHOWN} g.region").count() == 0
    assert not page.locator("#regions-toggle").is_checked()
    plain = np.asarray(PILImage.open(io.BytesIO(page.screenshot(clip=clip))).convert("L"))
    assert np.abs(hatched.astype(int) - plain.astype(int)).mean() > 3
    page.keyboard.press("i")
    page.locator("#viewer[data-regions=shown]").wait_for()
    assert page.locator(f"{SHOWN} g.region").count() == 2

    # N: an image not aligned with the regions' reference gets the reason, not outlines
    page.keyboard.press("n")
    page.wait_for_url(f"**/images/{alone.pk}/**")
    page.locator("#viewer[data-regions=unplaced]").wait_for()
    status = page.locator("#regions-status")
    assert status.is_visible()
    assert "not aligned with golden.jpg" in status.inner_text()
    assert status.get_attribute("data-state") == "unpaired"
    assert page.locator(f"{SHOWN} g.region").count() == 0
    # P: back on the aligned image, the outlines are there again and the line is gone
    page.keyboard.press("p")
    page.wait_for_url(f"**/images/{aligned.pk}/**")
    page.locator("#viewer[data-regions=shown]").wait_for()
    assert not status.is_visible()
    page.evaluate("() => window.loupeWorkspace.drawn()")
    assert_near(page.evaluate(ON_SCREEN, "face")["points"], to_window(page, want), 2.0)

    # opened directly (a page load), the unaligned image says so too
    page.goto(f"/images/{alone.pk}/")
    page.locator("#viewer[data-tile-loaded]").wait_for()
    status.wait_for()
    assert "Regions of interest not shown" in status.inner_text()
    assert "in the Reference panel" in status.inner_text()
    # compared with the regions' reference from the side panel: being aligned, still nothing
    # drawn in the wrong place ...
    page.select_option("#reference-select", label="golden.jpg")
    status.filter(has_text="being aligned with golden.jpg").wait_for()
    assert status.get_attribute("data-state") == "pending"
    assert page.locator("#viewer").get_attribute("data-regions") == "unplaced"
    assert page.locator(f"{SHOWN} g.region").count() == 0
    # ... until the alignment's result is stored (as the worker stores it; none runs here): the
    # page, which polls while it waits, then draws them through the new matrix
    assert reference_alignment_store(
        image_id=alone.pk,
        reference_id=plates["golden"].pk,
        alignment={"status": "ok", "method": "ecc", "matrix": MATRIX},
    )
    page.locator("#viewer[data-regions=shown]").wait_for()
    assert not status.is_visible()
    page.evaluate("() => window.loupeWorkspace.drawn()")
    assert_near(page.evaluate(ON_SCREEN, "face")["points"], to_window(page, want), 2.0)
