"""Self and cross R² of an SAE system over a split, and the USAE-vs-independent table figure.

R² (``docs/metrics.md``, computed by ``metrics.universality.R2Matrix``): 1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²
with x̄ the per-dimension mean over the split, sums pooled over the split. Entry (i, j): model j's
features decoded by decoder j from the codes of encoder i; diagonal = self, off-diagonal = cross.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.universality.codes import SplitCodes, saes_of
from analysis.universality.plotting import save, subplots
from metrics.universality import R2Matrix


@torch.no_grad()
def decode_sparse(sae: nn.Module, codes: Tensor) -> Tensor:
    """``sae.decode(codes)`` for k-sparse (B, n) codes at ~B·k·d cost instead of B·n·d.

    The decoder is linear, x̂ = z D + b (``docs/metrics.md``): the non-zero codes pick rows of
    D = ``sae.get_dictionary()`` (``F.embedding_bag``), and b = ``sae.decode(0)``.
    """
    dictionary = sae.get_dictionary()
    width = max(1, int((codes != 0).sum(1).max()))
    vals, idx = torch.topk(codes, width, dim=1)
    out = F.embedding_bag(idx, dictionary, per_sample_weights=vals.to(dictionary.dtype), mode="sum")
    return out + sae.decode(codes.new_zeros(1, codes.shape[1]))


@torch.no_grad()
def r2_matrix(system: nn.Module, codes: SplitCodes, features: Mapping[str, Tensor], batch_size: int,
              device: str | torch.device = "cpu") -> np.ndarray:
    """(M, M) float64 R² matrix of ``system`` from its ``codes`` of ``features`` (name -> (N, d_m)).

    Entry (i, j) decodes encoder i's codes with decoder j, batch by batch, eval mode.
    """
    saes = saes_of(system)
    names = codes.names
    metric = R2Matrix([int(features[n].shape[1]) for n in names]).to(device)
    was_training = system.training
    system.eval()
    try:
        for start in range(0, codes.n_samples, batch_size):
            rows = slice(start, start + batch_size)
            xs = [features[n][rows].to(device=device, dtype=torch.float32) for n in names]
            zs = [codes.codes[n][rows].to(device) for n in names]
            metric.update(xs, [[decode_sparse(saes[dst], z) for dst in names] for z in zs])
    finally:
        system.train(was_training)
    return metric.compute().cpu().numpy()


def r2_numbers(r2: np.ndarray, names: list[str]) -> dict:
    """The matrix (rows: encoder, columns: decoder) plus self and cross means, JSON-ready."""
    eye = np.eye(len(names), dtype=bool)
    return {
        "matrix": r2.tolist(), "rows_encoder": names, "cols_decoder": names,
        "self_mean": float(r2[eye].mean()),
        "cross_mean": float(r2[~eye].mean()) if len(names) > 1 else float("nan"),
        "entries": {f"{src}->{dst}": float(r2[i, j]) for i, src in enumerate(names) for j, dst in enumerate(names)},
    }


def r2_figure(tables: dict[str, np.ndarray], names: list[str], path: Path) -> Path:
    """Heat maps of the R² matrices side by side, one per system, values written in the cells
    (colours clipped to [-1, 1]: a cross R² of -9 and of -1 both mean "useless")."""
    m = len(names)
    fig, axes = subplots(1, len(tables), figsize=(2.6 * len(tables) + 0.9 * m + 1.5, 0.9 * m + 2.2), dpi=110,
                         squeeze=False, sharey=True, layout="constrained")
    for s, (ax, (label, r2)) in enumerate(zip(axes[0], tables.items())):
        im = ax.imshow(np.clip(r2, -1.0, 1.0), vmin=-1.0, vmax=1.0, cmap="RdYlGn")
        ax.set_xticks(range(m), names, rotation=20, ha="right", fontsize=8)
        ax.set_yticks(range(m), names, fontsize=8)
        ax.set_xlabel("decoded into (decoder j)", fontsize=8)
        if s == 0:
            ax.set_ylabel("encoded from (encoder i)", fontsize=8)
        ax.set_title(label, fontsize=10)
        for i in range(m):
            for j in range(m):
                ax.text(j, i, f"{r2[i, j]:.3f}", ha="center", va="center", fontsize=10,
                        fontweight="bold" if i == j else "normal",
                        color="white" if abs(np.clip(r2[i, j], -1, 1)) > 0.7 else "black")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="R² (clipped to [-1, 1])")
    return save(fig, path)
