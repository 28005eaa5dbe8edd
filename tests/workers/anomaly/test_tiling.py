"""Tile placement and seam-free blending."""

from __future__ import annotations

import numpy as np
import pytest

from workers.anomaly.tiling import Stitcher, axis_starts, blend_window, pad_to_tile, tile_grid

pytestmark = pytest.mark.ml


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(256, 64, 16), (1000, 256, 64), (65, 64, 0)]
)
def test_tiles_cover_exactly_with_at_least_the_overlap(length: int, tile: int, overlap: int):
    starts = axis_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + tile == length
    gaps = np.diff(starts)
    assert (gaps <= tile - overlap).all()
    assert (gaps > 0).all()


def test_image_smaller_than_a_tile_is_one_tile_and_padded():
    assert axis_starts(40, 64, 16) == [0]
    img = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    padded = pad_to_tile(img, 64)
    assert padded.shape == (64, 64, 3)
    np.testing.assert_array_equal(padded[:40, :50], img)


def test_window_is_positive_and_peaks_in_the_middle():
    w = blend_window(32)
    assert w.min() > 0
    assert w[16, 16] == pytest.approx(w.max())
    assert w[0, 0] < 0.05


@pytest.mark.parametrize("downsample", [1, 2])
def test_stitching_a_smooth_field_has_no_seams(downsample: int):
    """Tiles cut from one smooth global map must stitch back into that map."""
    h, w, t = 200, 300, 64
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.sin(xx / 40) + np.cos(yy / 30)
    stitcher = Stitcher(h, w, t, downsample)
    for tile in tile_grid(h, w, t, 16):
        stitcher.add(tile, field[tile.y : tile.y + t, tile.x : tile.x + t])
    out = stitcher.result()
    expected = field[::downsample, ::downsample][: out.shape[0], : out.shape[1]]
    tol = 1e-4 if downsample == 1 else 0.06  # area-resampling error only
    assert np.abs(out - expected).max() < tol


def test_stitching_blends_disagreeing_tiles_smoothly():
    """Neighbouring tiles that disagree (a constant offset) blend without a step."""
    h, w, t = 64, 112, 64
    stitcher = Stitcher(h, w, t, 1)
    grid = tile_grid(h, w, t, 16)
    assert len(grid) == 2
    stitcher.add(grid[0], np.zeros((t, t), np.float32))
    stitcher.add(grid[1], np.ones((t, t), np.float32))
    row = stitcher.result()[32]
    assert row[0] == pytest.approx(0, abs=1e-6) and row[-1] == pytest.approx(1, abs=1e-6)
    assert np.all(np.diff(row) >= -1e-6)  # monotone: no overshoot
    assert np.abs(np.diff(row)).max() < 0.2  # no hard seam
