"""Thumbnails packed into PNG sprite sheets: a few files instead of one per image, loaded by the page
as plain ``<img>`` elements clipped to one cell (so they work from ``file://``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def to_uint8_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 or float in [0, 1] -> (H, W, C) uint8 with C in {1, 3}."""
    a = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    a = np.transpose(a, (1, 2, 0))
    if a.shape[2] not in (1, 3):
        a = a[:, :, :1]
    return a


def diverging(values: np.ndarray) -> np.ndarray:
    """(H, W) signed values -> (H, W, 3) uint8, blue (negative) - white (0) - red (positive), scaled
    by the largest magnitude: how decoder atoms are drawn."""
    scale = float(np.abs(values).max()) or 1.0
    v = np.clip(values / scale, -1.0, 1.0)[..., None]
    white = np.ones(3)
    red, blue = np.array([0.70, 0.09, 0.17]), np.array([0.13, 0.40, 0.67])
    rgb = np.where(v >= 0, white + v * (red - white), white - v * (blue - white))
    return (rgb * 255 + 0.5).astype(np.uint8)


class SpriteBook:
    """Square cells of ``px`` pixels, ``cols``² per sheet; ``add`` returns the cell's slot number.

    Images of another size are resized (nearest for upscaling small images, bilinear otherwise)."""

    def __init__(self, name: str, px: int, cols: int = 32) -> None:
        self.name, self.px, self.cols = name, int(px), int(cols)
        self.cells: list[np.ndarray] = []

    @property
    def per_sheet(self) -> int:
        return self.cols * self.cols

    def add(self, hwc: np.ndarray) -> int:
        if hwc.shape[0] != self.px or hwc.shape[1] != self.px:
            mode = Image.NEAREST if hwc.shape[0] < self.px else Image.BILINEAR
            img = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
            hwc = np.asarray(img.resize((self.px, self.px), mode))
            hwc = hwc[:, :, None] if hwc.ndim == 2 else hwc
        self.cells.append(hwc)
        return len(self.cells) - 1

    def write(self, folder: Path) -> dict:
        """Write ``<name>_<i>.png`` sheets into ``folder``; returns the book's description for the page."""
        files = []
        channels = max((c.shape[2] for c in self.cells), default=1)
        for sheet, start in enumerate(range(0, len(self.cells), self.per_sheet)):
            cells = self.cells[start:start + self.per_sheet]
            rows = -(-len(cells) // self.cols)
            width = self.cols if rows > 1 else len(cells)
            canvas = np.full((rows * self.px, width * self.px, channels), 255, np.uint8)
            for i, cell in enumerate(cells):
                r, c = divmod(i, self.cols)
                if cell.shape[2] != channels:
                    cell = np.repeat(cell, channels, axis=2)
                canvas[r * self.px:(r + 1) * self.px, c * self.px:(c + 1) * self.px] = cell
            name = f"{self.name}_{sheet}.png"
            Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas).save(folder / name, compress_level=6)
            files.append(name)
        return {"name": self.name, "px": self.px, "cols": self.cols, "files": files, "count": len(self.cells)}
