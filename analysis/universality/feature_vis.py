"""What the feature-visualisation methods need from the data, and how their images are scored.

* ``magnitude_template``: MACO's fixed amplitude spectrum (Fel et al. 2023), the mean amplitude
  spectrum of the study's own images (horama downloads an ImageNet one).
* ``seed_images``: accentuation's seeds (Hamblin et al. 2024), one per latent and shared by every
  backbone, so the backbones' views of one latent can be compared pixel for pixel.
* Measures: activation reached relative to the latent's top natural image, the backbone's own class
  prediction on the visualisation, distance to the seed, and cross-backbone agreement (SSIM,
  torchmetrics' ``StructuralSimilarityIndexMeasure``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analysis.universality.activation_max import ActMaxSettings, color_matrix
from analysis.universality.codes import SplitCodes
from common.errors import UserError


def to_unit(images: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """uint8 or [0, 1] images (N, C0, h, w) -> float (N, C, H, W) in [0, 1] at the visualisation size
    (bilinear with antialiasing, like ``BatchTransform``; grey repeated to RGB or RGB averaged to grey)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    c, h, w = shape
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x[:, :1].expand(-1, c, -1, -1)
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).contiguous()


def magnitude_template(images: Tensor, shape: tuple[int, int, int], max_images: int = 2048) -> Tensor:
    """(C, H, W//2+1) mean |rFFT| of the first ``max_images`` images at the visualisation size, colours
    decorrelated like MACO's ImageNet template (RGB only; grey stays one channel)."""
    x = to_unit(images[:max_images], shape)
    if shape[0] == 3:
        x = torch.einsum("bchw,cd->bdhw", x, torch.linalg.pinv(color_matrix()))
    return torch.fft.rfft2(x).abs().mean(0)


def _summed(codes: SplitCodes, latents: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, L) codes and pre-activations of ``latents`` summed over the models."""
    z = sum(codes.codes[m][:, list(latents)] for m in codes.names).numpy()
    pre = sum(codes.pre_codes[m][:, list(latents)] for m in codes.names).numpy()
    return z, pre


def top_indices(codes: SplitCodes, latents: Sequence[int], count: int) -> np.ndarray:
    """(L, count) the split's images with the highest code summed over models (ties: pre-activation)."""
    if not latents:
        return np.zeros((0, count), dtype=np.int64)
    z, pre = _summed(codes, latents)
    return np.stack([np.lexsort((-pre[:, i], -z[:, i]))[:count] for i in range(len(latents))])


def dominant_classes(codes: SplitCodes, labels: Tensor, latents: Sequence[int], count: int) -> list[int]:
    """Each latent's most frequent label among its ``count`` top images (summed over models)."""
    lab = labels.numpy()
    return [int(np.bincount(lab[row]).argmax()) for row in top_indices(codes, latents, count)]


def typical_image(images: Tensor, labels: Tensor, cls: int) -> int:
    """Index of the split's image of class ``cls`` closest (L2) to that class's mean image."""
    rows = torch.nonzero(labels == cls).flatten()
    if rows.numel() == 0:
        raise UserError(f"act_max.seed_image=class: the split has no image of class {cls}")
    x = images[rows].float().flatten(1)
    return int(rows[(x - x.mean(0)).square().sum(1).argmin()])


def load_image_file(path: str | Path) -> Tensor:
    """(C, H, W) uint8 of an image file, or a one-line ``UserError``."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.UNCHANGED)[:3]
    except Exception as err:  # any unreadable file ends in the one message below
        raise UserError(f"act_max.seed_image='{path}' is not a readable image ({type(err).__name__}); "
                        "give a PNG or JPEG file, or 'top' / 'class'") from None


@dataclass
class Seeds:
    """Accentuation's seeds: images (L, C, H, W) in [0, 1]; index: (L,) split rows (-1: a file)."""

    images: Tensor
    index: list[int]


def seed_images(choice: str, codes: SplitCodes, images: Tensor, labels: Tensor, latents: Sequence[int],
                shape: tuple[int, int, int], n_top: int) -> Seeds:
    """One seed per latent: ``top`` its top image (code summed over models), ``class`` the typical
    image of its dominant class among its ``n_top`` top images, else the image file ``choice``."""
    if choice == "top":
        index = [int(i) for i in top_indices(codes, latents, 1)[:, 0]]
    elif choice == "class":
        typical: dict[int, int] = {}
        index = [typical.setdefault(c, typical_image(images, labels, c))
                 for c in dominant_classes(codes, labels, latents, n_top)]
    else:
        one = to_unit(load_image_file(choice)[None], shape)
        return Seeds(one.expand(len(latents), -1, -1, -1).clone(), [-1] * len(latents))
    return Seeds(to_unit(images[index], shape) if index else torch.zeros(0, *shape), index)


def method_inputs(settings: ActMaxSettings, codes: SplitCodes, images: Tensor, labels: Tensor,
                  latents: Sequence[int], shape: tuple[int, int, int], n_top: int) -> dict:
    """Keyword arguments of ``maximize_latents`` for ``settings.method``: ``magnitude`` (maco) or
    ``seeds`` (accentuation), else none."""
    if settings.method == "maco":
        return {"magnitude": magnitude_template(images, shape)}
    if settings.method == "accentuation":
        return {"seeds": seed_images(settings.seed_image, codes, images, labels, latents, shape, n_top).images}
    return {}


# ----- measures ---------------------------------------------------------------------------------------
@torch.no_grad()
def predicted_classes(classifier: nn.Module, preprocess, images: Tensor, batch_size: int = 256) -> Tensor:
    """(L,) the backbone classifier's argmax class on (L, C, H, W) images in [0, 1]."""
    out = [classifier(preprocess(images[i:i + batch_size])).argmax(1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """(L,) structural similarity of image pairs (L, C, H, W) in [0, 1] (torchmetrics, 7-px Gaussian
    window: the images are small)."""
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    if len(a) == 0:
        return torch.zeros(0)
    metric = StructuralSimilarityIndexMeasure(data_range=1.0, reduction="none", kernel_size=7)
    return metric(a.float(), b.float()).flatten()


def change_cosine(a: Tensor, b: Tensor, seeds: Tensor) -> Tensor:
    """(L,) cosine between the two views' changes from their shared seed, (a - s)·(b - s)."""
    return F.cosine_similarity((a - seeds).flatten(1), (b - seeds).flatten(1), dim=1)
