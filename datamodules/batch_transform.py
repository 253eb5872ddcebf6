"""Image preprocessing applied to whole uint8 batches, on whatever device the batch is on.

Decoding a PIL image per sample dominates the epoch time of small images; here a split is held as
one uint8 tensor and every transform (scale to [0, 1], resize, channel repeat, normalisation, and
the train-time flip + rotation) runs once per batch, on the GPU when there is one.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BatchTransform(nn.Module):
    """uint8 images (B, C0, H0, W0) -> float32 (B, channels, size, size), normalised.

    Args:
        image_size: output side in pixels, or ``None`` to keep the stored size.
        channels: output channels; a 1-channel input is repeated to 3 for ImageNet backbones.
        mean: per-channel mean subtracted after scaling to [0, 1] (length ``channels``), or ``None``.
        std: per-channel std divided after the mean (length ``channels``), or ``None``.
        hflip: train only: flip each image left-right with probability 1/2.
        rotation_degrees: train only: rotate each image by an angle uniform in ±this many degrees.
    """

    def __init__(
        self,
        image_size: int | None,
        channels: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        hflip: bool,
        rotation_degrees: float,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is not None and not (len(mean) == len(std) == channels):
            raise ValueError(f"mean and std need {channels} values each, one per channel")
        self.image_size = image_size
        self.channels = channels
        self.hflip = hflip
        self.rotation_degrees = float(rotation_degrees)
        shape = (1, channels, 1, 1)
        self.register_buffer("mean", torch.tensor(mean).view(shape) if mean else None, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(shape) if std else None, persistent=False)

    def forward(self, images: Tensor, train: bool = False) -> Tensor:
        """Transform one batch; random augmentation only when ``train`` (uses the global RNG)."""
        x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        if train:
            x = self._augment(x)
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        if x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"cannot turn {x.shape[1]} channels into {self.channels}")
            x = x.expand(-1, self.channels, -1, -1)
        if self.mean is not None:
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous()

    def _augment(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        if self.hflip:
            flip = torch.rand(batch, device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.rotation_degrees > 0:
            angle = (torch.rand(batch, device=x.device) * 2 - 1) * math.radians(self.rotation_degrees)
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
            theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x
