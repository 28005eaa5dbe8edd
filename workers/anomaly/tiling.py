"""How an image becomes network inputs (:class:`Geometry`: the whole image resized, or scaled
and cut into overlapping tiles), and seamless blending of the tiles' heatmaps.

Tiles are placed evenly so that they cover the image exactly (the last tile ends on the border,
no padding unless the image is smaller than one tile). Each tile's map is multiplied by a smooth
window that is 1 in the middle and falls towards the tile edges, accumulated with the window,
and finally divided by the accumulated window. Because the window is positive everywhere and
smooth, there is no seam where tiles meet, and a defect on a seam becomes one blob, not two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812

from .image_io import correct_shading, resize, to_float, to_rgb


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap``.

    Evenly spread, first at 0 and last at ``length - tile``. A length not larger than one tile
    gives a single start at 0 (the caller pads).
    """
    if tile <= 0:
        raise ValueError("tile must be positive")
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be in [0, tile)")
    if length <= tile:
        return [0]
    step = tile - overlap
    count = math.ceil((length - tile) / step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class Tile:
    """One tile: its top-left corner in the (scaled) image."""

    y: int
    x: int


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """All tiles, row by row, covering an image of ``height`` x ``width``."""
    return [
        Tile(y, x)
        for y in axis_starts(height, tile, overlap)
        for x in axis_starts(width, tile, overlap)
    ]


def blend_window(size: int, floor: float = 0.02) -> np.ndarray:
    """2-D separable raised-cosine window of ``size`` x ``size``, minimum ``floor``.

    The floor keeps the weight positive at the image border where only one tile covers a pixel.
    """
    ramp = np.sin(np.pi * (np.arange(size, dtype=np.float32) + 0.5) / size) ** 2
    ramp = np.maximum(ramp, floor).astype(np.float32)
    return np.outer(ramp, ramp)


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """Reflect-pad an ``(H, W, C)`` image so that both sides are at least ``tile``."""
    h, w = image.shape[:2]
    pad_h, pad_w = max(0, tile - h), max(0, tile - w)
    if not pad_h and not pad_w:
        return image
    # Reflection needs the image to be larger than the pad; fall back to edge replication.
    mode = cv2.BORDER_REFLECT_101 if (h > pad_h and w > pad_w) else cv2.BORDER_REPLICATE
    out = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, mode)
    if out.ndim == 2:
        out = out[:, :, None]
    return out


class Stitcher:
    """Accumulates tile heatmaps into one map at ``1/downsample`` of the tiled image's size.

    Works on torch tensors on the model's device, so on a GPU the tiles never leave it until the
    final map is read back.
    """

    def __init__(
        self,
        height: int,
        width: int,
        tile: int,
        downsample: int = 2,
        device: torch.device | str = "cpu",
    ) -> None:
        self.height, self.width = height, width
        self.downsample = max(1, int(downsample))
        self.tile = tile
        self.small_tile = max(1, round(tile / self.downsample))
        self.out_h = max(1, math.ceil(height / self.downsample))
        self.out_w = max(1, math.ceil(width / self.downsample))
        size = (self.out_h + self.small_tile, self.out_w + self.small_tile)
        self.acc = torch.zeros(size, dtype=torch.float32, device=device)
        self.weight = torch.zeros_like(self.acc)
        self.window = torch.from_numpy(blend_window(self.small_tile)).to(device)

    def add_batch(self, tiles: list[Tile], maps: torch.Tensor) -> None:
        """Blend ``(N, tile, tile)`` heatmaps in at their places."""
        maps = maps.float()
        if maps.shape[-2:] != (self.small_tile, self.small_tile):
            maps = F.interpolate(maps[:, None], size=(self.small_tile,) * 2, mode="area")[:, 0]
        maps = maps.to(self.acc.device) * self.window
        st = self.small_tile
        for tile, m in zip(tiles, maps, strict=True):
            y, x = round(tile.y / self.downsample), round(tile.x / self.downsample)
            self.acc[y : y + st, x : x + st] += m
            self.weight[y : y + st, x : x + st] += self.window

    def add(self, tile: Tile, heatmap: np.ndarray | torch.Tensor) -> None:
        """Blend one ``(tile, tile)`` heatmap in at its place."""
        self.add_batch([tile], torch.as_tensor(np.asarray(heatmap, np.float32))[None])

    def result(self) -> np.ndarray:
        """The blended map, shape ``(ceil(H/ds), ceil(W/ds))``; uncovered pixels are 0."""
        acc = self.acc[: self.out_h, : self.out_w]
        weight = self.weight[: self.out_h, : self.out_w]
        out = torch.where(weight > 0, acc / weight.clamp_min(1e-12), torch.zeros_like(acc))
        return out.cpu().numpy()


@dataclass
class Geometry:
    """How an image maps onto network inputs; stored in the artifact.

    ``scale=None`` ("whole image"): every image is resized to ``input_size`` x ``input_size``,
    like anomalib's MVTec setup; right when defects are large relative to the image.
    ``scale=s`` ("tiled"): images are resized by the factor ``s`` (1.0 = native pixels) and
    covered by overlapping ``input_size`` tiles, in training (random crops or the tile grid) and
    prediction (the tile grid, batched, blended); right for 8-24 MP images with small defects.
    ``shading > 0`` corrects each whole image's lighting first (:func:`correct_shading`, its
    blur a fraction of the shorter side), before it is resized or tiled.
    """

    input_size: int
    scale: float | None
    tile_overlap: float
    shading: float = 0.0  # an artifact from before shading correction has none: off

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """RGB float image in network space: resized to the tile (whole mode) or scaled+padded.

        ``image`` is a :func:`read_pixels` array (resized in its own integer type, then made
        float: what training and prediction both do) or a :func:`read_image` float one.
        """
        return as_float(self.prepare_pixels(image))

    def prepare_pixels(self, image: np.ndarray) -> np.ndarray:
        """:meth:`prepare` before the conversion to float (the image's own pixel type)."""
        rgb = to_rgb(correct_shading(image, self.shading))
        t = self.input_size
        if self.scale is None:
            return resize(rgb, t, t)
        h, w = rgb.shape[:2]
        hs, ws = max(1, round(h * self.scale)), max(1, round(w * self.scale))
        if (hs, ws) != (h, w):
            rgb = resize(rgb, hs, ws)
        return pad_to_tile(rgb, t)

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        if self.scale is None:
            return self.input_size, self.input_size
        return max(1, round(height * self.scale)), max(1, round(width * self.scale))

    def overlap_px(self, overlap: float | None = None) -> int:
        frac = self.tile_overlap if overlap is None else overlap
        return min(self.input_size - 1, int(round(frac * self.input_size)))


#: pixel type of a tiled image -> divisor that makes it a [0, 1] float (None: already float32)
TILE_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): None}


def as_float(image: np.ndarray) -> np.ndarray:
    """``image`` as float32 in [0, 1] (unchanged if it is float32 already)."""
    return image if image.dtype == np.float32 else to_float(image)


def to_tensor(tiles: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """``(N, C, T, T)`` tensor on ``device`` from ``(T, T, C)`` arrays."""
    array = np.stack(tiles).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
