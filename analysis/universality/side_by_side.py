"""Side-by-side views of shared latents: each backbone's view of the same latent index, next to each
other (the accentuation seed if any, its feature visualisation, then its top-activating images), and
the grid of all feature visualisations."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

from analysis.universality.plotting import draw_strip, save, subplots
from analysis.universality.top_images import TopImages


def side_by_side_figure(latents: Sequence[int], models: Sequence[str], act_max: dict[str, Tensor],
                        act_values: dict[str, Tensor], tops: dict[str, TopImages], images: Tensor,
                        entropy: np.ndarray, fire_counts: np.ndarray, title: str, path: Path,
                        n_top: int, method: str = "fourier", seeds: Tensor | None = None) -> Path:
    """Rows: latents; columns: models, each a strip: the seed image (grey frame; accentuation only,
    shared by the models), the visualisation (blue frame), then ``n_top`` top-activating images (red
    frame where the latent does not fire).

    act_max[model]: (L, C, H, W) in [0, 1] in ``latents`` order; act_values[model]: (L,) final
    pre-activation; tops[model]: the latents' ``TopImages``; images: the split's uint8 images;
    entropy: (n,); fire_counts: (M, n) in ``models`` order; method: the visualisation's name;
    seeds: (L, C, H, W) in [0, 1] or None.
    """
    lead = 1 + (seeds is not None)
    rows = max(1, len(latents))
    fig, axes = subplots(rows, len(models), figsize=(0.85 * (lead + n_top) * len(models) + 1.0, 1.1 * rows + 0.6),
                             dpi=110, squeeze=False)
    for r, f in enumerate(latents):
        for m, model in enumerate(models):
            top, ax = tops[model], axes[r, m]
            k = min(n_top, top.index.shape[1])
            seed = [seeds[r]] if seeds is not None else []
            draw_strip(ax, seed + [act_max[model][r]] + [images[int(i)] for i in top.index[r, :k]],
                       ["seed"] * len(seed) + [f"{method if len(method) <= 7 else method[:6] + '.'} {float(act_values[model][r]):.2f}"]
                       + [f"z={c:.2f}" for c in top.code[r, :k]],
                       ["tab:gray"] * len(seed) + ["tab:blue"] + ["black" if c > 0 else "red" for c in top.code[r, :k]])
            if r == 0:
                ax.set_title(model, fontsize=9, pad=12)
            if m == 0:
                h = entropy[f]
                fires = "/".join(str(int(fire_counts[j, f])) for j in range(len(models)))
                ax.set_ylabel(f"latent {f}\nH={h:.2f}\nfires {fires}" if np.isfinite(h) else f"latent {f}\ndead",
                              fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def act_max_grid_figure(latents: Sequence[int], models: Sequence[str], act_max: dict[str, Tensor],
                        start: dict[str, Tensor], final: dict[str, Tensor], path: Path, title: str) -> Path:
    """Rows: models; one image per latent with its pre-activation before → after optimisation."""
    fig, axes = subplots(len(models), 1, figsize=(0.95 * max(1, len(latents)) + 1.0, 1.2 * len(models) + 0.6),
                             dpi=110, squeeze=False)
    for m, model in enumerate(models):
        ax = axes[m, 0]
        draw_strip(ax, list(act_max[model]),
                   [f"{f}: {float(a):.2f}→{float(b):.2f}" for f, a, b in zip(latents, start[model], final[model])],
                   [None] * len(latents), fontsize=5.5)
        ax.set_ylabel(model, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)
