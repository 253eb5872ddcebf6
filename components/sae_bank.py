"""One ``SparseCoder`` per backbone over a shared latent index: the engine of the SAE systems.

Plain ``nn.Module`` (no Lightning), used by ``UniversalSAE``, ``IndependentSAEs`` and the benchmark.
A batch is ``dict[str, Tensor]``: backbone name -> (B, d_m) float features, rows aligned by image.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import nn

from common.errors import UserError
from components.sparse_coder import SparseCoder, SparseCoderConfig, SparseCodes

LossNormalisation = Literal["mean", "squared_norm", "per_model_variance"]
LOSS_NORMALISATIONS = ("mean", "squared_norm", "per_model_variance")


class SAEBank(nn.Module):
    """M sparse coders, ``saes[name]``, one per backbone, sharing the latent index 0..n-1.

    Args:
        feature_dims: backbone name -> feature dim d_m; the order is the model order.
        config: the options of every coder (``SparseCoderConfig``).
        seed: coder m is initialised with seed + m.
    """

    def __init__(self, feature_dims: Mapping[str, int], config: SparseCoderConfig, seed: int = 0) -> None:
        super().__init__()
        if not feature_dims:
            raise UserError("feature_dims is empty; give at least one backbone name -> feature dim")
        for name, dim in feature_dims.items():
            if not name or "." in name:
                raise UserError(f"backbone name {name!r} is not usable as a module name; drop dots and blanks")
            if int(dim) < 1:
                raise UserError(f"feature_dims[{name!r}]={dim} must be positive")
        self.names = list(feature_dims)
        self.feature_dims = {n: int(d) for n, d in feature_dims.items()}
        self.config = config
        self.n_latents, self.k = config.n_latents, config.k
        self.saes = nn.ModuleDict({name: SparseCoder(dim, config, seed=seed + m)
                                   for m, (name, dim) in enumerate(self.feature_dims.items())})

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

    def encode(self, name: str, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        """Sparse codes of model ``name``'s features x (B, d_name)."""
        return self.saes[name].encode_sparse(x, k)

    def decode(self, name: str, codes: SparseCodes) -> torch.Tensor:
        """Decode any model's codes with model ``name``'s decoder: (B, d_name)."""
        return self.saes[name].decode_sparse(codes)

    def dense_codes(self, name: str, codes: SparseCodes) -> torch.Tensor:
        """(B, n) dense codes of sparse ones."""
        return self.saes[name].dense(codes)

    def loss(
        self,
        batch: Mapping[str, torch.Tensor],
        sources: list[str],
        targets: Literal["self", "all"],
        cross_weight: float = 1.0,
        training: bool = True,
        k: int | None = None,
        normalisation: LossNormalisation = "mean",
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Σ over sources i and targets j of w_ij · E_ij(x_j, decoder_j(encoder_i(x_i))) + AuxK terms.

        w_ii = 1, w_ij = cross_weight. E_ij by ``normalisation``: "mean" is the MSE over the B·d_j
        entries; "squared_norm" the per-sample squared error ||x_j - x̂||² averaged over the batch
        (Thasarathan et al. 2025; weighs models by d_j); "per_model_variance" the MSE divided by
        the batch's mean per-dimension variance of x_j (detached: each model weighs by its fraction
        of variance unexplained). ``targets="self"`` decodes each source only into itself. With
        ``training`` each source coder adds its AuxK loss (self reconstruction only; dead latents
        as of the previous steps) and then updates its dead-latent counts. Returns (total, parts)
        with parts "mse/<src>-><dst>" (always the plain MSE) and "aux/<src>", all detached.
        """
        if normalisation not in LOSS_NORMALISATIONS:
            raise UserError(f"loss_normalisation={normalisation!r} is unknown; use one of {LOSS_NORMALISATIONS}")
        total = batch[sources[0]].new_zeros((), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        codes = {src: self.saes[src].encode_sparse(batch[src], k) for src in sources}
        for dst in self.names:
            srcs = [s for s in sources if targets == "all" or s == dst]
            if not srcs:
                continue
            x = _at_least_fp32(batch[dst])
            scale = 1.0
            if normalisation == "squared_norm":
                scale = float(x.shape[1])
            elif normalisation == "per_model_variance":
                scale = 1.0 / x.detach().var(0, unbiased=False).mean().clamp_min(1e-12)
            # One decode of all sources' codes stacked along the batch: one dictionary-gradient
            # scatter per decoder instead of one per (source, decoder) pair.
            x_hats = self.decode(dst, cat_codes([codes[s] for s in srcs])).split(batch[dst].shape[0])
            for src, x_hat in zip(srcs, x_hats):
                mse = (_at_least_fp32(x_hat) - x).square().mean()
                total = total + (1.0 if dst == src else cross_weight) * scale * mse
                parts[f"mse/{src}->{dst}"] = mse.detach()
                sae = self.saes[src]
                if dst == src and training:
                    if sae.aux_k:
                        aux = sae.auxk_loss(batch[src], x_hat, codes[src])
                        total = total + sae.aux_coef * aux
                        parts[f"aux/{src}"] = aux.detach()
                    sae.update_dead(codes[src])
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
    def project_decoder_grads_(self, names: list[str] | None = None) -> None:
        """Before the optimizer step: remove each atom's gradient component along the atom (models
        ``names``, default all)."""
        for name in names or self.names:
            self.saes[name].project_decoder_grad_()

    @torch.no_grad()
    def normalize_and_revive_(self, names: list[str] | None = None) -> None:
        """After the optimizer step: renormalise the atoms of ``names`` (default all) and raise the
        encoder bias of their dead latents (when ``revive_bias_step`` is on)."""
        for name in names or self.names:
            self.saes[name].normalize_decoder_()
            self.saes[name].revive_dead_()

    @torch.no_grad()
    def init_pre_bias_(self, means: Mapping[str, torch.Tensor]) -> None:
        """Set each coder's decoder bias (the pre-bias) to the given (d_m,) mean (no-op without one)."""
        for name, mean in means.items():
            self.saes[name].init_pre_bias_(mean)

    def set_select_dtype(self, dtype: torch.dtype) -> None:
        """The training-time encoder matmul dtype of every coder (resolved from ``select_dtype``)."""
        for sae in self.saes.values():
            sae.select_dtype = dtype


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def cat_codes(codes: list[SparseCodes]) -> SparseCodes:
    """Several batches' codes stacked along the batch dimension (for one decode call)."""
    if len(codes) == 1:
        return codes[0]
    dense = torch.cat([c.dense for c in codes]) if codes[0].dense is not None else None
    return SparseCodes(torch.cat([c.indices for c in codes]), torch.cat([c.values for c in codes]), None, None, dense)


def make_adam(params, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` with the fused kernel where this torch build supports it (one kernel
    for all parameters instead of one per tensor and operation)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)
