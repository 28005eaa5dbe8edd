"""How fast the labeling workspace shows a large image, in headless Chromium on this machine.

    .venv/bin/python benchmarks/workspace.py [--width 6000 --height 4000] [--runs 3]
    .venv/bin/python benchmarks/workspace.py --screenshot docs/workspace.png

Builds a throwaway Loupe (SQLite and media in a temp folder), stores a synthetic 24 MP photo and
its Deep Zoom pyramid, serves it with gunicorn on 127.0.0.1, and opens the workspace in Debian's
chromium through Playwright, with an empty browser cache each run. It prints, per run:

- first tiles: from navigation start to the first tile drawn;
- full view: until every tile of the fitted view is drawn;
- 100% detail: from the zoom to 1 image pixel per screen pixel (at the centre) until every tile
  of that view is drawn.

``--screenshot`` instead trains PaDiM (workers.anomaly) on MVTec bottle train/good, predicts a
defective test image, stores the heatmap, and saves a screenshot of the workspace with the
heatmap overlay and a labelled region.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_django(tmp: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["MEDIA_ROOT"] = str(tmp / "media")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inspection.settings")
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "false"
    from benchmarks.throwaway import throwaway_secret_key

    throwaway_secret_key()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def synthetic_photo(width: int, height: int) -> bytes:
    import numpy as np
    import pyvips

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 120 + 60 * np.sin(xx / 700.0) * np.cos(yy / 500.0)
    rng = np.random.default_rng(0)
    img = np.clip(base[..., None] + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    return pyvips.Image.new_from_array(img).copy(interpretation="srgb").jpegsave_buffer(Q=90)


def add_image(project, user, name: str, data: bytes, tmp: Path):
    from inspection.models import Image
    from inspection.services.images import IncomingFile, image_build_derivatives, image_store_one

    path = tmp / name
    path.write_bytes(data)
    outcome = image_store_one(project=project, user=user, incoming=IncomingFile(name, path))
    image = Image.objects.get(pk=outcome.image_id)
    image_build_derivatives(image=image)
    image.refresh_from_db()
    return image


def serve(
    tmp: Path, port: int, workers: int = 2, threads: int = 8, worker_class: str = "gthread"
) -> subprocess.Popen:
    env = dict(os.environ)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "inspection.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            worker_class,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gunicorn did not start")


FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

MEASURE_OPEN = """() => new Promise((resolve) => {
  const t = {};
  const check = () => {
    const v = window.loupeWorkspace && window.loupeWorkspace.viewer;
    if (!v || !v.world.getItemCount()) return setTimeout(check, 10);
    const item = v.world.getItemAt(0);
    const first = () => performance.getEntriesByType('resource').filter(e => e.name.includes('/image_files/'));
    const poll = () => {
      if (t.first === undefined && document.getElementById('viewer').hasAttribute('data-tile-loaded')) t.first = performance.now();
      if (item.getFullyLoaded()) { t.full = performance.now(); t.tiles = first().length; return resolve(t); }
      setTimeout(poll, 5);
    };
    poll();
  };
  check();
})"""

MEASURE_ZOOM = """() => new Promise((resolve) => {
  const v = window.loupeWorkspace.viewer;
  const item = v.world.getItemAt(0);
  const before = performance.getEntriesByType('resource').filter(e => e.name.includes('/image_files/')).length;
  const t0 = performance.now();
  v.viewport.zoomTo(v.viewport.imageToViewportZoom(1.0), null, true);
  v.viewport.applyConstraints(true);
  const poll = () => {
    if (item.getFullyLoaded()) {
      const after = performance.getEntriesByType('resource').filter(e => e.name.includes('/image_files/')).length;
      return resolve({ ms: performance.now() - t0, tiles: after - before });
    }
    setTimeout(poll, 5);
  };
  setTimeout(poll, 20);
})"""


def browser_session(port: int, username: str, password: str):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(
        executable_path=os.environ.get("LOUPE_CHROMIUM", "/usr/bin/chromium"), args=FLAGS
    )
    return pw, browser


def login(page, base: str, username: str, password: str) -> None:
    page.goto(base + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def measure(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setup_django(tmp)
        from django.contrib.auth import get_user_model

        from inspection.services.projects import project_create

        user = get_user_model().objects.create_user("bench", password="bench-password-1")
        project = project_create(user=user, name="Bench")
        t = time.perf_counter()
        image = add_image(project, user, "part.jpg", synthetic_photo(args.width, args.height), tmp)
        print(
            f"image {image.width}x{image.height} ({image.megapixels} MP); pyramid built in {time.perf_counter() - t:.1f} s"
        )
        port = free_port()
        server = serve(tmp, port)
        base = f"http://127.0.0.1:{port}"
        pw, browser = browser_session(port, "bench", "bench-password-1")
        rows = []
        try:
            for run in range(args.runs):
                context = browser.new_context(viewport={"width": 1600, "height": 1000})
                page = context.new_page()
                login(page, base, "bench", "bench-password-1")
                page.goto(
                    f"{base}/images/{image.pk}/" + (f"?drawer={args.drawer}" if args.drawer else "")
                )
                opened = page.evaluate(MEASURE_OPEN)
                zoom = page.evaluate(MEASURE_ZOOM)
                rows.append(
                    (opened["first"], opened["full"], zoom["ms"], opened["tiles"], zoom["tiles"])
                )
                print(
                    f"run {run + 1}: first tiles {opened['first']:.0f} ms, full view {opened['full']:.0f} ms "
                    f"({opened['tiles']} tiles), 100% detail {zoom['ms']:.0f} ms ({zoom['tiles']} tiles)"
                )
                context.close()
        finally:
            browser.close()
            pw.stop()
            server.terminate()
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(
            f"median of {args.runs}: first tiles {med[0]:.0f} ms, full view {med[1]:.0f} ms, 100% detail {med[2]:.0f} ms"
        )


def screenshot(args) -> None:
    datasets = Path(os.environ.get("LOUPE_DATASETS", ROOT.parent / "shared" / "datasets"))
    bottle = datasets / "mvtec_bottle"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setup_django(tmp)
        from django.contrib.auth import get_user_model
        from django.core.files.base import ContentFile
        from django.core.files.storage import default_storage

        from annotations.services.categories import category_create
        from annotations.services.labels import annotation_create
        from inspection.models import ImageHeatmap
        from inspection.services.projects import project_create
        from workers import anomaly

        user = get_user_model().objects.create_user("quality", password="bench-password-1")
        project = project_create(user=user, name="Bottle")
        cats = {
            n: category_create(user=user, project=project, name=n, color=c)
            for n, c in (("broken_large", "#ff3b30"), ("contamination", "#0a84ff"))
        }
        config = anomaly.TrainConfig(model="padim", input_size=256)
        normals = sorted((bottle / "train" / "good").glob("*.png"))
        result = anomaly.train(config, normals, tmp / "model")
        model = anomaly.load_model(result.artifact_path)
        test = sorted((bottle / "test" / "broken_large").glob("*.png"))[0]
        pred = anomaly.predict(model, test)
        image = add_image(project, user, test.name, test.read_bytes(), tmp)
        buf = io.BytesIO()
        from PIL import Image as PILImage

        PILImage.fromarray(pred.heatmap).save(buf, format="PNG")
        name = default_storage.save(
            f"projects/{project.pk}/heatmaps/{image.uid}.png", ContentFile(buf.getvalue())
        )
        ImageHeatmap.objects.create(
            image=image, path=name, label="PaDiM (Lite0), bottle train/good"
        )
        if pred.regions:
            r = pred.regions[0]
            x0, y0, w, h = r.box  # COCO order
            annotation_create(
                user=user,
                image=image,
                category_id=cats["broken_large"].pk,
                geometry={"type": "box", "x": x0, "y": y0, "w": w, "h": h},
            )
        port = free_port()
        server = serve(tmp, port)
        base = f"http://127.0.0.1:{port}"
        pw, browser = browser_session(port, "quality", "bench-password-1")
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            login(page, base, "quality", "bench-password-1")
            page.goto(f"{base}/images/{image.pk}/")
            page.locator("#viewer[data-annotations-loaded]").wait_for()
            page.keyboard.press("h")
            page.locator('#viewer[data-heatmap="shown"]').wait_for()
            page.fill("#heatmap-opacity", "60")
            page.dispatch_event("#heatmap-opacity", "input")
            page.wait_for_function(
                "() => window.loupeWorkspace.viewer.world.getItemAt(0).getFullyLoaded()"
            )
            page.wait_for_timeout(500)
            page.screenshot(path=args.screenshot)
            print(
                f"wrote {args.screenshot} (image score {pred.image_score:.3f}, {len(pred.regions)} region(s))"
            )
        finally:
            browser.close()
            pw.stop()
            server.terminate()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--screenshot", default=None)
    ap.add_argument(
        "--drawer", default=None, choices=["webgl", "canvas"], help="OpenSeadragon drawer"
    )
    args = ap.parse_args()
    if args.screenshot:
        screenshot(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
