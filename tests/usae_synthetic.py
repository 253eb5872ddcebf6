"""Synthetic aligned features for the SAE-system tests: shared sparse causes, per-model dictionaries.

Every image i has one sparse non-negative code s_i over ``n_true`` shared causes; model m sees
x_m[i] = normalise(s_i A_m) with its own random dictionary A_m (n_true, d_m). Models therefore
share structure that a universal SAE can align and independent SAEs have no reason to.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


def make_features(dims: dict[str, int], n: int = 2048, n_true: int = 32, active: int = 3,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """name -> (n, d_m) float32 L2-normalised features, rows aligned by sample."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, n_true)
    idx = torch.rand(n, n_true, generator=g).argsort(dim=1)[:, :active]
    codes.scatter_(1, idx, torch.rand(n, active, generator=g) + 0.5)
    out = {}
    for name, d in dims.items():
        a = torch.randn(n_true, d, generator=g)
        x = codes @ a
        out[name] = x / x.norm(dim=1, keepdim=True)
    return out


class AlignedFeatures(Dataset):
    """Rows of ``make_features`` as ``dict[str, Tensor]`` samples (collated into dict batches)."""

    def __init__(self, features: dict[str, torch.Tensor]) -> None:
        self.features = features
        self.n = next(iter(features.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: x[i] for name, x in self.features.items()}
