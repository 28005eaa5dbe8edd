"""What a Deep Zoom tile costs through Loupe: gunicorn on a throwaway SQLite database, a signed-in
session (as the browser's viewer asks), the 48 tiles of a 4000x3000 photo's first view (level 11).

    .venv/bin/python benchmarks/tiles.py [--repeat 3]

Prints the time for the 48 one after the other and with 8 at a time (OpenSeadragon's
``imageLoaderLimit``), best of ``--repeat``. docs/benchmarks.md and docs/operations.md (sizing)
quote it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workspace import add_image, free_port, serve, setup_django, synthetic_photo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import requests

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        setup_django(tmp)
        from django.contrib.auth import get_user_model

        from inspection.services.projects import project_create

        user = get_user_model().objects.create_user("tiles", password="tiles-password-1")
        image = add_image(
            project_create(user=user, name="Tiles"), user, "p.jpg", synthetic_photo(4000, 3000), tmp
        )
        port = free_port()
        server = serve(tmp, port)
        base = f"http://127.0.0.1:{port}"
        try:
            s = requests.Session()
            s.get(base + "/login/")
            s.post(
                base + "/login/",
                data={
                    "username": "tiles",
                    "password": "tiles-password-1",
                    "csrfmiddlewaretoken": s.cookies["csrftoken"],
                },
                headers={"Referer": base + "/login/"},
            )
            urls = [
                f"{base}/api/images/{image.pk}/dzi/image_files/11/{c}_{r}.jpg"
                for c in range(8)
                for r in range(6)
            ]
            assert s.get(urls[0]).status_code == 200, "not signed in?"
            for workers in (1, 8):
                best = float("inf")
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    with cf.ThreadPoolExecutor(workers) as ex:
                        codes = set(ex.map(lambda u: s.get(u).status_code, urls))
                    best = min(best, time.perf_counter() - t)
                    assert codes == {200}, codes
                print(
                    f"{len(urls)} tiles, {workers} at a time: {best * 1000:.0f} ms "
                    f"({best * 1000 / len(urls):.1f} ms per tile)"
                )
        finally:
            server.kill()


if __name__ == "__main__":
    main()
