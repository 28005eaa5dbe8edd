"""Training images in network space, as the models' ``fit`` functions read them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ProgressCallback
from .image_io import read_pixels
from .tiling import Geometry, tile_grid, to_tensor


class TrainImages:
    """Training images in network space, cached in memory up to a budget, else re-read."""

    def __init__(self, paths: Sequence[Path], geometry: Geometry, cache_bytes: int = 2 << 30):
        self.paths = list(paths)
        self.geometry = geometry
        self.cache: dict[int, np.ndarray] = {}
        self.cache_bytes = cache_bytes
        self.used = 0

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int) -> np.ndarray:
        if i in self.cache:
            return self.cache[i]
        img = self.geometry.prepare(read_pixels(self.paths[i]))
        if self.used + img.nbytes <= self.cache_bytes:
            self.cache[i] = img
            self.used += img.nbytes
        return img

    def grid_batches(
        self, batch_size: int, device: torch.device, progress: ProgressCallback | None = None
    ) -> Iterator[torch.Tensor]:
        """Every grid tile of every image, batched (the tiles prediction will see)."""
        t = self.geometry.input_size
        overlap = self.geometry.overlap_px()
        pending: list[np.ndarray] = []
        for i in range(len(self)):
            img = self.get(i)
            for tile in tile_grid(img.shape[0], img.shape[1], t, overlap):
                pending.append(img[tile.y : tile.y + t, tile.x : tile.x + t])
                if len(pending) == batch_size:
                    yield to_tensor(pending, device)
                    pending = []
            if progress is not None:
                progress((i + 1) / len(self), f"image {i + 1}/{len(self)}")
        if pending:
            yield to_tensor(pending, device)

    def count_tiles(self) -> int:
        t, overlap = self.geometry.input_size, self.geometry.overlap_px()
        total = 0
        for i in range(len(self)):
            h, w = self.get(i).shape[:2]
            total += len(tile_grid(h, w, t, overlap))
        return total

    def random_crops(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        t = self.geometry.input_size
        crops = []
        for _ in range(n):
            img = self.get(int(rng.integers(len(self))))
            y = int(rng.integers(img.shape[0] - t + 1))
            x = int(rng.integers(img.shape[1] - t + 1))
            crops.append(img[y : y + t, x : x + t])
        return to_tensor(crops, torch.device("cpu"))


@dataclass
class TrainData:
    """What a model's ``fit`` gets: the training images and the held-out normal images (the
    training images themselves when none could be held out), both in network space."""

    images: TrainImages
    held_out: TrainImages
