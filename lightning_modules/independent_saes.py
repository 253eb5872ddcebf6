"""Independent SAEs: the baseline for the universal SAE — the same M TopK SAEs, no cross terms.

Each SAE reconstructs only its own backbone's features, so their latent indices are unrelated;
the evaluation still fills the full M×M R² matrix (cross entries show what no alignment gives).
"""

from __future__ import annotations

from typing import Literal

from components.sae_bank import LossNormalisation
from components.sparse_coder import SparseCoderConfig
from lightning_modules.sae_base import MultiSAESystem


class IndependentSAEs(MultiSAESystem):
    """M independent TopK SAEs trained together. Batches: ``dict[str, Tensor]`` name -> (B, d_m).

    Loss = Σ_m E_mm (MSE by default; + AuxK); one Adam over all parameters (Adam is per-parameter,
    so this equals M separate optimizers). Args as ``UniversalSAE`` minus mode and cross_weight;
    M = 1 is allowed.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        sae: SparseCoderConfig | None = None,
        lr: float = 1e-4,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        grad_clip: float | None = None,
        fire_threshold: float = 0.0,
        check_finite: bool = True,
        seed: int = 0,
        loss_normalisation: LossNormalisation = "mean",
    ) -> None:
        super().__init__(feature_dims, sae, lr=lr, warmup_steps=warmup_steps, lr_schedule=lr_schedule,
                         grad_clip=grad_clip, fire_threshold=fire_threshold, check_finite=check_finite,
                         seed=seed, loss_normalisation=loss_normalisation)
        self.save_hyperparameters(ignore=["sae"])
        self.hparams["sae"] = self.sae_config.as_dict()
        self.targets = "self"
        self.cross_weight = 0.0
