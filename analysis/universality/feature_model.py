"""The differentiable path of activation maximisation: pixels → preprocessing → backbone feature
layer → the activation cache's normalisation → SAE encoder pre-activation of a target latent."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn


def sae_pre_activation(sae: nn.Module, x: Tensor, latents: Tensor) -> Tensor:
    """(B,) pre-TopK activation z_pre[b, latents[b]] = W_enc[f] · (x_b - b_dec) + b_enc[f], with gradient.

    Uses the weights of the project's ``SparseCoder`` (only the B target rows, not all n); any other
    SAE falls back to ``sae.encode(x)[0]`` (overcomplete's API), which must carry a gradient.
    """
    if all(hasattr(sae, a) for a in ("W_enc", "b_enc")):
        b_dec = getattr(sae, "b_dec", None)
        inputs = x - b_dec if b_dec is not None else x
        return (inputs * sae.W_enc[latents]).sum(1) + sae.b_enc[latents]
    pre, _ = sae.encode(x)
    if not pre.requires_grad:
        raise TypeError(f"{type(sae).__name__}.encode returns pre-codes without gradient; "
                        "activation maximisation needs W_enc/b_enc or differentiable pre-codes")
    return pre.gather(1, latents.view(-1, 1)).squeeze(1)


class LatentObjective(nn.Module):
    """(images (B, C, H, W) in [0, 1], latents (B,)) -> (B,) pre-activations of each image's latent.

    Args:
        preprocess: pixels in [0, 1] -> backbone input (the dataset's eval transform: resize,
            channel repeat, mean/std), differentiable.
        features: backbone input -> (B, d) features exactly as cached (feature layer + normalisation),
            in eval mode.
        sae: the backbone's SAE (``SparseCoder`` or overcomplete-compatible).
    """

    def __init__(self, preprocess: Callable[[Tensor], Tensor], features: nn.Module, sae: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.features = features
        self.sae = sae

    def forward(self, images: Tensor, latents: Tensor) -> Tensor:
        x = self.features(self.preprocess(images))
        return sae_pre_activation(self.sae, x.float(), latents)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside the block (only the input image is optimised);
    both restored after."""
    saved = [(m, m.training, [(p, p.requires_grad) for p in m.parameters()]) for m in modules]
    try:
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        yield
    finally:
        for m, training, params in saved:
            m.train(training)
            for p, flag in params:
                p.requires_grad_(flag)


class L2Normalize(nn.Module):
    """Row-wise L2 normalisation, the study's default cache normalisation: (B, d) -> (B, d)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.normalize(x.flatten(1), dim=1)


class FeatureHead(nn.Module):
    """``extractor`` (input -> (B, d) raw features at the feature layer) followed by ``normalize``."""

    def __init__(self, extractor: nn.Module, normalize: nn.Module | Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.extractor = extractor
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(self.extractor(x).flatten(1))
