"""One TopK SAE per backbone over a shared latent index: the shared engine of the SAE systems.

Plain ``nn.Module`` (no Lightning), used by ``UniversalSAE``, ``IndependentSAEs`` and the benchmark.
A batch is ``dict[str, Tensor]``: backbone name -> (B, d_m) float features, rows aligned by image.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import torch
from torch import nn

from common.errors import UserError
from components.topk_sae import OvercompleteTopKSAE, TopKCodes, TopKSAE, check_sizes

Backend = Literal["ours", "overcomplete"]


class SAEBank(nn.Module):
    """M TopK SAEs, ``saes[name]``, one per backbone, sharing the latent index 0..n-1.

    Args:
        feature_dims: backbone name -> feature dim d_m; the order is the model order.
        n_latents, k: dictionary size and active latents per sample, shared by all SAEs.
        backend: "ours" (``TopKSAE``, sparse and fast) or "overcomplete" (the library's TopKSAE).
        pre_bias, tied_init, aux_k, aux_coef, dead_window, revive_bias_step: ``TopKSAE`` options
            ("ours" only).
        seed: SAE m is initialised with seed + m.
    """

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        n_latents: int,
        k: int,
        backend: Backend = "ours",
        pre_bias: bool = False,
        tied_init: bool = True,
        aux_k: int = 0,
        aux_coef: float = 1.0 / 32,
        dead_window: int = 100_000,
        revive_bias_step: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not feature_dims:
            raise UserError("feature_dims is empty; give at least one backbone name -> feature dim")
        for name, dim in feature_dims.items():
            if not name or "." in name:
                raise UserError(f"backbone name {name!r} is not usable as a module name; drop dots and blanks")
            check_sizes(int(dim), n_latents, k)
        if backend not in ("ours", "overcomplete"):
            raise UserError(f"backend={backend!r} is unknown; use 'ours' or 'overcomplete'")
        if backend == "overcomplete" and (pre_bias or aux_k or revive_bias_step):
            raise UserError("pre_bias, aux_k and revive_bias_step exist only in the 'ours' backend; "
                            "turn them off for 'overcomplete'")
        self.names = list(feature_dims)
        self.feature_dims = {n: int(d) for n, d in feature_dims.items()}
        self.n_latents, self.k, self.backend = int(n_latents), int(k), backend
        saes = {}
        for m, (name, dim) in enumerate(self.feature_dims.items()):
            if backend == "ours":
                saes[name] = TopKSAE(dim, n_latents, k, pre_bias=pre_bias, tied_init=tied_init,
                                     aux_k=aux_k, aux_coef=aux_coef, dead_window=dead_window,
                                     revive_bias_step=revive_bias_step, seed=seed + m)
            else:
                saes[name] = OvercompleteTopKSAE(dim, n_latents, k, seed=seed + m)
        self.saes = nn.ModuleDict(saes)

    def check_batch(self, batch: Mapping[str, torch.Tensor], batch_idx: int, check_finite: bool = True) -> None:
        """Raise a one-line ``UserError`` for a batch that does not fit these SAEs.

        ``check_finite`` costs one host sync (all models checked at once).
        """
        if not isinstance(batch, Mapping):
            raise UserError(f"batch {batch_idx} is a {type(batch).__name__}; "
                            "expected a dict of backbone name -> features")
        rows = {}
        for name in self.names:
            if name not in batch:
                raise UserError(f"batch {batch_idx} has no features for model '{name}' "
                                f"(has: {', '.join(map(str, batch))}); use the cache the SAEs were built for")
            x = batch[name]
            if x.ndim != 2 or x.shape[1] != self.feature_dims[name]:
                raise UserError(f"batch {batch_idx}: model '{name}' features have shape {tuple(x.shape)}; "
                                f"expected (batch, {self.feature_dims[name]}); check the cache matches feature_dims")
            rows[name] = x.shape[0]
        if len(set(rows.values())) > 1:
            raise UserError(f"batch {batch_idx}: models have different row counts {rows}; "
                            "rows must be aligned by image")
        if check_finite and not bool(torch.stack([torch.isfinite(batch[n]).all() for n in self.names]).all()):
            bad = [n for n in self.names if not bool(torch.isfinite(batch[n]).all())]
            raise UserError(f"batch {batch_idx}: NaN or inf in the features of {', '.join(bad)}; "
                            "fix or rebuild the cache")

    def encode(self, name: str, x: torch.Tensor) -> TopKCodes:
        """Sparse codes of model ``name``'s features x (B, d_name)."""
        return self.saes[name].encode_topk(x)

    def decode(self, name: str, codes: TopKCodes) -> torch.Tensor:
        """Decode any model's codes with model ``name``'s decoder: (B, d_name)."""
        return self.saes[name].decode_topk(codes)

    def dense_codes(self, name: str, codes: TopKCodes) -> torch.Tensor:
        return self.saes[name].codes_to_dense(codes)

    def loss(
        self,
        batch: Mapping[str, torch.Tensor],
        sources: list[str],
        targets: Literal["self", "all"],
        cross_weight: float = 1.0,
        training: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Σ over sources i and targets j of w_ij · MSE(x_j, decoder_j(encoder_i(x_i))) + AuxK terms.

        w_ii = 1, w_ij = cross_weight; MSE is the mean over the B·d_j entries. ``targets="self"``
        decodes each source only into itself (independent SAEs). With ``training`` each source
        SAE updates its dead-latent tracker and adds its AuxK loss (self reconstruction only).
        Returns (total, parts) with parts "mse/<src>-><dst>" and "aux/<src>", all detached.
        """
        total = batch[sources[0]].new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        codes = {src: self.saes[src].encode_topk(batch[src]) for src in sources}
        for dst in self.names:
            srcs = [s for s in sources if targets == "all" or s == dst]
            if not srcs:
                continue
            # One decode of all sources' codes stacked along the batch: one dictionary-gradient
            # scatter per decoder instead of one per (source, decoder) pair.
            x_hats = self.decode(dst, cat_codes([codes[s] for s in srcs])).split(batch[dst].shape[0])
            for src, x_hat in zip(srcs, x_hats):
                mse = (_at_least_fp32(x_hat) - _at_least_fp32(batch[dst])).square().mean()
                total = total + (1.0 if dst == src else cross_weight) * mse
                parts[f"mse/{src}->{dst}"] = mse.detach()
                sae = self.saes[src]
                if dst == src and training:
                    sae.update_dead_tracker(codes[src])
                    if sae.aux_k:
                        aux = sae.aux_loss(batch[src], x_hat, codes[src])
                        total = total + sae.aux_coef * aux
                        parts[f"aux/{src}"] = aux.detach()
        return total, parts

    def reconstruct_all(self, batch: Mapping[str, torch.Tensor]):
        """Codes and the full M×M grid of reconstructions for metrics (call under no_grad).

        Returns (codes, recons): codes[i] dense (B, n) for model i; recons[i][j] (B, d_j) is model
        j's features decoded by decoder j from encoder i's codes.
        """
        codes, recons = [], []
        for src in self.names:
            sparse = self.encode(src, batch[src])
            codes.append(self.dense_codes(src, sparse))
            recons.append([self.decode(dst, sparse) for dst in self.names])
        return codes, recons

    @torch.no_grad()
    def before_optimizer_step(self, names: list[str] | None = None) -> None:
        """Project out the gradient component along each dictionary row (models ``names``)."""
        for name in names or self.names:
            self.saes[name].remove_parallel_grad_()

    @torch.no_grad()
    def after_optimizer_step(self, names: list[str] | None = None) -> None:
        """Renormalise the dictionaries of ``names`` (default all) to unit-norm rows and raise the
        encoder bias of their dead latents (when ``revive_bias_step`` is on)."""
        for name in names or self.names:
            self.saes[name].normalize_decoder_()
            self.saes[name].revive_dead_()

    @torch.no_grad()
    def init_pre_bias_(self, means: Mapping[str, torch.Tensor]) -> None:
        """Set each SAE's pre-bias to the given (d_m,) mean (no-op without pre-bias)."""
        for name, mean in means.items():
            self.saes[name].init_pre_bias_(mean)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def cat_codes(codes: list[TopKCodes]) -> TopKCodes:
    """Several batches' codes stacked along the batch dimension (for one decode call)."""
    if len(codes) == 1:
        return codes[0]
    dense = torch.cat([c.dense for c in codes]) if codes[0].dense is not None else None
    return TopKCodes(torch.cat([c.idx for c in codes]), torch.cat([c.vals for c in codes]), None, None, dense)


def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` with the fused kernel where this torch build supports it (≈5× faster on CPU)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: Literal["constant", "cosine"]):
    """Multiplier of the base lr at a global step: linear warm-up, then constant or cosine to 0."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f
