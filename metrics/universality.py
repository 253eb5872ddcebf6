"""Universality metrics for M sparse autoencoders over a shared latent index (torchmetrics).

Definitions: ``docs/metrics.md``. Every state is a float64 pooled sum reduced with
``dist_reduce_fx="sum"``, so one pass over the split gives the exact value, independent of how the
split is cut into batches or spread over DDP ranks.

* R² of a reconstruction: ``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` with x̄ the per-dimension mean over the
  split (not overcomplete's grand scalar mean), from pooled Σx, Σx², Σ‖x - x̂‖².
* R² matrix: entry (i, j) = R² of model j's features decoded by decoder j from encoder i's codes.
* Fires: latent f fires on a sample for model m when its code is > ``threshold`` (default 0).
* Dead, two definitions, both reported: *never fires* over the split, and *rare*: fires on fewer
  than ``rare_below`` (default 10) samples of the split. Per model, and for the shared index: a
  latent is never-firing / rare when it is so in every model; *alive* is the complement of rare.
* Firing frequency: fires / samples per model and latent; its histogram is over log10 density
  (as SAE dashboards show it), never-firing latents counted apart.
* Firing entropy of latent f: p_m = fires_m / Σ_m fires_m, H = -Σ p_m log p_m / log M
  (0: model-specific, 1: universal); never-firing latents get NaN. Summaries use alive latents.
* Co-firing IoU of latent f: #samples where f fires in every model / #samples where it fires in any.

All firing quantities come from one state metric, ``FiringCounts`` (per-model, per-latent fire
counts, sample counts and the two co-firing counts), synced once; ``UniversalityMetrics`` is a
``MetricCollection`` of it and ``R2Matrix``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torchmetrics import Metric, MetricCollection

from common.errors import UserError

_F64 = torch.float64


@dataclass(frozen=True)
class FiringOptions:
    """What "fires", "rare" and the frequency histogram mean.

    threshold: a latent fires when its code is > threshold. rare_below: fewer fires than this over
    the split is "rare" (dead by the second definition). hist_bins / hist_log10_min: bins of the
    log10-density histogram on [hist_log10_min, 0] (lower densities land in the first bin).
    """

    threshold: float = 0.0
    rare_below: int = 10
    hist_bins: int = 25
    hist_log10_min: float = -5.0

    def __post_init__(self) -> None:
        if self.rare_below < 1:
            raise UserError(f"rare_below={self.rare_below} must be at least 1")
        if self.hist_bins < 1 or not self.hist_log10_min < 0:
            raise UserError(f"hist_bins={self.hist_bins} must be >= 1 and hist_log10_min={self.hist_log10_min} < 0")

    def hist_edges(self, device=None) -> torch.Tensor:
        return torch.linspace(self.hist_log10_min, 0.0, self.hist_bins + 1, dtype=_F64, device=device)


def _fires(codes: torch.Tensor, threshold: float) -> torch.Tensor:
    return codes > threshold


def _check_models(codes: Sequence[torch.Tensor], n_models: int, n_latents: int) -> None:
    if len(codes) != n_models:
        raise UserError(f"expected codes for {n_models} models, got {len(codes)}")
    for m, c in enumerate(codes):
        if c.ndim != 2 or c.shape[1] != n_latents:
            raise UserError(f"codes of model {m} have shape {tuple(c.shape)}; expected (batch, {n_latents})")


def firing_entropy_of(fire_counts: torch.Tensor) -> torch.Tensor:
    """(n,) normalised firing entropy of (M, n) fire counts; NaN where a latent never fires."""
    n_models = fire_counts.shape[0]
    total = fire_counts.sum(0)
    p = fire_counts / total.clamp_min(1)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    entropy = -plogp.sum(0) / (math.log(n_models) if n_models > 1 else 1.0)
    return torch.where(total == 0, torch.full_like(entropy, float("nan")), entropy) + 0.0


def frequency_histogram(fire_counts: torch.Tensor, n_samples: torch.Tensor, options: FiringOptions) -> torch.Tensor:
    """(M, bins) float64 counts of latents per log10 firing-density bin (never-firing latents left out)."""
    edges = options.hist_edges(fire_counts.device)
    density = fire_counts / n_samples.clamp_min(1).unsqueeze(1)
    out = torch.zeros(fire_counts.shape[0], options.hist_bins, dtype=_F64, device=fire_counts.device)
    for m in range(fire_counts.shape[0]):
        d = density[m][density[m] > 0]
        if d.numel():
            logd = d.log10().clamp(options.hist_log10_min, 0.0)
            idx = torch.bucketize(logd, edges[1:-1], right=True)
            out[m] = torch.bincount(idx, minlength=options.hist_bins).to(_F64)
    return out


def firing_summary(fire_counts: torch.Tensor, n_samples: torch.Tensor, all_count: torch.Tensor,
                   any_count: torch.Tensor, options: FiringOptions) -> dict[str, torch.Tensor]:
    """Every firing quantity from the pooled counts (``FiringCounts`` state; see the module docstring).

    fire_counts (M, n), n_samples (M,), all_count / any_count (n,): samples where a latent fires in
    every / in some model. Keys: fire_counts, n_samples, never (M, n) bool, rare (M, n) bool,
    dead_latents / rare_latents / alive (n,) bool (never / rare in every model; alive = not rare),
    n_dead, n_rare, n_alive, dead_fraction / rare_fraction (shared index), *_per_model (M,),
    entropy (n,), frequency (M, n), freq_hist (M, bins), freq_hist_edges (bins + 1,),
    cofiring_iou (n,), cofiring_per_model (M, n), cofiring_iou_mean (over alive latents), l0 (M,),
    rare_below (the threshold, as a scalar tensor).
    """
    never = fire_counts == 0
    rare = fire_counts < options.rare_below
    dead_all, rare_all = never.all(0), rare.all(0)
    nan = torch.tensor(float("nan"), dtype=_F64, device=fire_counts.device)
    iou = torch.where(any_count > 0, all_count / any_count.clamp_min(1), nan)
    per_model = torch.where(fire_counts > 0, all_count / fire_counts.clamp_min(1), nan)
    alive = ~rare_all
    return {
        "fire_counts": fire_counts, "n_samples": n_samples, "never": never, "rare": rare,
        "dead_latents": dead_all, "rare_latents": rare_all, "alive": alive,
        "n_dead": dead_all.sum().to(_F64), "n_rare": rare_all.sum().to(_F64), "n_alive": alive.sum().to(_F64),
        "dead_fraction": dead_all.to(_F64).mean(), "rare_fraction": rare_all.to(_F64).mean(),
        "dead_fraction_per_model": never.to(_F64).mean(1), "rare_fraction_per_model": rare.to(_F64).mean(1),
        "entropy": firing_entropy_of(fire_counts),
        "frequency": fire_counts / n_samples.clamp_min(1).unsqueeze(1),
        "freq_hist": frequency_histogram(fire_counts, n_samples, options),
        "freq_hist_edges": options.hist_edges(fire_counts.device),
        "cofiring_iou": iou, "cofiring_per_model": per_model,
        "cofiring_iou_mean": iou[alive].nanmean() if bool(alive.any()) else nan,
        "l0": fire_counts.sum(1) / n_samples.clamp_min(1),
        "rare_below": torch.tensor(float(options.rare_below), dtype=_F64, device=fire_counts.device),
    }


class R2Matrix(Metric):
    """M×M R² matrix, entry (i, j): model j's features decoded by decoder j from encoder i's codes.

    Args:
        feature_dims: d_m for each model, in model order.
    ``update(features, recons)``: features[j] is (B, d_j); recons[i][j] is (B, d_j).
    ``compute()``: (M, M) float64.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, feature_dims: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.feature_dims = [int(d) for d in feature_dims]
        m = len(self.feature_dims)
        for j, d in enumerate(self.feature_dims):
            self.add_state(f"sum_x_{j}", torch.zeros(d, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("sum_sq", torch.zeros(m, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(m, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("sse", torch.zeros(m, m, dtype=_F64), dist_reduce_fx="sum")

    def update(self, features: Sequence[torch.Tensor], recons: Sequence[Sequence[torch.Tensor]]) -> None:
        m = len(self.feature_dims)
        if len(features) != m or len(recons) != m or any(len(r) != m for r in recons):
            raise UserError(f"R2Matrix needs features for {m} models and an {m}x{m} grid of reconstructions")
        sum_sq, count, sse = [], [], []
        for j, x in enumerate(features):
            x = x.to(_F64)
            setattr(self, f"sum_x_{j}", getattr(self, f"sum_x_{j}") + x.sum(0))
            sum_sq.append(x.square().sum())
            count.append(x.shape[0])
            sse.append(torch.stack([(x - recons[i][j].to(_F64)).square().sum() for i in range(m)]))
        # out-of-place updates: states reset under inference mode must still update outside it
        self.sum_sq = self.sum_sq + torch.stack(sum_sq)
        self.count = self.count + torch.tensor(count, dtype=_F64, device=self.count.device)
        self.sse = self.sse + torch.stack(sse, dim=1)

    def compute(self) -> torch.Tensor:
        ss_tot = torch.stack([
            self.sum_sq[j] - getattr(self, f"sum_x_{j}").square().sum() / self.count[j]
            for j in range(len(self.feature_dims))
        ])
        return 1.0 - self.sse / ss_tot.unsqueeze(0)


class FiringCounts(Metric):
    """The one state behind every firing metric: per-model, per-latent fire counts (M, n), samples
    per model (M,), and per latent the samples where it fires in every / in some model (n,).

    ``update(codes)``: codes[m] (B, n) of model m's encoder for the same B samples.
    ``compute()``: ``firing_summary`` of the synced state (a dict of tensors).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_latents: int, n_models: int, threshold: float = 0.0, rare_below: int = 10,
                 options: FiringOptions | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.options = options or FiringOptions(threshold=float(threshold), rare_below=int(rare_below))
        self.n_latents, self.n_models, self.threshold = int(n_latents), int(n_models), self.options.threshold
        self.add_state("fire_counts", torch.zeros(n_models, n_latents, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("n_samples", torch.zeros(n_models, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("all_count", torch.zeros(n_latents, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("any_count", torch.zeros(n_latents, dtype=_F64), dist_reduce_fx="sum")

    def update(self, codes: Sequence[torch.Tensor]) -> None:
        _check_models(codes, self.n_models, self.n_latents)
        fires = [_fires(c, self.threshold) for c in codes]
        every, some = fires[0], fires[0]
        for f in fires[1:]:
            every, some = every & f, some | f
        self.fire_counts = self.fire_counts + torch.stack([f.sum(0, dtype=_F64) for f in fires])
        self.n_samples = self.n_samples + torch.tensor([c.shape[0] for c in codes], dtype=_F64,
                                                       device=self.n_samples.device)
        self.all_count = self.all_count + every.sum(0, dtype=_F64)
        self.any_count = self.any_count + some.sum(0, dtype=_F64)

    def compute(self) -> dict[str, torch.Tensor]:
        return firing_summary(self.fire_counts, self.n_samples, self.all_count, self.any_count, self.options)


class FiringEntropy(FiringCounts):
    """Firing entropy per latent over M models, normalised by log M (see module docstring).

    ``compute()`` -> {"entropy": (n,) float64, NaN for never-firing latents; "dead": (n,) bool, latents
    that never fire in any model; "n_dead": their count; "alive": (n,) bool, not rare in some model}.
    """

    def compute(self) -> dict[str, torch.Tensor]:
        s = super().compute()
        return {"entropy": s["entropy"], "dead": s["dead_latents"], "n_dead": s["n_dead"], "alive": s["alive"]}


class DeadFraction(FiringCounts):
    """Fraction of dead latents under both definitions.

    ``compute()`` -> {"per_model": (M,) never firing in each model's encoder; "all": never firing in
    any model; "rare_per_model": (M,) firing on fewer than ``rare_below`` samples; "rare_all": rare
    in every model}.
    """

    def compute(self) -> dict[str, torch.Tensor]:
        s = super().compute()
        return {"per_model": s["dead_fraction_per_model"], "all": s["dead_fraction"],
                "rare_per_model": s["rare_fraction_per_model"], "rare_all": s["rare_fraction"]}


class CoFiring(FiringCounts):
    """Co-firing of each latent across the M models.

    ``compute()`` -> {"iou": (n,) #samples firing in every model / #samples firing in any (NaN if
    it never fires); "per_model": (M, n) #samples firing in every model / #samples firing in model
    m (NaN if it never fires in m); "iou_mean": mean IoU over latents that fire}.
    """

    def compute(self) -> dict[str, torch.Tensor]:
        s = super().compute()
        return {"iou": s["cofiring_iou"], "per_model": s["cofiring_per_model"], "iou_mean": s["cofiring_iou"].nanmean()}


class L0(Metric):
    """Mean number of firing latents per sample, per model: (M,) float64."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_models: int, threshold: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_models, self.threshold = int(n_models), float(threshold)
        self.add_state("fires", torch.zeros(n_models, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(n_models, dtype=_F64), dist_reduce_fx="sum")

    def update(self, codes: Sequence[torch.Tensor]) -> None:
        if len(codes) != self.n_models:
            raise UserError(f"expected codes for {self.n_models} models, got {len(codes)}")
        self.fires = self.fires + torch.stack([_fires(c, self.threshold).sum(dtype=_F64) for c in codes])
        self.count = self.count + torch.tensor([c.shape[0] for c in codes], dtype=_F64, device=self.count.device)

    def compute(self) -> torch.Tensor:
        return self.fires / self.count


class UniversalityMetrics(MetricCollection):
    """Everything for one evaluation split: a ``MetricCollection`` of ``R2Matrix`` ("r2") and one
    ``FiringCounts`` ("firing") that every firing quantity is derived from (one sync each).

    Args:
        feature_dims: d_m per model, in model order. n_latents: shared dictionary size.
        threshold: a code fires when > threshold. rare_below: "rare" means fewer fires than this.
    ``update(features, recons, codes)`` with features[j] (B, d_j), recons[i][j] (B, d_j) and
    codes[m] (B, n); ``compute()`` returns {"r2": (M, M)} plus every key of ``firing_summary``.
    """

    def __init__(self, feature_dims: Sequence[int], n_latents: int, threshold: float = 0.0,
                 rare_below: int = 10, **kwargs) -> None:
        m = len(feature_dims)
        super().__init__({"r2": R2Matrix(feature_dims, **kwargs),
                          "firing": FiringCounts(n_latents, m, threshold, rare_below, **kwargs)},
                         compute_groups=False)

    def update(self, features, recons, codes) -> None:  # type: ignore[override]
        self["r2"].update(features, recons)
        self["firing"].update(codes)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"r2": self["r2"].compute(), **self["firing"].compute()}
