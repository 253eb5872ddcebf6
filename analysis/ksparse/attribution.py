"""Where in an image the evidence lies: feature overlays (top contributing units × atoms) and
occlusion maps (captum's ``Occlusion``: slide a patch over the image, record the prediction change)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from captum.attr import Occlusion
from torch import Tensor, nn

from common.errors import UserError


def check_image(image: Tensor, input_dim: int) -> Tensor:
    """One square grey image as (1, 1, S, S) float, S² = ``input_dim``.

    Accepts (S, S), (1, S, S), (1, 1, S, S) or (input_dim,); uint8 is scaled to [0, 1], float is
    taken as already preprocessed. Anything else is a one-line ``UserError``."""
    side = math.isqrt(input_dim)
    if not isinstance(image, Tensor):
        raise UserError(f"the image must be a torch.Tensor of shape ({side}, {side}), got {type(image).__name__}")
    shape = tuple(image.shape)
    if shape not in {(side, side), (1, side, side), (1, 1, side, side), (input_dim,)}:
        raise UserError(f"the image has shape {shape}; pass one {side}×{side} grey image "
                        f"(shape ({side}, {side}) or (1, {side}, {side}))")
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    return image.reshape(1, 1, side, side)


@dataclass
class Overlay:
    """A feature overlay of one image for class ``target``.

    ``units`` (K,) are the units with the largest contributions ``W[target, i] · z_i`` to the
    target logit (``contributions`` (K,), in logit units); ``atoms`` (K, S, S) their decoder atoms;
    ``heatmap`` (S, S) = Σ contributions_i · atom_i, where in pixel space that evidence lives."""

    image: Tensor
    target: int
    logits: Tensor
    units: Tensor
    codes: Tensor
    contributions: Tensor
    atoms: Tensor
    heatmap: Tensor


@torch.no_grad()
def feature_overlay(model: nn.Module, image: Tensor, top_k: int, target: int | None = None) -> Overlay:
    """The ``top_k`` units of ``model`` (a ``ProbedAutoencoder``) that add most to the ``target``
    logit of ``image`` (default: the predicted class), and their atoms weighted by those additions."""
    x = check_image(image, model.input_dim)
    if not 0 < top_k <= model.n_units:
        raise UserError(f"top_k={top_k} must be between 1 and the code size {model.n_units}")
    codes = model.codes(x)[0]
    logits = model.classifier(codes)
    target = int(logits.argmax()) if target is None else int(target)
    if not 0 <= target < logits.numel():
        raise UserError(f"target class {target} is not in [0, {logits.numel() - 1}]")
    contributions = model.classifier.weight[target] * codes
    units = torch.argsort(-contributions, stable=True)[:top_k]
    side = x.shape[-1]
    atoms = model.decoder.weight[units].reshape(-1, side, side)
    heatmap = (contributions[units].view(-1, 1, 1) * atoms).sum(0)
    return Overlay(x[0, 0], target, logits, units, codes[units], contributions[units], atoms, heatmap)


def occlusion_map(model: nn.Module, image: Tensor, target: int | None = None, window: int = 4,
                  stride: int = 2, output: Literal["probability", "logit"] = "probability",
                  baseline: float = 0.0) -> Tensor:
    """Prediction drop when a ``window``×``window`` patch (set to ``baseline``) covers each pixel:
    (S, S) map from captum's ``Occlusion`` (Zeiler & Fergus, 2014), averaged over the patches that
    cover the pixel; ``output`` says whether the target's softmax probability or logit is watched."""
    x = check_image(image, model.input_dim)
    side = x.shape[-1]
    if not (0 < window <= side and 0 < stride <= side):
        raise UserError(f"occlusion window={window} and stride={stride} must be in [1, {side}]")
    with torch.no_grad():
        logits = model(x)
    target = int(logits.argmax()) if target is None else int(target)
    if not 0 <= target < logits.shape[1]:
        raise UserError(f"target class {target} is not in [0, {logits.shape[1] - 1}]")

    def forward(images: Tensor) -> Tensor:
        out = model(images)
        return out.softmax(-1) if output == "probability" else out

    attribution = Occlusion(forward).attribute(
        x, sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
        target=target, baselines=baseline, perturbations_per_eval=64)
    return attribution[0, 0].detach()
