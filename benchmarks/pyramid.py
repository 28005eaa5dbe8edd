"""Time and memory to check and pyramid a large image, as the upload path does.

    .venv/bin/python benchmarks/pyramid.py [--width 6000 --height 4000] [--repeat 3]

Prints, per step: wall seconds (best of --repeat) and the peak RSS of this process. The image is a
synthetic photo-like JPEG (smooth gradients + noise + a few 'defects'), written to a temp folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyvips

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspection.imaging import build_pyramid, make_thumbnail, probe_image  # noqa: E402
from workers.memory import peak_rss_mb  # noqa: E402


def make_image(path: Path, width: int, height: int) -> None:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 120 + 60 * np.sin(xx / 700.0) * np.cos(yy / 500.0)
    rng = np.random.default_rng(0)
    img = np.clip(base[..., None] + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    img[height // 3 : height // 3 + 4, width // 4 : width // 4 + 300] = 20  # a scratch
    pyvips.Image.new_from_array(img).copy(interpretation="srgb").jpegsave(str(path), Q=92)


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "part.jpg"
        # made in a child process so that the peak RSS below is the pipeline's alone
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(
            target=make_image, args=(src, args.width, args.height)
        )
        child.start()
        child.join()
        mp = args.width * args.height / 1e6
        print(
            f"image: {args.width}x{args.height} = {mp:.1f} MP JPEG, {src.stat().st_size / 1e6:.1f} MB"
        )
        t = best_of(args.repeat, lambda: probe_image(src, max_pixels=100_000_000))
        print(f"check (header + full decode): {t:.2f} s")
        t = best_of(args.repeat, lambda: build_pyramid(src, Path(tmp) / "pyr"))
        n_tiles = sum(1 for p in (Path(tmp) / "pyr").rglob("*.jpg"))
        print(f"Deep Zoom pyramid (254 px JPEG tiles, {n_tiles} files): {t:.2f} s")
        t = best_of(args.repeat, lambda: make_thumbnail(src, Path(tmp) / "thumb.jpg"))
        print(f"thumbnail: {t:.2f} s")
        print(f"peak RSS of the whole pipeline: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
