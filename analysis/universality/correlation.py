"""Cross-model feature correlation: same latent index (USAE), Hungarian-matched (independent SAEs),
and shuffled-pairing nulls that say what chance alone gives.

Feature correlation (``shared/DESIGN.md``): Pearson correlation, over the split's images, between
model A's and model B's code for the same latent; latents that fire (code > threshold) on fewer
than ``min_activations`` images in either model are left out (NaN). Independent SAEs have arbitrary
indices, so their latents are paired by maximum-weight matching on the A×B correlation matrix
(Hungarian method, ``scipy.optimize.linear_sum_assignment``). Two nulls:

* ``random_pairs``: Pearson of A's eligible latents with a random permutation of B's eligible
  latents (what an unaligned index gives, ≈ 0);
* ``shuffled_images``: the same Hungarian matching after shuffling the image order of B, which
  breaks the image correspondence but keeps each latent's marginal: the matching's own selection
  bias, the floor that a Hungarian-matched value must beat.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from analysis.universality.codes import SplitCodes
from analysis.universality.plotting import save, subplots


def _standardize(a: Tensor) -> tuple[Tensor, Tensor]:
    """Columns of (N, p) centred and scaled to unit (population) std, float64; and which are constant."""
    a = a.to(torch.float64)
    centred = a - a.mean(0, keepdim=True)
    std = centred.square().mean(0).sqrt()
    constant = std <= 1e-12
    return centred / torch.where(constant, torch.ones_like(std), std), constant


def pearson_columns(a: Tensor, b: Tensor) -> np.ndarray:
    """(n,) Pearson r between column f of a and column f of b, both (N, n); NaN where either is constant."""
    za, ca = _standardize(a)
    zb, cb = _standardize(b)
    r = (za * zb).mean(0)
    r[ca | cb] = float("nan")
    return r.clamp(-1, 1).numpy()


def cross_correlation(a: Tensor, b: Tensor) -> np.ndarray:
    """(p, q) Pearson r of every column of a (N, p) with every column of b (N, q); float32 matmul."""
    za, _ = _standardize(a)
    zb, _ = _standardize(b)
    return ((za.float().T @ zb.float()) / a.shape[0]).clamp(-1, 1).numpy().astype(np.float64)


def hungarian(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the maximum-total-correlation one-to-one matching of a (p, q) matrix."""
    return linear_sum_assignment(corr, maximize=True)


def distribution(values: np.ndarray) -> dict:
    """Count, mean, median, quantiles and share above 0.5 of the finite values, JSON-ready."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"count": 0, "mean": float("nan"), "median": float("nan"), "q10": float("nan"),
                "q90": float("nan"), "share_above_0.5": float("nan")}
    return {"count": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "q10": float(np.quantile(v, 0.1)), "q90": float(np.quantile(v, 0.9)),
            "share_above_0.5": float((v > 0.5).mean())}


@dataclass
class PairCorrelation:
    """Correlation results for one pair of models (a, b) of one SAE system.

    same_index: (n,) r(a_f, b_f), NaN for left-out latents. matched_rows/matched_cols: latent
    indices paired by the Hungarian method (a's, b's); matched_r: their r. null_random_pairs and
    null_shuffled_images: r of the two nulls (module docstring).
    """

    a: str
    b: str
    same_index: np.ndarray
    matched_rows: np.ndarray
    matched_cols: np.ndarray
    matched_r: np.ndarray
    null_random_pairs: np.ndarray
    null_shuffled_images: np.ndarray

    def top(self, count: int) -> list[dict]:
        """The ``count`` latents with the highest same-index r: [{latent, r}], best first."""
        finite = np.flatnonzero(np.isfinite(self.same_index))
        order = finite[np.argsort(-self.same_index[finite], kind="stable")][:count]
        return [{"latent": int(f), "r": float(self.same_index[f])} for f in order]

    @property
    def identity_rate(self) -> float:
        """Share of Hungarian pairs that keep the same index (1: the index is already aligned)."""
        return float((self.matched_rows == self.matched_cols).mean()) if self.matched_rows.size else float("nan")

    def numbers(self, top: int) -> dict:
        """Distributions, top lists and (under ``per_latent``) every value behind them."""
        return {
            "models": [self.a, self.b],
            "same_index": distribution(self.same_index),
            "hungarian_matched": distribution(self.matched_r),
            "hungarian_identity_rate": self.identity_rate,
            "null_random_pairs": distribution(self.null_random_pairs),
            "null_shuffled_images": distribution(self.null_shuffled_images),
            "top_same_index": self.top(top),
            "top_matched": [{"latent_a": int(self.matched_rows[i]), "latent_b": int(self.matched_cols[i]),
                             "r": float(self.matched_r[i])} for i in np.argsort(-self.matched_r, kind="stable")[:top]],
            "per_latent": {"same_index": self.same_index.tolist(), "matched_rows": self.matched_rows.tolist(),
                           "matched_cols": self.matched_cols.tolist(), "matched_r": self.matched_r.tolist(),
                           "null_random_pairs": self.null_random_pairs.tolist(),
                           "null_shuffled_images": self.null_shuffled_images.tolist()},
        }


def pair_correlation(codes: SplitCodes, a: str, b: str, threshold: float, min_activations: int,
                     seed: int) -> PairCorrelation:
    """Same-index, Hungarian-matched and null correlations of models a and b (module docstring)."""
    ca, cb = codes.codes[a], codes.codes[b]
    fires_a = (ca > threshold).sum(0).numpy()
    fires_b = (cb > threshold).sum(0).numpy()
    ok_a, ok_b = fires_a >= min_activations, fires_b >= min_activations
    same = np.full(codes.n_latents, np.nan)
    both = np.flatnonzero(ok_a & ok_b)
    if both.size:
        same[both] = pearson_columns(ca[:, both], cb[:, both])
    rows_a, cols_b = np.flatnonzero(ok_a), np.flatnonzero(ok_b)
    rng = np.random.default_rng(seed)
    empty = np.zeros(0, dtype=np.int64)
    if rows_a.size == 0 or cols_b.size == 0:
        return PairCorrelation(a, b, same, empty, empty, np.zeros(0), np.zeros(0), np.zeros(0))
    sub_a, sub_b = ca[:, rows_a], cb[:, cols_b]
    corr = np.nan_to_num(cross_correlation(sub_a, sub_b))
    r_idx, c_idx = hungarian(corr)
    matched_r = corr[r_idx, c_idx]
    pairs = min(rows_a.size, cols_b.size)
    perm_a, perm_b = rng.permutation(rows_a.size)[:pairs], rng.permutation(cols_b.size)[:pairs]
    null_pairs = pearson_columns(sub_a[:, perm_a], sub_b[:, perm_b])
    shuffled = sub_b[torch.from_numpy(rng.permutation(sub_b.shape[0]))]
    null_corr = np.nan_to_num(cross_correlation(sub_a, shuffled))
    nr, nc = hungarian(null_corr)
    return PairCorrelation(a, b, same, rows_a[r_idx], cols_b[c_idx], matched_r, null_pairs, null_corr[nr, nc])


def all_pairs(codes: SplitCodes, threshold: float, min_activations: int, seed: int) -> list[PairCorrelation]:
    """``pair_correlation`` for every unordered pair of models, in model order."""
    return [pair_correlation(codes, a, b, threshold, min_activations, seed + i)
            for i, (a, b) in enumerate(combinations(codes.names, 2))]


def correlation_figure(usae: list[PairCorrelation], independent: list[PairCorrelation], path: Path) -> Path:
    """Per model pair: USAE same-index r against independent SAEs' Hungarian-matched r and the nulls."""
    fig, axes = subplots(1, len(usae), figsize=(7.5 * len(usae), 4.2), dpi=110, squeeze=False)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, pu, pi in zip(axes[0], usae, independent):
        series = [
            (pu.same_index, "USAE, same index", "tab:blue", "stepfilled", 0.35),
            (pi.matched_r, "independent, Hungarian-matched", "tab:red", "step", 1.0),
            (pi.null_shuffled_images, "null: Hungarian on shuffled images", "tab:gray", "step", 1.0),
            (pi.null_random_pairs, "null: random pairs", "black", "step", 1.0),
        ]
        for values, label, color, kind, alpha in series:
            v = values[np.isfinite(values)]
            if v.size:
                ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, histtype=kind, color=color, alpha=alpha,
                        lw=1.8, density=True, label=f"{label} (n={v.size}, mean {v.mean():.2f})")
        ax.set_xlabel(f"Pearson r of codes, {pu.a} vs {pu.b}, over images")
        ax.set_ylabel("density of latents")
        ax.set_title(f"Feature correlation across models: {pu.a} / {pu.b}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
