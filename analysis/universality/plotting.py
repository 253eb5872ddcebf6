"""Matplotlib without a display or pyplot: the report's figures are drawn to PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def subplots(*args, **kwargs):
    """``(figure, axes)`` like ``plt.subplots``, but a bare ``matplotlib.figure.Figure``: no pyplot
    state and no backend switch (PNG output goes through Agg), so it is safe in notebooks and threads."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kwargs.pop("figsize", None), dpi=kwargs.pop("dpi", None), layout=kwargs.pop("layout", None))
    return fig, fig.subplots(*args, **kwargs)


def save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG)."""
    fig.savefig(path)
    return Path(path)


def to_display(image) -> np.ndarray:
    """(C, H, W) uint8 or float in [0, 1] (tensor or array) -> (H, W, 3) float in [0, 1]."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    a = np.clip(a, 0.0, 1.0)
    a = np.repeat(a[:1], 3, axis=0) if a.shape[0] == 1 else a[:3]
    return np.transpose(a, (1, 2, 0))


def draw_strip(ax, images: list, captions: list[str], frames: list[str | None], gap: int = 4,
               fontsize: float = 6.0) -> None:
    """Images side by side in ONE ``imshow`` (a figure of hundreds of small axes takes tens of
    seconds to lay out), each centred in a cell of the largest size, with a caption above and an
    optional coloured frame."""
    from matplotlib.patches import Rectangle

    tiles = [to_display(im) for im in images]
    if not tiles:
        ax.axis("off")
        return
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    canvas = np.ones((h, len(tiles) * (w + gap) - gap, 3), dtype=np.float32)
    ax.imshow(canvas, interpolation="nearest")
    for i, (tile, caption, frame) in enumerate(zip(tiles, captions, frames)):
        th, tw = tile.shape[:2]
        y0, x0 = (h - th) // 2, i * (w + gap) + (w - tw) // 2
        canvas[y0:y0 + th, x0:x0 + tw] = tile
        if frame:
            ax.add_patch(Rectangle((x0 - 1.0, y0 - 1.0), tw + 1.0, th + 1.0, fill=False, edgecolor=frame, lw=1.6))
        if caption:
            ax.text(x0 + tw / 2, -1.5, caption, ha="center", va="bottom", fontsize=fontsize,
                    color=frame if frame and frame != "black" else "black")
    ax.images[0].set_data(canvas)
    ax.set_xlim(-2, canvas.shape[1] + 1)
    ax.set_ylim(h + 1, -2)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
