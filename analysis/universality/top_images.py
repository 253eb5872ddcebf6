"""Top-activating images of a latent in one model, and the figure of them for several latents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

from analysis.universality.codes import SplitCodes
from analysis.universality.plotting import draw_strip, save, subplots


@dataclass
class TopImages:
    """For L latents of one model: index (L, K) image rows of the split, code (L, K) their codes,
    pre (L, K) their pre-activations. Ranked by code, ties (e.g. 0: not firing) by pre-activation."""

    index: np.ndarray
    code: np.ndarray
    pre: np.ndarray

    def numbers(self, latents: Sequence[int]) -> list[dict]:
        return [{"latent": int(f), "images": self.index[i].tolist(), "codes": self.code[i].tolist(),
                 "pre_activations": self.pre[i].tolist()} for i, f in enumerate(latents)]


def top_activating(codes: SplitCodes, model: str, latents: Sequence[int], count: int) -> TopImages:
    """The ``count`` images of the split with the highest code of each latent in ``model``."""
    latents = [int(f) for f in latents]
    count = min(count, codes.n_samples)
    if not latents:
        empty = np.zeros((0, count))
        return TopImages(empty.astype(np.int64), empty, empty)
    z = codes.codes[model][:, latents].numpy()
    pre = codes.pre_codes[model][:, latents].numpy()
    idx = np.stack([np.lexsort((-pre[:, i], -z[:, i]))[:count] for i in range(len(latents))])
    rows = np.arange(len(latents))[:, None]
    return TopImages(idx, z.T[rows, idx], pre.T[rows, idx])


def top_images_figure(images: Tensor, labels: Tensor, class_names: Sequence[str],
                      tops: dict[str, TopImages], latents: Sequence[int], path: Path) -> Path:
    """Rows: latents; columns: models, each a strip of that model's top images with class and code
    (red frame: the code is 0 there, i.e. the latent does not fire; ranked by pre-activation)."""
    models = list(tops)
    count = next(iter(tops.values())).index.shape[1]
    fig, axes = subplots(len(latents), len(models), figsize=(0.85 * count * len(models) + 0.8,
                             1.05 * len(latents) + 0.5), dpi=110, squeeze=False)
    for r, f in enumerate(latents):
        for m, model in enumerate(models):
            top, ax = tops[model], axes[r, m]
            rows = [int(i) for i in top.index[r]]
            names = [class_names[int(labels[i])] if int(labels[i]) < len(class_names) else str(int(labels[i]))
                     for i in rows]
            draw_strip(ax, [images[i] for i in rows],
                       [f"{name[:9]} {code:.2f}" for name, code in zip(names, top.code[r])],
                       ["black" if code > 0 else "red" for code in top.code[r]])
            ax.set_ylabel(f"latent {f}", fontsize=7)
            if r == 0:
                ax.set_title(model, fontsize=9, pad=12)
    fig.suptitle("Top-activating images per latent and model (class, code; red: does not fire)", fontsize=9)
    fig.tight_layout()
    return save(fig, path)
