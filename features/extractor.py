"""Fast feature extraction: one pass of a backbone over a split held as a uint8 tensor.

What makes it fast (measured in ``benchmarks/bench_extraction.py``): ``torch.inference_mode``
(no autograd bookkeeping), channels-last weights and inputs (oneDNN / cuDNN pick NHWC kernels,
about 2× on CPU for ResNet50), large batches, the forward pass stopped at the feature layer, and
whole-batch preprocessing instead of per-sample PIL transforms. bf16 autocast is used by
``precision: auto`` only where bfloat16 is native on the device (CUDA with bf16; a CPU with
AVX512-BF16/AMX); on a CPU without it bf16 is emulated and several times slower, so fp32 is kept.

``compile=True`` traces the backbone with torch.fx, cuts it after the feature layer (torchvision's
``create_feature_extractor``) and compiles it with TorchInductor's weight freezing (BatchNorm
folded into convolutions, oneDNN-prepacked weights, fused element-wise ops). Measured on 2 CPU
cores: ResNet50 at 224×224 about 1.7× faster than eager channels-last, at 32×32 about 1.4×, after
~25-40 s of compilation per backbone; worth it for long CPU extractions only, so ``compile: auto``
compiles on CUDA only (``common.auto_options.resolve_compile``). The last batch is zero-padded to
full size so one compiled graph serves every batch.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from common.auto_options import resolve_compile, resolve_extraction_precision
from common.errors import UserError
from components.backbones import FeatureExtractor

__all__ = ["FeatureExtractor", "Precision", "autocast", "compile_extractor", "extract_features",
           "resolve_device", "resolve_precision"]

Precision = Literal["auto", "32", "bf16", "16"]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as ``torch.device`` understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for but CUDA is not available; use device: auto or cpu")
    return resolved


def resolve_precision(precision: Precision, device: torch.device) -> str:
    """``"auto"`` → ``"bf16"`` where bfloat16 is native on ``device`` (CUDA with bf16, a CPU with
    AVX512-BF16/AMX), else ``"32"``; others unchanged (``common.auto_options``)."""
    return resolve_extraction_precision(precision, device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` (``"32"``: none)."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class _Truncated(nn.Module):
    """An FX graph that returns ``{"features": tensor}``, as ``(B, d)``."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, images: Tensor) -> Tensor:
        return self.graph(images)["features"].flatten(1)


def compile_extractor(extractor: FeatureExtractor) -> Callable[[Tensor], Tensor]:
    """``extractor`` as an inductor-compiled FX graph that stops at the feature layer (see module doc).

    Falls back to ``extractor`` itself (with a warning) when the model cannot be traced. The result
    is remembered on ``extractor``, so every split of a backbone reuses one compilation.
    """
    from torchvision.models.feature_extraction import create_feature_extractor

    if getattr(extractor, "_compiled_forward", None) is not None:
        return extractor._compiled_forward

    backbone = extractor.backbone.eval()
    try:
        node = extractor._target
        if extractor._read_input:  # "penultimate": the node that feeds the classification layer
            graph = create_feature_extractor(backbone, [node])
            node = next(n for n in graph.graph.nodes if n.name == node).args[0].name
        module = _Truncated(create_feature_extractor(backbone, {node: "features"}))
    except Exception as err:  # untraceable control flow: eager is still correct
        warnings.warn(f"cannot trace {type(backbone).__name__} for compilation ({err}); running eager")
        return extractor
    compiled = torch.compile(module, dynamic=False)

    def run(images: Tensor) -> Tensor:
        with torch._inductor.config.patch(freezing=True):
            return compiled(images)

    extractor._compiled_forward = run
    return run


@torch.inference_mode()
def extract_features(
    extractor: nn.Module,
    images: Tensor,
    transform: Callable[..., Tensor],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: Precision = "32",
    channels_last: bool = True,
    progress: bool = True,
    desc: str = "extract",
    compile: bool | Literal["auto"] = False,
) -> Tensor:
    """Features ``(N, d)`` float32 on the CPU for uint8 images ``(N, C, H, W)``, row i = image i.

    Args:
        extractor: images → ``(B, d)`` (e.g. ``FeatureExtractor``); put in eval mode here.
        images: the raw split, as ``ImageDataModule.split`` returns it.
        transform: ``transform(uint8 batch, train=False)`` → normalised float batch (the datamodule's).
        batch_size: images per forward pass.
        device: where the forward runs (``"auto"`` = CUDA if available).
        precision: ``"32"``, ``"bf16"``, ``"16"`` autocast, or ``"auto"`` (see ``resolve_precision``).
        channels_last: NHWC weights and inputs.
        progress: a tqdm bar with images/s and ETA on stderr.
        desc: label of the bar.
        compile: run an inductor-compiled, truncated copy of the backbone (see module doc);
            ``"auto"``: on CUDA only.
    """
    if batch_size < 1:
        raise UserError(f"extract_batch_size must be at least 1, got {batch_size}")
    device = resolve_device(device) if isinstance(device, str) else device
    precision = resolve_precision(precision, device)
    compile = resolve_compile(compile, device)
    extractor = extractor.eval().to(device)
    if channels_last:
        extractor = extractor.to(memory_format=torch.channels_last)
    forward = compile_extractor(extractor) if compile else extractor
    pad, static = compile and forward is not extractor, min(batch_size, len(images))
    source = images.pin_memory() if device.type == "cuda" else images
    out: Tensor | None = None
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=1.0, leave=True)
    try:
        for start in range(0, len(images), batch_size):
            batch = source[start:start + batch_size].to(device, non_blocking=True)
            x = transform(batch, train=False)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            rows = len(x)
            if pad and rows < static:  # one static shape for the compiled graph
                x = torch.cat([x, x.new_zeros((static - rows, *x.shape[1:]))])
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                features = forward(x)[:rows]
            if out is None:
                out = torch.empty(len(images), features.shape[1], dtype=torch.float32)
            out[start:start + len(batch)] = features.float().cpu()
            bar.update(len(batch))
    finally:
        bar.close()
    if out is None:
        raise UserError("cannot extract features of an empty split")
    return out
