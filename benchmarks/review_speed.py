"""How fast a reviewer moves on: decision -> next item on screen in the review queue, and N / P
in the workspace, in headless Chromium on this machine (issue #17: <= 300 ms and <= 500 ms).

    .venv/bin/python benchmarks/review_speed.py [--images 8] [--per-image 7] [--decisions 50]
        [--width 4000 --height 3000] [--navigations 20] [--think-ms 600] [--look-ms 1500]

Builds a throwaway Loupe (SQLite and media in a temp folder, gunicorn on 127.0.0.1), stores
``--images`` synthetic photos with their Deep Zoom pyramids and heatmaps and ``--per-image``
anomaly suggestions on each (spread over the photo, so the next item is sometimes on the same
image and sometimes on the next), and signs a reviewer in. Then:

- review: ``--decisions`` decisions by keyboard, alternating accept (category key, then A) and
  reject (R, then Enter), each ``--think-ms`` after the item appeared (a reviewer looks before
  deciding; 0 decides as soon as the page shows it); each is timed from the key that decides to
  the next item shown with every tile of its view drawn (``#viewer[data-item]`` changed and the
  view fully loaded);
- workspace: ``--navigations`` presses of N (then P back), each ``--look-ms`` after the image
  was drawn, timed from the key to the next image's view drawn with all its tiles; says how many
  of them loaded a new page (N / P switch images inside the page since issue #17).

Prints median and p95 of each (ms). The browser cache starts empty; the server is local, so the
figures are the page's own work plus Django's, not a network's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workspace import (  # noqa: E402
    FLAGS,
    add_image,
    free_port,
    login,
    serve,
    setup_django,
    synthetic_photo,
)

# Resolves with the ms from the keydown that decides to the next item fully drawn.
DECIDE = """([keys, before]) => new Promise((resolve, reject) => {
  const el = document.getElementById('viewer');
  const press = (k) => document.dispatchEvent(new KeyboardEvent('keydown', {key: k, bubbles: true}));
  keys.slice(0, -1).forEach(press);
  const t0 = performance.now();
  press(keys[keys.length - 1]);
  const poll = () => {
    const item = el.dataset.item;
    const v = window.loupeReview.viewer;  // the visible one: the page may swap its two viewers
    const loaded = v.world.getItemCount() > 0 &&
      Array.from({length: v.world.getItemCount()}, (_, i) => v.world.getItemAt(i)).every((it) => it.getFullyLoaded());
    if (item && item !== before && loaded) return resolve(performance.now() - t0);
    if (performance.now() - t0 > 20000) return reject(new Error('no next item after 20 s'));
    requestAnimationFrame(poll);
  };
  poll();
})"""

NAVIGATE = """(key) => new Promise((resolve) => {
  sessionStorage.setItem('bench-t0', String(performance.timeOrigin + performance.now()));
  document.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
  resolve();
})"""

ARRIVED = """(before) => new Promise((resolve, reject) => {
  const start = Number(sessionStorage.getItem('bench-t0'));
  const poll = () => {
    const ws = window.loupeWorkspace;
    const v = ws && ws.viewer;
    if (v && location.pathname !== before && v.world.getItemCount() > 0 &&
        v.world.getItemAt(0).getFullyLoaded()) {
      return resolve(performance.timeOrigin + performance.now() - start);
    }
    if (performance.timeOrigin + performance.now() - start > 20000) return reject(new Error('no image'));
    requestAnimationFrame(poll);
  };
  poll();
})"""


def photo(width: int, height: int, seed: int) -> bytes:
    """The workspace benchmark's synthetic part, made distinct per image (duplicates are
    refused on upload)."""
    import pyvips

    base = pyvips.Image.new_from_buffer(synthetic_photo(width, height), "")
    return (base + seed).cast("uchar").jpegsave_buffer(Q=90)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def build(args, tmp: Path):
    import io

    import numpy as np
    from django.contrib.auth import get_user_model
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from PIL import Image as PILImage

    from annotations.services.categories import category_create
    from annotations.services.suggestions import SuggestionIn, suggestions_store
    from inspection.models import ImageHeatmap, InspectionRun, ModelVersion
    from inspection.services.projects import project_create
    from workers.anomaly.regions import Region

    user = get_user_model().objects.create_superuser("bench", "", "bench-password-1")
    project = project_create(user=user, name="Speed")
    category_create(user=user, project=project, name="scratch")
    category_create(user=user, project=project, name="dent")
    t = time.perf_counter()
    images = [
        add_image(project, user, f"part-{i}.jpg", photo(args.width, args.height, i), tmp)
        for i in range(args.images)
    ]
    print(
        f"{len(images)} images {args.width}x{args.height}, pyramids in {time.perf_counter() - t:.0f} s"
    )
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    run = InspectionRun.objects.create(
        project=project, model_version=version, image_ids=[i.pk for i in images]
    )
    heat = np.zeros((args.height // 8, args.width // 8), np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(heat).save(buf, format="PNG")
    rng = np.random.default_rng(0)
    for image in images:
        name = default_storage.save(f"heatmaps/{image.pk}.png", ContentFile(buf.getvalue()))
        ImageHeatmap.objects.create(image=image, path=name, label="PaDiM (bench)")
        found = []
        for _ in range(args.per_image):
            s = int(rng.integers(30, 120))
            x = int(rng.integers(0, args.width - s))
            y = int(rng.integers(0, args.height - s))
            poly = [[x, y], [x + s, y], [x + s, y + s], [x, y + s]]
            found.append(
                SuggestionIn.from_region(
                    Region(
                        box=[x, y, s, s],
                        polygon=poly,
                        area=float(s * s),
                        peak_score=float(rng.uniform(0.5, 0.99)),
                        mean_score=0.6,
                    )
                )
            )
        suggestions_store(image=image, run=run, model_version=version, suggestions=found)
    return project, images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--per-image", type=int, default=7)
    ap.add_argument("--decisions", type=int, default=50)
    ap.add_argument("--navigations", type=int, default=20)
    ap.add_argument(
        "--think-ms",
        type=int,
        default=600,
        help="how long the reviewer looks at an item before deciding (0: as fast as the page)",
    )
    ap.add_argument(
        "--look-ms",
        type=int,
        default=1500,
        help="how long the labeler looks at an image in the workspace before N / P (the hidden "
        "viewer prepares the next image meanwhile; about 1.2 s on this 2-core machine)",
    )
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setup_django(tmp)
        project, images = build(args, tmp)
        port = free_port()
        server = serve(tmp, port)
        base = f"http://127.0.0.1:{port}"
        import os

        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=os.environ.get("LOUPE_CHROMIUM", "/usr/bin/chromium"), args=FLAGS
            )
            try:
                page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                login(page, base, "bench", "bench-password-1")
                page.goto(f"{base}/projects/{project.pk}/review/")
                page.wait_for_function(
                    "() => document.getElementById('viewer').dataset.item && "
                    "window.loupeReview.viewer.world.getItemCount() > 0 && "
                    "window.loupeReview.viewer.world.getItemAt(0).getFullyLoaded()"
                )
                decisions, same, other = [], [], []
                for k in range(args.decisions):
                    before = page.get_attribute("#viewer", "data-item")
                    image_before = page.evaluate("() => window.loupeReview.current().image")
                    keys = ["1", "a"] if k % 2 == 0 else ["r", "Enter"]
                    page.wait_for_timeout(args.think_ms)
                    ms = page.evaluate(DECIDE, [keys, before])
                    decisions.append(ms)
                    now = page.evaluate("() => (window.loupeReview.current() || {}).image")
                    (same if now == image_before else other).append(ms)
                if decisions:
                    print(
                        f"review: decision -> next item drawn, {len(decisions)} decisions "
                        f"{args.think_ms} ms apart: "
                        f"median {statistics.median(decisions):.0f} ms, p95 {p95(decisions):.0f} ms "
                        f"(same image: {len(same)}, median {statistics.median(same) if same else 0:.0f} ms; "
                        f"next image: {len(other)}, median {statistics.median(other) if other else 0:.0f} ms)"
                    )
                    print("  each (ms): " + " ".join(f"{ms:.0f}" for ms in decisions))
                if not args.navigations:
                    return
                page.goto(f"{base}/images/{images[0].pk}/")
                page.wait_for_function(
                    "() => window.loupeWorkspace && window.loupeWorkspace.viewer.world.getItemCount() > 0"
                    " && window.loupeWorkspace.viewer.world.getItemAt(0).getFullyLoaded()"
                )
                moves, loads = [], 0
                origin = page.evaluate("() => performance.timeOrigin")
                for k in range(args.navigations):
                    key = "n" if (k // (len(images) - 1)) % 2 == 0 else "p"
                    before = page.evaluate("() => location.pathname")
                    page.wait_for_timeout(args.look_ms)  # the labeler looks at the image
                    page.evaluate(NAVIGATE, key)
                    page.wait_for_url(lambda url, b=before: not url.endswith(b))
                    moves.append(page.evaluate(ARRIVED, before))
                    now = page.evaluate("() => performance.timeOrigin")
                    loads += now != origin  # a new document: the page was loaded again
                    origin = now
                print(
                    f"workspace: N/P -> next image drawn, {len(moves)} moves "
                    f"({args.look_ms} ms on each image first): "
                    f"median {statistics.median(moves):.0f} ms, p95 {p95(moves):.0f} ms; "
                    f"page loads: {loads}"
                )
                print("  each (ms): " + " ".join(f"{ms:.0f}" for ms in moves))
            finally:
                browser.close()
                server.kill()


if __name__ == "__main__":
    main()
