"""Cross-model feature correlation: same latent index, Hungarian-matched latents, and nulls that say
what chance alone gives, every number of one row averaged over the same latents.

Feature correlation (``docs/metrics.md``): Pearson correlation, over the scored split's images,
between model A's and model B's code for a latent. The latent set of a row is fixed first, from the
scored split's fire counts: "alive in both" = latents firing on at least ``min_activations`` images
in A and in B (same index). Over that set:

* ``same_index``: r(A_f, B_f);
* ``matched``: latents paired one-to-one by maximum total correlation (Hungarian method,
  ``scipy.optimize.linear_sum_assignment``) on the *fit* split (validation), then scored on the
  scored split (test), so the matching's selection bias does not inflate the score;
* ``null_random_pairs``: r(A_f, B_π(f)) for a random permutation π of the set;
* ``null_shuffled_images``: the same fit-then-score matching after shuffling B's image order on
  both splits, which breaks the image correspondence and keeps each latent's marginal.

A second, labelled set, "alive in each": A's alive latents against B's alive latents (indices may
differ, as independent SAEs' arbitrary indices need), with the matching and nulls computed the same
way over min(|A|, |B|) pairs. Without a fit split both steps use the scored split (in-sample).
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
class Matching:
    """A matching over one latent set: rows (A's latents), cols (B's), r (scored), and the nulls."""

    rows: np.ndarray
    cols: np.ndarray
    r: np.ndarray
    null_random_pairs: np.ndarray
    null_shuffled_images: np.ndarray

    @property
    def identity_rate(self) -> float:
        """Share of pairs that keep the same index (1: the index is already aligned)."""
        return float((self.rows == self.cols).mean()) if self.rows.size else float("nan")

    @staticmethod
    def empty() -> "Matching":
        z = np.zeros(0, dtype=np.int64)
        return Matching(z, z, np.zeros(0), np.zeros(0), np.zeros(0))


@dataclass
class PairCorrelation:
    """Correlation results for one pair of models (a, b) of one SAE system.

    same_index: (n,) r(a_f, b_f) on the scored split, NaN outside the "alive in both" set ``both``;
    matched / alive_each: ``Matching`` over "alive in both" and over "alive in each" (module
    docstring); fit_split / score_split name the splits.
    """

    a: str
    b: str
    same_index: np.ndarray
    both: np.ndarray
    matched: Matching
    alive_each: Matching
    fit_split: str = "test"
    score_split: str = "test"

    # the "alive in both" matching under its former names
    @property
    def matched_rows(self) -> np.ndarray:
        return self.matched.rows

    @property
    def matched_cols(self) -> np.ndarray:
        return self.matched.cols

    @property
    def matched_r(self) -> np.ndarray:
        return self.matched.r

    @property
    def null_random_pairs(self) -> np.ndarray:
        return self.matched.null_random_pairs

    @property
    def null_shuffled_images(self) -> np.ndarray:
        return self.matched.null_shuffled_images

    @property
    def identity_rate(self) -> float:
        return self.matched.identity_rate

    def top(self, count: int) -> list[dict]:
        """The ``count`` latents with the highest same-index r: [{latent, r}], best first."""
        finite = np.flatnonzero(np.isfinite(self.same_index))
        order = finite[np.argsort(-self.same_index[finite], kind="stable")][:count]
        return [{"latent": int(f), "r": float(self.same_index[f])} for f in order]

    def numbers(self, top: int) -> dict:
        """Distributions (same latent set per block, count stated), top lists and every value."""
        m, e = self.matched, self.alive_each
        return {
            "models": [self.a, self.b], "fit_split": self.fit_split, "score_split": self.score_split,
            "latent_set": "alive in both models (same index)", "n_latents_set": int(self.both.size),
            "same_index": distribution(self.same_index[self.both]),
            "hungarian_matched": distribution(m.r),
            "hungarian_identity_rate": m.identity_rate,
            "null_random_pairs": distribution(m.null_random_pairs),
            "null_shuffled_images": distribution(m.null_shuffled_images),
            "alive_each": {"latent_set": "alive in each model (any index)", "n_pairs": int(e.rows.size),
                           "hungarian_matched": distribution(e.r), "hungarian_identity_rate": e.identity_rate,
                           "null_random_pairs": distribution(e.null_random_pairs),
                           "null_shuffled_images": distribution(e.null_shuffled_images)},
            "top_same_index": self.top(top),
            "top_matched": [{"latent_a": int(m.rows[i]), "latent_b": int(m.cols[i]), "r": float(m.r[i])}
                            for i in np.argsort(-m.r, kind="stable")[:top]],
            "per_latent": {"same_index": self.same_index.tolist(), "matched_rows": m.rows.tolist(),
                           "matched_cols": m.cols.tolist(), "matched_r": m.r.tolist(),
                           "null_random_pairs": m.null_random_pairs.tolist(),
                           "null_shuffled_images": m.null_shuffled_images.tolist()},
        }


def _match(score_a: Tensor, score_b: Tensor, fit_a: Tensor, fit_b: Tensor, rows: np.ndarray, cols: np.ndarray,
           rng: np.random.Generator) -> Matching:
    """Hungarian matching of A's latents ``rows`` to B's ``cols`` fitted on (fit_a, fit_b), scored on
    (score_a, score_b), and the two nulls (module docstring)."""
    if rows.size == 0 or cols.size == 0:
        return Matching.empty()
    fa, fb, sa, sb = fit_a[:, rows], fit_b[:, cols], score_a[:, rows], score_b[:, cols]
    r_idx, c_idx = hungarian(np.nan_to_num(cross_correlation(fa, fb)))
    scored = np.nan_to_num(pearson_columns(sa[:, r_idx], sb[:, c_idx]))
    pairs = min(rows.size, cols.size)
    perm_a, perm_b = rng.permutation(rows.size)[:pairs], rng.permutation(cols.size)[:pairs]
    null_pairs = np.nan_to_num(pearson_columns(sa[:, perm_a], sb[:, perm_b]))
    fit_shuffled = fb[torch.from_numpy(rng.permutation(fb.shape[0]))]
    score_shuffled = sb[torch.from_numpy(rng.permutation(sb.shape[0]))]
    nr, nc = hungarian(np.nan_to_num(cross_correlation(fa, fit_shuffled)))
    null_shuffled = np.nan_to_num(pearson_columns(sa[:, nr], score_shuffled[:, nc]))
    return Matching(rows[r_idx], cols[c_idx], scored, null_pairs, null_shuffled)


def pair_correlation(codes: SplitCodes, a: str, b: str, threshold: float, min_activations: int,
                     seed: int, fit: SplitCodes | None = None, fit_split: str = "val",
                     score_split: str = "test") -> PairCorrelation:
    """Same-index, Hungarian-matched and null correlations of models a and b (module docstring).

    codes: the scored split's codes (sets and scores); fit: the split the matchings are fitted on
    (None: ``codes`` itself, in-sample).
    """
    ca, cb = codes.codes[a], codes.codes[b]
    fa, fb = (ca, cb) if fit is None else (fit.codes[a], fit.codes[b])
    ok_a = (ca > threshold).sum(0).numpy() >= min_activations
    ok_b = (cb > threshold).sum(0).numpy() >= min_activations
    both = np.flatnonzero(ok_a & ok_b)
    same = np.full(codes.n_latents, np.nan)
    if both.size:
        same[both] = np.nan_to_num(pearson_columns(ca[:, both], cb[:, both]))
    rng = np.random.default_rng(seed)
    matched = _match(ca, cb, fa, fb, both, both, rng)
    each = _match(ca, cb, fa, fb, np.flatnonzero(ok_a), np.flatnonzero(ok_b), rng)
    return PairCorrelation(a, b, same, both, matched, each, fit_split if fit is not None else score_split, score_split)


def all_pairs(codes: SplitCodes, threshold: float, min_activations: int, seed: int,
              fit: SplitCodes | None = None, fit_split: str = "val", score_split: str = "test") -> list[PairCorrelation]:
    """``pair_correlation`` for every unordered pair of models, in model order."""
    return [pair_correlation(codes, a, b, threshold, min_activations, seed + i, fit, fit_split, score_split)
            for i, (a, b) in enumerate(combinations(codes.names, 2))]


def correlation_figure(usae: list[PairCorrelation], independent: list[PairCorrelation], path: Path) -> Path:
    """Per model pair, two panels that each compare one quantity for both systems over their
    "alive in both" latents: same-index r, and Hungarian-matched r (fit / score split) with the
    shuffled-images null."""
    fig, axes = subplots(len(usae), 2, figsize=(13, 4.0 * len(usae)), dpi=110, squeeze=False)
    bins = np.linspace(-0.2, 1.0, 49)
    for row, pu, pi in zip(axes, usae, independent):
        panels = [
            ("same latent index", [(pu.same_index[pu.both], "USAE", "tab:blue", "stepfilled", 0.35),
                                   (pi.same_index[pi.both], "independent", "tab:red", "step", 1.0)]),
            (f"Hungarian-matched (fit on {pu.fit_split}, scored on {pu.score_split})",
             [(pu.matched_r, "USAE", "tab:blue", "stepfilled", 0.35),
              (pi.matched_r, "independent", "tab:red", "step", 1.0),
              (pu.null_shuffled_images, "USAE null: shuffled images", "tab:cyan", "step", 1.0),
              (pi.null_shuffled_images, "independent null: shuffled images", "tab:gray", "step", 1.0)]),
        ]
        for ax, (title, series) in zip(row, panels):
            for values, label, color, kind, alpha in series:
                v = values[np.isfinite(values)]
                if v.size:
                    ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, histtype=kind, color=color, alpha=alpha,
                            lw=1.8, density=True, label=f"{label} (n={v.size}, mean {v.mean():.2f})")
            ax.set_xlabel(f"Pearson r of codes over {pu.score_split} images, {pu.a} vs {pu.b}")
            ax.set_ylabel("density of latents")
            ax.set_title(f"{title}; latents alive in both models", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)
