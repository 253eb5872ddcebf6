"""The study's figures, as ``matplotlib.figure.Figure`` objects (no pyplot state; save with
``fig.savefig``). Atoms and heatmaps have a sign, so they use a diverging map centred on zero."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from analysis.ksparse.attribution import Overlay

DIVERGING = "RdBu_r"


def _symmetric(ax, image: np.ndarray, cmap: str = DIVERGING):
    limit = float(np.abs(image).max()) or 1.0
    return ax.imshow(image, cmap=cmap, vmin=-limit, vmax=limit)


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def atom_grid(atoms: Tensor, units: Tensor, scores: Tensor, class_names: Sequence[str]) -> Figure:
    """Decoder atoms of the top units per class: atoms (C, m, S, S), unit ids and importances (C, m)."""
    classes, m = units.shape
    fig = Figure(figsize=(1.3 * m + 1.6, 1.45 * classes), layout="constrained")
    axes = fig.subplots(classes, m, squeeze=False)
    for c in range(classes):
        for j in range(m):
            ax = axes[c, j]
            _symmetric(ax, atoms[c, j].numpy())
            _clean(ax)
            ax.set_title(f"#{int(units[c, j])}  {float(scores[c, j]):.2g}", fontsize=7)
        axes[c, 0].set_ylabel(class_names[c], fontsize=8)
    fig.suptitle("Decoder atoms of the most important units per class (unit id, importance); red +, blue −",
                 fontsize=9)
    return fig


def importance_heatmap(scores: Tensor, units: Tensor, class_names: Sequence[str]) -> Figure:
    """Importance (n, C) of the union of every class's top units (rows), all classes (columns)."""
    rows = list(dict.fromkeys(int(u) for u in units.flatten()))
    data = scores[rows].numpy()
    fig = Figure(figsize=(6.5, max(3.0, 0.14 * len(rows) + 1.2)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [f"#{u}" for u in rows], fontsize=5)
    ax.set_title("importance[i, c] = |W[c, i]| · mean(z_i | class c)", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.6)
    return fig


def overlay_figure(overlays: Sequence[Overlay], class_names: Sequence[str],
                   labels: Sequence[int] | None = None) -> Figure:
    """One row per image: the image, its evidence heatmap over it, then the top units' atoms
    (``labels``: true classes, shown beside the explained class when given)."""
    k = max(len(o.units) for o in overlays)
    fig = Figure(figsize=(1.35 * (k + 2) + 0.5, 1.55 * len(overlays)), layout="constrained")
    axes = fig.subplots(len(overlays), k + 2, squeeze=False)
    for r, (row, overlay) in enumerate(zip(axes, overlays)):
        image = overlay.image.numpy()
        row[0].imshow(image, cmap="gray_r")
        shown = class_names[overlay.target]
        row[0].set_title(shown if labels is None else f"{class_names[labels[r]]} → {shown}", fontsize=7)
        row[1].imshow(image, cmap="gray_r")
        limit = float(np.abs(overlay.heatmap.numpy()).max()) or 1.0
        row[1].imshow(overlay.heatmap.numpy(), cmap=DIVERGING, vmin=-limit, vmax=limit, alpha=0.65)
        row[1].set_title(f"Σ top-{len(overlay.units)} evidence", fontsize=7)
        for j in range(k):
            ax = row[j + 2]
            if j < len(overlay.units):
                _symmetric(ax, overlay.atoms[j].numpy())
                ax.set_title(f"#{int(overlay.units[j])} +{float(overlay.contributions[j]):.2f}", fontsize=7)
            else:
                ax.axis("off")
        for ax in row:
            _clean(ax)
    fig.suptitle("Feature overlays: atoms × logit contributions W[c, i]·z_i of the top units", fontsize=9)
    return fig


def occlusion_figure(images: Sequence[Tensor], maps: Sequence[Tensor], targets: Sequence[int],
                     class_names: Sequence[str], what: str, labels: Sequence[int] | None = None) -> Figure:
    """Each image over its occlusion map (how much ``what`` of the predicted class ``targets``
    drops when that area is covered); ``labels``: true classes, shown when given."""
    n = len(images)
    fig = Figure(figsize=(1.5 * n + 0.6, 3.4), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for j, (image, drop, target) in enumerate(zip(images, maps, targets)):
        axes[0, j].imshow(image.reshape(drop.shape).numpy(), cmap="gray_r")
        title = class_names[target] if labels is None else f"{class_names[labels[j]]} → {class_names[target]}"
        axes[0, j].set_title(title, fontsize=7)
        _symmetric(axes[1, j], drop.numpy())
        _clean(axes[0, j])
        _clean(axes[1, j])
    fig.suptitle(f"Occlusion (captum): drop of the predicted class {what} when a patch covers the pixel "
                 f"(red = the prediction relies on it); titles: label → prediction", fontsize=8)
    return fig


def ablation_figure(result: dict) -> Figure:
    """Per class: class-logit drop and class-accuracy drop, top units vs random units (± std)."""
    per_class = result["per_class"]
    names = [entry["name"] for entry in per_class]
    x = np.arange(len(names))
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    base = result["baseline"]["class_accuracy"]
    panels = [("logit_drop", "class-c logit drop", lambda e, k: e["top"][k], lambda e, k: e["random"][f"{k}_mean"]),
              ("class_accuracy", "class-c accuracy drop (fraction)", lambda e, k: base[e["class"]] - e["top"][k],
               lambda e, k: base[e["class"]] - e["random"][f"{k}_mean"])]
    for ax, (key, label, top_value, random_value) in zip(axes, panels):
        ax.bar(x - 0.2, [top_value(e, key) for e in per_class], 0.4, label="top units")
        ax.bar(x + 0.2, [random_value(e, key) for e in per_class], 0.4,
               yerr=[e["random"][f"{key}_std"] for e in per_class], label="matched random units", capsize=2)
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].legend(fontsize=7)
    m = result["units_per_class"]
    fig.suptitle(f"Zeroing the {m} most important units of class c vs {m} random units matched on "
                 f"firing strength ({len(result['seeds'])} draws)", fontsize=9)
    return fig


def reconstruction_figure(images: Tensor, reconstructions: Tensor, titles: Sequence[str]) -> Figure:
    """Originals (top row) over their reconstructions (bottom row): (n, S, S) each."""
    n = images.shape[0]
    fig = Figure(figsize=(1.3 * n + 0.4, 3.0), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j].numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[1, j].imshow(reconstructions[j].clamp(0, 1).numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[0, j].set_title(titles[j], fontsize=7)
        _clean(axes[0, j])
        _clean(axes[1, j])
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    return fig
