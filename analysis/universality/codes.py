"""SAE codes of every model over one split: the input of every universality computation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

from common.errors import UserError


@dataclass
class SplitCodes:
    """Per-model codes of one SAE system over one split, rows aligned by image.

    pre_codes[m]: (N, n) float32 pre-TopK activations ``W_enc (x - b_dec) + b_enc``;
    codes[m]: (N, n) float32 TopK codes (k non-zero per row at most). ``names`` is the model order.
    """

    names: list[str]
    pre_codes: dict[str, Tensor]
    codes: dict[str, Tensor]

    @property
    def n_samples(self) -> int:
        return int(self.codes[self.names[0]].shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.codes[self.names[0]].shape[1])

    def code_list(self) -> list[Tensor]:
        """Codes in model order, as the ``metrics.universality`` metrics take them."""
        return [self.codes[name] for name in self.names]

    def fire_counts(self, threshold: float) -> Tensor:
        """(M, n) int64: on how many samples each latent fires (code > threshold) in each model."""
        return torch.stack([(self.codes[n] > threshold).sum(0) for n in self.names])


def saes_of(system: nn.Module) -> dict[str, nn.Module]:
    """Backbone name -> per-model SAE (``encode(x) -> (pre_codes, codes)``, ``decode(codes)``).

    Accepts the project's SAE systems (``system.bank.saes``) or any module with a ``saes`` ModuleDict.
    """
    bank = getattr(system, "bank", system)
    saes = getattr(bank, "saes", None)
    if not isinstance(saes, (nn.ModuleDict, dict)) or not saes:
        raise UserError(f"{type(system).__name__} holds no per-model SAEs (expected .bank.saes); "
                        "pass a UniversalSAE or IndependentSAEs checkpoint")
    return dict(saes.items())


@torch.no_grad()
def extract_codes(system: nn.Module, features: Mapping[str, Tensor], batch_size: int,
                  device: str | torch.device = "cpu") -> SplitCodes:
    """Encode every model's features (N, d_m) with its own SAE, in eval mode, ``batch_size`` rows at a time.

    Returns ``SplitCodes`` on the CPU (memory: 2·N·n·4 bytes per model).
    """
    saes = saes_of(system)
    names = [n for n in saes if n in features]
    if len(names) != len(saes):
        raise UserError(f"the features hold models {sorted(features)} but the SAEs are for {sorted(saes)}; "
                        "use the activation cache the SAEs were trained on")
    n_rows = {n: int(features[n].shape[0]) for n in names}
    if len(set(n_rows.values())) != 1:
        raise UserError(f"feature row counts differ across models {n_rows}; rows must be aligned by image")
    total = n_rows[names[0]]
    if total == 0:
        raise UserError("the evaluation split is empty; pick a split with images (split: test or val)")
    was_training = system.training
    system.eval()
    try:
        pre, codes = {n: [] for n in names}, {n: [] for n in names}
        for start in range(0, total, batch_size):
            for name in names:
                x = features[name][start:start + batch_size].to(device=device, dtype=torch.float32)
                p, c = saes[name].encode(x)
                pre[name].append(p.float().cpu())
                codes[name].append(c.float().cpu())
    finally:
        system.train(was_training)
    return SplitCodes(names, {n: torch.cat(pre[n]) for n in names}, {n: torch.cat(codes[n]) for n in names})
