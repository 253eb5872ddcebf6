"""Universality metrics for M sparse autoencoders over a shared latent index (torchmetrics).

Definitions follow ``shared/DESIGN.md`` exactly. Every state is a float64 pooled sum reduced with
``dist_reduce_fx="sum"``, so one pass over the split gives the exact value, independent of how the
split is cut into batches or spread over DDP ranks.

* R² of a reconstruction: ``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` with x̄ the per-dimension mean over the
  split (not overcomplete's grand scalar mean), from pooled Σx, Σx², Σ‖x - x̂‖².
* R² matrix: entry (i, j) = R² of model j's features decoded by decoder j from encoder i's codes.
* Fires: latent f fires on a sample for model m when its code is > ``threshold`` (default 0).
* Dead: never fires over the split (per model, or in no model at all for the shared index).
* Firing entropy of latent f: p_m = fires_m / Σ_m fires_m, H = -Σ p_m log p_m / log M
  (0: model-specific, 1: universal); dead latents get NaN and are counted, not binned.
* Co-firing IoU of latent f: #samples where f fires in every model / #samples where it fires in any.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torchmetrics import Metric

from common.errors import UserError

_F64 = torch.float64


def _fires(codes: torch.Tensor, threshold: float) -> torch.Tensor:
    return codes > threshold


def _check_models(codes: Sequence[torch.Tensor], n_models: int, n_latents: int) -> None:
    if len(codes) != n_models:
        raise UserError(f"expected codes for {n_models} models, got {len(codes)}")
    for m, c in enumerate(codes):
        if c.ndim != 2 or c.shape[1] != n_latents:
            raise UserError(f"codes of model {m} have shape {tuple(c.shape)}; expected (batch, {n_latents})")


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


class _FireCounts(Metric):
    """Per-model, per-latent fire counts (M, n): the state behind the firing metrics."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, n_latents: int, n_models: int, threshold: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_latents, self.n_models, self.threshold = int(n_latents), int(n_models), float(threshold)
        self.add_state("fire_counts", torch.zeros(n_models, n_latents, dtype=_F64), dist_reduce_fx="sum")

    def update(self, codes: Sequence[torch.Tensor]) -> None:
        """codes[m]: (B, n) codes of model m's encoder for the same B samples."""
        _check_models(codes, self.n_models, self.n_latents)
        self.fire_counts = self.fire_counts + torch.stack([_fires(c, self.threshold).sum(0, dtype=_F64) for c in codes])


class FiringEntropy(_FireCounts):
    """Firing entropy per latent over M models, normalised by log M (see module docstring).

    ``compute()`` -> {"entropy": (n,) float64, NaN for dead latents; "dead": (n,) bool, latents
    that never fire in any model; "n_dead": scalar count of them}.
    """

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.fire_counts.sum(0)
        dead = total == 0
        p = self.fire_counts / total.clamp_min(1)
        plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
        entropy = -plogp.sum(0) / (math.log(self.n_models) if self.n_models > 1 else 1.0)
        entropy = torch.where(dead, torch.full_like(entropy, float("nan")), entropy)
        return {"entropy": entropy, "dead": dead, "n_dead": dead.sum().to(_F64)}


class DeadFraction(_FireCounts):
    """Fraction of latents that never fire over the split.

    ``compute()`` -> {"per_model": (M,) fraction dead in each model's encoder;
    "all": fraction that fire in no model at all}.
    """

    def compute(self) -> dict[str, torch.Tensor]:
        dead_m = (self.fire_counts == 0).to(_F64).mean(1)
        dead_all = (self.fire_counts.sum(0) == 0).to(_F64).mean()
        return {"per_model": dead_m, "all": dead_all}


class CoFiring(_FireCounts):
    """Co-firing of each latent across the M models.

    ``compute()`` -> {"iou": (n,) #samples firing in every model / #samples firing in any (NaN if
    it never fires); "per_model": (M, n) #samples firing in every model / #samples firing in model
    m (NaN if it never fires in m); "iou_mean": mean IoU over latents that fire}.
    """

    def __init__(self, n_latents: int, n_models: int, threshold: float = 0.0, **kwargs) -> None:
        super().__init__(n_latents, n_models, threshold, **kwargs)
        self.add_state("all_count", torch.zeros(n_latents, dtype=_F64), dist_reduce_fx="sum")
        self.add_state("any_count", torch.zeros(n_latents, dtype=_F64), dist_reduce_fx="sum")

    def update(self, codes: Sequence[torch.Tensor]) -> None:
        super().update(codes)
        fires = [_fires(c, self.threshold) for c in codes]
        every, some = fires[0], fires[0]
        for f in fires[1:]:
            every, some = every & f, some | f
        self.all_count = self.all_count + every.sum(0, dtype=_F64)
        self.any_count = self.any_count + some.sum(0, dtype=_F64)

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=_F64, device=self.all_count.device)
        iou = torch.where(self.any_count > 0, self.all_count / self.any_count.clamp_min(1), nan)
        per_model = torch.where(self.fire_counts > 0, self.all_count / self.fire_counts.clamp_min(1), nan)
        return {"iou": iou, "per_model": per_model, "iou_mean": iou.nanmean()}


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


class UniversalityMetrics(nn.Module):
    """All of the above for one evaluation split, updated together from one batch.

    Args:
        feature_dims: d_m per model, in model order. n_latents: shared dictionary size.
        threshold: a code fires when > threshold.
    ``update(features, recons, codes)`` with features[j] (B, d_j), recons[i][j] (B, d_j) and
    codes[m] (B, n); ``compute()`` returns a dict of tensors (keys: r2, entropy, dead_latents,
    n_dead, dead_fraction, dead_fraction_per_model, cofiring_iou, cofiring_per_model,
    cofiring_iou_mean, l0).
    """

    def __init__(self, feature_dims: Sequence[int], n_latents: int, threshold: float = 0.0) -> None:
        super().__init__()
        m = len(feature_dims)
        self.r2 = R2Matrix(feature_dims)
        self.entropy = FiringEntropy(n_latents, m, threshold)
        self.dead = DeadFraction(n_latents, m, threshold)
        self.cofiring = CoFiring(n_latents, m, threshold)
        self.l0 = L0(m, threshold)

    def update(self, features, recons, codes) -> None:
        self.r2.update(features, recons)
        for metric in (self.entropy, self.dead, self.cofiring, self.l0):
            metric.update(codes)

    def compute(self) -> dict[str, torch.Tensor]:
        ent, dead, co = self.entropy.compute(), self.dead.compute(), self.cofiring.compute()
        return {
            "r2": self.r2.compute(), "entropy": ent["entropy"], "dead_latents": ent["dead"],
            "n_dead": ent["n_dead"], "dead_fraction": dead["all"], "dead_fraction_per_model": dead["per_model"],
            "cofiring_iou": co["iou"], "cofiring_per_model": co["per_model"], "cofiring_iou_mean": co["iou_mean"],
            "l0": self.l0.compute(),
        }

    def reset(self) -> None:
        for metric in (self.r2, self.entropy, self.dead, self.cofiring, self.l0):
            metric.reset()
