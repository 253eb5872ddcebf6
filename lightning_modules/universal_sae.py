"""Universal sparse autoencoder (USAE) over M >= 2 backbones: one TopK SAE per backbone, one
shared latent index, trained so that any model's codes reconstruct every model's features.

Thasarathan et al., ICML 2025, "Universal Sparse Autoencoders" (https://arxiv.org/abs/2502.03714).
"""

from __future__ import annotations

import random
from typing import Literal

from common.errors import UserError
from components.sae_bank import LossNormalisation
from components.sparse_coder import SparseCoderConfig
from lightning_modules.sae_base import MultiSAESystem


class UniversalSAE(MultiSAESystem):
    """USAE system. Batches: ``dict[str, Tensor]``, backbone name -> (B, d_m) features, rows aligned.

    Modes:
        joint (the study's default): every step encodes every model and decodes every code into
            every decoder; loss = Σ_i MSE_ii + cross_weight · Σ_{i≠j} MSE_ij, one Adam over all.
        paper (Thasarathan et al. 2025): each step draws one source model i (a generator seeded
            by (seed, global step), so every DDP rank draws the same), decodes its codes into all
            decoders (loss = MSE_ii + cross_weight · Σ_{j≠i} MSE_ij) and steps only model i's
            optimizer (its encoder and decoder). Every model has its own Adam and LR scheduler, and
            all schedulers step every batch, so warm-up and decay follow the global step (the public
            reference steps a model's scheduler only when it is drawn). Gradients are zeroed for all
            models every step (the reference leaves undrawn models' gradients to accumulate).
            Under DDP this mode leaves M-1 encoders unused per step: use
            ``strategy: ddp_find_unused_parameters_true``.

    Args:
        feature_dims: backbone name -> feature dim, in model order (from the datamodule).
        sae: the options of every backbone's sparse coder (``SparseCoderConfig``: n_latents, k,
            pre_bias, AuxK, revive, kernels; ``docs/engine.md``); default n_latents=10,000, k=32.
        mode: "joint" or "paper" (see above).
        cross_weight: weight of every cross-reconstruction term (study: 1.5 in joint mode).
        lr: Adam learning rate (fused Adam where available).
        warmup_steps: linear LR warm-up, in global steps.
        lr_schedule: "constant" or "cosine" (to 0 at the end of training) after warm-up.
        grad_clip: clip each stepped optimizer's gradient norm to this; None: no clipping.
        fire_threshold: a code fires when > this (evaluation metrics).
        check_finite: stop with a one-line error on NaN/inf in a batch (one host sync per step).
        seed: initialisation seed (SAE m uses seed + m) and the paper-mode draw seed.
        loss_normalisation: how each reconstruction term is scaled ("mean": MSE over B·d_j;
            "squared_norm": per-sample squared error; "per_model_variance": MSE / variance of
            x_j); ``SAEBank.loss``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        sae: SparseCoderConfig | None = None,
        mode: Literal["joint", "paper"] = "joint",
        cross_weight: float = 1.5,
        lr: float = 1e-4,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        grad_clip: float | None = None,
        fire_threshold: float = 0.0,
        check_finite: bool = True,
        seed: int = 0,
        loss_normalisation: LossNormalisation = "mean",
    ) -> None:
        if len(feature_dims) < 2:
            raise UserError(f"a universal SAE needs at least 2 backbones; got {list(feature_dims)}")
        if mode not in ("joint", "paper"):
            raise UserError(f"mode={mode!r} is unknown; use 'joint' or 'paper'")
        if cross_weight < 0:
            raise UserError(f"cross_weight={cross_weight} must be >= 0")
        super().__init__(feature_dims, sae, lr=lr, warmup_steps=warmup_steps, lr_schedule=lr_schedule,
                         grad_clip=grad_clip, fire_threshold=fire_threshold, check_finite=check_finite,
                         seed=seed, loss_normalisation=loss_normalisation)
        self.save_hyperparameters(ignore=["sae"])
        self.hparams["sae"] = self.sae_config.as_dict()
        self.mode = mode
        self.cross_weight = float(cross_weight)
        self.targets = "all"

    def train_sources(self) -> list[str]:
        if self.mode == "joint":
            return self.model_names
        draw = random.Random(self.hparams.seed * 1_000_003 + self.global_step).randrange(len(self.model_names))
        return [self.model_names[draw]]

    def optimizer_groups(self) -> list[list[str]]:
        if self.mode == "joint":
            return [self.model_names]
        return [[name] for name in self.model_names]
