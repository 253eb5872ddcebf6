"""Independent SAEs: the baseline for the universal SAE — the same M TopK SAEs, no cross terms.

Each SAE reconstructs only its own backbone's features, so their latent indices are unrelated;
the evaluation still fills the full M×M R² matrix (cross entries show what no alignment gives).
"""

from __future__ import annotations

from typing import Literal

from components.sae_bank import Backend
from lightning_modules.sae_base import MultiSAESystem


class IndependentSAEs(MultiSAESystem):
    """M independent TopK SAEs trained together. Batches: ``dict[str, Tensor]`` name -> (B, d_m).

    Loss = Σ_m MSE(x_m, decoder_m(encoder_m(x_m))) (+ AuxK); one Adam over all parameters (Adam is
    per-parameter, so this equals M separate optimizers). Args as ``UniversalSAE`` minus mode and
    cross_weight; M = 1 is allowed.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        n_latents: int = 10_000,
        k: int = 32,
        lr: float = 1e-4,
        backend: Backend = "ours",
        pre_bias: bool = False,
        tied_init: bool = True,
        aux_k: int = 0,
        aux_coef: float = 1.0 / 32,
        dead_window: int = 100_000,
        revive_bias_step: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        grad_clip: float | None = None,
        fire_threshold: float = 0.0,
        check_finite: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(feature_dims, n_latents, k, lr, backend, pre_bias, tied_init, aux_k, aux_coef,
                         dead_window, revive_bias_step, warmup_steps, lr_schedule, grad_clip, fire_threshold,
                         check_finite, seed)
        self.save_hyperparameters()
        self.targets = "self"
        self.cross_weight = 0.0
