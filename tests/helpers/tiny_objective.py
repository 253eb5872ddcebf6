"""A tiny latent objective for feature-visualisation tests: 2-conv backbone → L2 → TopK SAE."""

from __future__ import annotations

import torch
from torch import nn

from analysis.universality.feature_model import FeatureHead, L2Normalize, LatentObjective
from components.sparse_coder import SparseCoder, SparseCoderConfig


def tiny_objective(seed: int = 0) -> tuple[FeatureHead, SparseCoder, LatentObjective]:
    """(head, sae with 32 latents, objective) on images (B, 1 or 3, H, W) in [0, 1]."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    head = FeatureHead(net, L2Normalize())
    sae = SparseCoder(16, SparseCoderConfig(n_latents=32, k=4, pre_bias=True), seed=seed)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.05)
    return head, sae, LatentObjective(lambda x: (x.expand(-1, 3, -1, -1) - 0.5) / 0.25, head, sae)
