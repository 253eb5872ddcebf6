"""Feature visualisation of SAE latents, many latents in one batch.

Gradient ascent on input images so that image b raises the pre-TopK activation of its own target
latent (Olah et al. 2017, "Feature Visualization", Distill). Images live in the data's pixel space
([0, 1], the dataset's channels, the backbone's input size); the objective (see
``feature_model.LatentObjective``) applies the dataset's preprocessing, the backbone up to its
feature layer, the cache's normalisation and the SAE encoder. Four methods (``method``):

* ``fourier``: a decorrelated spectrum scaled by 1/frequency^decay_power (Olah et al. 2017; the
  preconditioner of ``horama`` 0.3.0's ``fourier``: standardise the spectrum, scale, inverse FFT,
  standardise, recorrelate colours with horama's ImageNet colour matrix, sigmoid), from noise, Adam.
* ``pixel``: image = sigmoid(p), from noise, Adam.
* ``maco``: magnitude-constrained optimisation (Fel et al. 2023, "Unlocking Feature Visualization
  for Deeper Networks with MAgnitude Constrained Optimization"): only the phase of the spectrum is
  optimised, its magnitude is fixed to a natural-image template; horama's ``maco_preconditioner``
  batched. horama downloads an ImageNet template; here the template is the mean amplitude spectrum
  of the study's own images (``feature_vis.magnitude_template``), which also works offline.
* ``accentuation``: feature accentuation (Hamblin et al. 2024, "Feature Accentuation: Revealing
  'What' Features Respond to in Natural Images"): start from a real seed image (its spectrum through
  horama's inverse preconditioner), raise the latent while a squared-distance penalty pulls toward the
  seed; horama's ``accentuation`` batched (without its min-max rescaling of the seed). The result is
  the last iterate within ``distance_budget`` of the seed (RMS pixel distance): horama's result
  while the budget holds, and never outside it.

``maco`` and ``accentuation`` use NAdam like horama. Transformation robustness (Olah et al. 2017):
every step each image is randomly translated by up to ``jitter`` pixels and rescaled by up to
±``scale_jitter`` (reflection padding); horama's random crops of 20-25% of a large canvas do not fit
images the size of the backbone's input (32 px in the Fashion-MNIST study).

Batching changes nothing but float rounding: the objective sums per-image terms that depend on that
image only (backbone in eval mode), Adam/NAdam are element-wise, and each job draws its
initialisation and jitter from its own seed; so L latents in one batch follow the same trajectories
as L runs of one, faster. Kernels for different batch sizes round differently (~1e-8 on a forward
pass) and a long non-convex ascent amplifies that: after a few steps the images agree to 1e-4,
after hundreds single pixels can drift far apart while the reached pre-activations still agree to
about 1%.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from common.errors import UserError

Method = Literal["fourier", "pixel", "maco", "accentuation"]
METHODS = ("fourier", "pixel", "maco", "accentuation")
SEED_CHOICES = ("top", "class")
# Adam/NAdam step size per method when ``lr`` is None (tuned on the Fashion-MNIST backbones, 32 px;
# see docs/feature_visualisation.md): fourier and maco standardise their variables (scale-free steps).
DEFAULT_LR = {"fourier": 0.1, "pixel": 0.05, "maco": 0.1, "accentuation": 1.0}
# (images (B, C, H, W) in [0, 1], target latents (B,) long) -> (B,) pre-activations
Objective = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ActMaxSettings:
    """How to visualise a latent (the study's ``act_max`` option; checked on construction).

    method: ``fourier``, ``pixel``, ``maco`` or ``accentuation`` (see the module docstring).
    steps: gradient steps. lr: step size; None takes the method's default (``DEFAULT_LR``).
    jitter: maximum random translation in pixels per step. scale_jitter: maximum relative random
    rescaling per step. decay_power: Fourier spectrum decay (higher: smoother; horama's 1.5), for
    ``fourier`` and ``accentuation``. batch_size: jobs optimised together. seed: base seed; job j
    uses seed (seed, key_j).
    Accentuation only: seed_image: ``top`` (the latent's top-activating image of the split),
    ``class`` (one fixed image per class: the split's most typical image of the latent's dominant
    class) or the path of an image file (PNG/JPEG, the same seed for every latent).
    distance_budget: largest RMS pixel distance ([0, 1] units) of the result from its seed, > 0.
    penalty: weight of horama's pull to the seed, the mean squared pixel difference (>= 0).
    """

    method: Method = "maco"
    steps: int = 500
    lr: float | None = None
    jitter: int = 1
    scale_jitter: float = 0.0
    decay_power: float = 1.5
    batch_size: int = 32
    seed: int = 0
    seed_image: str = "top"
    distance_budget: float = 0.15
    penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"act_max.method={self.method!r} is not a visualisation method; use one of "
                            f"{', '.join(METHODS)}")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"act_max.{name}={getattr(self, name)} must be at least 1")
        for name in ("lr", "distance_budget"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"act_max.{name}={value} must be > 0")
        if self.penalty < 0 or self.jitter < 0 or self.scale_jitter < 0:
            raise UserError(f"act_max.penalty={self.penalty}, jitter={self.jitter} and "
                            f"scale_jitter={self.scale_jitter} must be >= 0")
        if self.seed_image not in SEED_CHOICES and not Path(self.seed_image).is_file():
            raise UserError(f"act_max.seed_image='{self.seed_image}' is neither 'top', 'class' nor an existing "
                            "image file; pick one of those or fix the path")

    @property
    def step_size(self) -> float:
        """The Adam/NAdam step size used: ``lr``, or the method's default."""
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.method])


@dataclass
class ActMaxResult:
    """images: (L, C, H, W) float32 in [0, 1]; start/final: (L,) target pre-activation of the
    initial and the final image (no jitter); seeds: (L, C, H, W) the seed images (accentuation) or None."""

    images: Tensor
    start: Tensor
    final: Tensor
    seeds: Tensor | None = None


def job_generator(seed: int, key: Sequence[int]) -> torch.Generator:
    """A CPU generator for one job, from the base seed and the job's key (e.g. (model, latent))."""
    state = np.random.SeedSequence([int(seed), *[int(k) for k in key]]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def fourier_scale(height: int, width: int, decay_power: float) -> Tensor:
    """(1, H, W//2+1) complex spectrum scale 1/max(f, 1/max(H, W))^decay · sqrt(H·W) (horama)."""
    from horama.fourier_fv import get_fft_scale

    # horama's grid has one extra column for odd widths; rfft2 keeps W//2+1.
    return get_fft_scale(width, height, decay_power)[..., : width // 2 + 1]


def _standardize(t: Tensor) -> Tensor:
    """Per image (first dim): zero mean, unit std over all other dims (horama's ``standardize``)."""
    dims = tuple(range(1, t.ndim))
    t = t - t.mean(dim=dims, keepdim=True)
    return t / (t.std(dim=dims, keepdim=True) + 1e-4)


def color_matrix(device: torch.device | str = "cpu") -> Tensor:
    """(3, 3) horama's square root of ImageNet's colour correlation (decorrelated -> RGB, right-multiplied)."""
    from horama.common import get_color_correlation_svd_sqrt

    return get_color_correlation_svd_sqrt("cpu").clone().to(device)


def recorrelate(x: Tensor, colors: Tensor | None) -> Tensor:
    """(B, C, H, W) decorrelated -> RGB via ``colors`` (C = 3), or unchanged (colors None)."""
    return x if colors is None else torch.einsum("bchw,cd->bdhw", x, colors)


def maco_phase_init(shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    """(C, H, W//2+1) random phase of one MACO job, N(0, 1) like horama's ``init_maco_buffer``."""
    c, h, w = shape
    return torch.randn(c, h, w // 2 + 1, generator=generator)


def inverse_spectrum(seeds: Tensor, colors: Tensor | None) -> Tensor:
    """(B, C, H, W) images in [0, 1] -> (B, C, H, W//2+1) complex spectra that ``accentuation`` renders
    as (seed + 1e-3) / (1 + 2e-3): horama's ``inverse_image_spectrum`` (logit, decorrelate, rFFT) per
    image, except that horama first min-max rescales the seed to [0, 1]; here it is kept as it is
    (clamped to [0, 1]), so the start image is the seed itself and distances to it mean what they say."""
    eps = 1e-3
    x = seeds.clamp(0.0, 1.0)
    x = torch.log((x + eps) / (1.0 - x + eps))
    if colors is not None:
        x = torch.einsum("bchw,cd->bdhw", x, torch.linalg.pinv(colors))
    return torch.fft.rfft2(x)


class ImageParam:
    """The optimised variable of one method and its map to (B, C, H, W) images in [0, 1].

    magnitude: (C, H, W//2+1) MACO's fixed amplitude spectrum; seeds: (B, C, H, W) accentuation's
    seed images in [0, 1]."""

    def __init__(self, kind: Method, shape: tuple[int, int, int], generators: list[torch.Generator],
                 decay_power: float, device: torch.device, magnitude: Tensor | None = None,
                 seeds: Tensor | None = None) -> None:
        c, h, w = shape
        self.kind, self.shape, self.device = kind, shape, device
        self.colors = color_matrix(device) if c == 3 else None
        if kind == "pixel":
            init = [torch.randn(c, h, w, generator=g) * 0.01 for g in generators]
            self.param = torch.stack(init).to(device).requires_grad_(True)
        elif kind == "fourier":
            init = [torch.randn(c, h, w // 2 + 1, 2, generator=g) for g in generators]
            self.param = torch.stack(init).to(device).requires_grad_(True)
            self.scale = fourier_scale(h, w, decay_power).to(device)
        elif kind == "maco":
            if magnitude is None or tuple(magnitude.shape) != (c, h, w // 2 + 1):
                raise ValueError(f"maco needs a ({c}, {h}, {w // 2 + 1}) magnitude template")
            self.magnitude = magnitude.float().to(device)
            self.param = torch.stack([maco_phase_init(shape, g) for g in generators]).to(device).requires_grad_(True)
        elif kind == "accentuation":
            if seeds is None or tuple(seeds.shape) != (len(generators), c, h, w):
                raise ValueError(f"accentuation needs ({len(generators)}, {c}, {h}, {w}) seed images")
            from horama.feature_accentuation import SpectrumBackwardScaler

            self.grad_scaler = SpectrumBackwardScaler(fourier_scale(h, w, decay_power)[0]).to(device)
            self.param = inverse_spectrum(seeds.float().to(device), self.colors).requires_grad_(True)
        else:
            raise ValueError(f"unknown method {kind!r}; use one of {', '.join(METHODS)}")

    def images(self) -> Tensor:
        s = self.shape[1:]
        if self.kind == "pixel":
            return torch.sigmoid(self.param)
        if self.kind == "fourier":
            spectrum = _standardize(torch.view_as_complex(self.param)) * self.scale
            x = _standardize(torch.fft.irfft2(spectrum, s=s))
        elif self.kind == "maco":  # horama's maco_preconditioner, per image
            phase = _standardize(self.param)
            x = _standardize(torch.fft.irfft2(torch.complex(torch.cos(phase) * self.magnitude,
                                                            torch.sin(phase) * self.magnitude), s=s))
        else:  # horama's fa_preconditionner, per image (gradient scaled by the spectrum decay)
            x = torch.fft.irfft2(self.grad_scaler(self.param), s=s)
        return torch.sigmoid(recorrelate(x, self.colors))


def jitter_images(images: Tensor, shifts: Tensor, scales: Tensor) -> Tensor:
    """Translate image b by shifts[b] = (dx, dy) pixels and rescale by scales[b], reflection-padded."""
    b, _, h, w = images.shape
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = 1.0 / scales
    theta[:, 1, 1] = 1.0 / scales
    theta[:, 0, 2] = shifts[:, 0] * 2.0 / w
    theta[:, 1, 2] = shifts[:, 1] * 2.0 / h
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def rms_distance(images: Tensor, seeds: Tensor) -> Tensor:
    """(B,) root-mean-square pixel difference of two (B, C, H, W) batches in [0, 1]."""
    return (images - seeds).square().flatten(1).mean(1).sqrt()


def _optimize_chunk(objective: Objective, latents: Tensor, shape: tuple[int, int, int],
                    generators: list[torch.Generator], settings: ActMaxSettings, device: torch.device,
                    magnitude: Tensor | None, seeds: Tensor | None) -> ActMaxResult:
    param = ImageParam(settings.method, shape, generators, settings.decay_power, device, magnitude, seeds)
    accentuate = settings.method == "accentuation"
    # Every job's jitter for every step, drawn up front from its own generator.
    shifts = torch.stack([torch.randint(-settings.jitter, settings.jitter + 1, (settings.steps, 2), generator=g)
                          for g in generators], 1).float().to(device)
    scales = torch.stack([1.0 + (torch.rand(settings.steps, generator=g) * 2 - 1) * settings.scale_jitter
                          for g in generators], 1).to(device)
    optim = torch.optim.NAdam if settings.method in ("maco", "accentuation") else torch.optim.Adam
    optimizer = optim([param.param], lr=settings.step_size)
    with torch.no_grad():
        start_images = param.images().detach()
        start = objective(start_images, latents).detach()
    if accentuate:
        seeds = seeds.float().to(device)
        anchor = start_images  # horama pulls toward the seed as the preconditioner renders it
        kept = start_images.clone()  # each job's latest iterate within the distance budget
    for step in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        clean = param.images()
        score = objective(jitter_images(clean, shifts[step], scales[step]), latents)
        loss = -score.sum()
        if accentuate:
            loss = loss + settings.penalty * (clean - anchor).square().flatten(1).mean(1).sum()
            with torch.no_grad():
                inside = rms_distance(clean, seeds) <= settings.distance_budget
                kept[inside] = clean.detach()[inside]
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final_images = param.images().detach()
        final = objective(final_images, latents).detach()
        if accentuate:  # the last iterate within the budget
            inside = rms_distance(final_images, seeds) <= settings.distance_budget
            kept[inside] = final_images[inside]
            final_images = kept
            final = objective(final_images, latents).detach()
    return ActMaxResult(final_images.float().cpu(), start.float().cpu(), final.float().cpu(),
                        seeds.float().cpu() if accentuate else None)


def maximize_latents(objective: Objective, latents: Sequence[int], shape: tuple[int, int, int],
                     settings: ActMaxSettings, keys: Sequence[Sequence[int]] | None = None,
                     device: str | torch.device = "cpu", magnitude: Tensor | None = None,
                     seeds: Tensor | None = None) -> ActMaxResult:
    """Optimise one image per target latent, ``settings.batch_size`` jobs per batch.

    Args:
        objective: (images (B, C, H, W) in [0, 1], latents (B,)) -> (B,) pre-activations to raise.
        latents: target latent of each job (repeats allowed). shape: (C, H, W) of the images.
        keys: per-job seed key (default: (latent,)); the same key gives the same image however jobs
            are batched.
        magnitude: ``maco``'s (C, H, W//2+1) amplitude template (``feature_vis.magnitude_template``).
        seeds: ``accentuation``'s (L, C, H, W) seed images in [0, 1], one per job.
    Returns ``ActMaxResult`` in job order.
    """
    device = torch.device(device)
    keys = [(int(f),) for f in latents] if keys is None else [tuple(k) for k in keys]
    if len(keys) != len(latents):
        raise ValueError("one key per latent")
    if settings.method == "accentuation" and latents and (seeds is None or len(seeds) != len(latents)):
        raise ValueError("accentuation needs one seed image per latent")
    parts = []
    for start in range(0, len(latents), settings.batch_size):
        stop = start + settings.batch_size
        gens = [job_generator(settings.seed, k) for k in keys[start:stop]]
        target = torch.tensor(list(latents[start:stop]), dtype=torch.long, device=device)
        parts.append(_optimize_chunk(objective, target, shape, gens, settings, device, magnitude,
                                     seeds[start:stop] if seeds is not None else None))
    if not parts:
        empty = torch.zeros(0)
        return ActMaxResult(torch.zeros(0, *shape), empty, empty)
    cat = lambda xs: torch.cat(xs) if xs[0] is not None else None  # noqa: E731
    return ActMaxResult(torch.cat([p.images for p in parts]), torch.cat([p.start for p in parts]),
                        torch.cat([p.final for p in parts]), cat([p.seeds for p in parts]))
