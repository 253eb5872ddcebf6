"""Torchvision classification backbones by name: build, re-head, load checkpoints, read a layer.

Everything here is a plain ``nn.Module`` or function (no Lightning), so the fine-tuning system, the
feature extractor and the activation cache share one definition of "a backbone".
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import get_model, get_model_weights, list_models

from common.errors import UserError
from common.safe_load import check_finite_weights, load_weights, weights_only_loads

# Where the study reads features (the penultimate representation of each classifier):
# ResNet: global average pool (2048-d for resnet50, flattened); MobileNetV3: classifier[2], the
# Dropout before the last Linear (1280-d, identity in eval mode); VGG: classifier[4], the ReLU after
# fc7 (4096-d). Any other model reads the input of its final classification layer ("penultimate").
DEFAULT_LAYERS = {"resnet": "avgpool", "resnext": "avgpool", "wide_resnet": "avgpool",
                  "regnet": "avgpool", "mobilenet_v3": "classifier.2", "vgg": "classifier.4"}
PENULTIMATE = "penultimate"


def classification_models() -> list[str]:
    """Names of torchvision's image-classification models (``torchvision.models.list_models``)."""
    return sorted(list_models(module=torchvision.models))


def check_arch(arch: str) -> str:
    """``arch`` if torchvision knows it as a classification model, else a ``UserError`` listing them."""
    names = classification_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown model '{arch}'{hint}; valid names: {', '.join(names)}")
    return arch


def default_layer(arch: str) -> str:
    """The study's feature layer for ``arch`` (see ``DEFAULT_LAYERS``), else ``"penultimate"``."""
    for prefix, layer in sorted(DEFAULT_LAYERS.items(), key=lambda kv: -len(kv[0])):
        if arch.startswith(prefix):
            return layer
    return PENULTIMATE


def pretrained_weights(arch: str, pretrained: bool | str):
    """The torchvision weight enum for ``pretrained`` (``True`` = ``DEFAULT``, or a member name), or None."""
    if pretrained is False or pretrained is None:
        return None
    enum = get_model_weights(check_arch(arch))
    if pretrained is True:
        return enum.DEFAULT
    try:
        return enum[pretrained]
    except KeyError:
        raise UserError(f"'{pretrained}' is not a weight set of {arch}; valid: "
                        f"{', '.join(enum.__members__)} (or pretrained: true / false)") from None


def ensure_weights_file(weights) -> Path:
    """Make sure the weights file is in the torch hub cache (downloading if possible) and return it.

    Offline with the file missing, a ``UserError`` names the file, the URL and the folder to put it in.
    """
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urlparse(weights.url).path)
    if path.is_file():
        return path
    try:
        weights.get_state_dict(progress=sys.stderr.isatty(), check_hash=True)
    except Exception as err:  # no network, proxy, bad hash: one actionable message
        raise UserError(
            f"cannot load pretrained weights {weights}: '{path.name}' is not in '{folder}' and the "
            f"download failed ({type(err).__name__}). Download {weights.url} on a machine with "
            f"internet and copy it into '{folder}' (or set TORCH_HOME), or use pretrained: false"
        ) from None
    return path


def _replace_heads(model: nn.Module, num_classes: int, old_classes: int) -> None:
    """Swap the final classification layer (and auxiliary heads, e.g. Inception's) for fresh ones."""
    heads = [(n, m) for n, m in model.named_modules()
             if (isinstance(m, nn.Linear) and m.out_features == old_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == old_classes)]
    if not heads:
        raise UserError(f"found no {old_classes}-way classification layer to replace in "
                        f"{type(model).__name__}; use pretrained: false for this model")
    keep = [heads[-1]] + [(n, m) for n, m in heads[:-1] if "aux" in n.lower()]
    for name, old in keep:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride,
                            old.padding, bias=old.bias is not None)
        setattr(parent, attr, new)


def build_backbone(arch: str, num_classes: int, pretrained: bool | str = False) -> nn.Module:
    """A torchvision classifier ``arch`` with a ``num_classes``-way head.

    ``pretrained``: ``False`` (random init, ``weights=None``), ``True`` (torchvision's DEFAULT
    ImageNet weights) or a weight-enum member name such as ``"IMAGENET1K_V1"``; the ImageNet head is
    then replaced by a freshly initialised one.
    """
    check_arch(arch)
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}")
    weights = pretrained_weights(arch, pretrained)
    if weights is None:
        return get_model(arch, weights=None, num_classes=num_classes)
    path = ensure_weights_file(weights)
    # torchvision loads the cached file with weights_only=False; a file planted there must not run code
    with weights_only_loads(f"pretrained weights file (for {weights})", path):
        model = get_model(arch, weights=weights)
    old_classes = len(weights.meta["categories"])
    if num_classes != old_classes:
        _replace_heads(model, num_classes, old_classes)
    return model


def _classifier_layer(model: nn.Module) -> str:
    """Name of the last Linear (or last Conv2d when there is none): the classification layer."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not (linears or convs):
        raise UserError(f"{type(model).__name__} has no Linear/Conv2d layer; name a layer explicitly")
    return (linears or convs)[-1]


def layer_names(model: nn.Module) -> list[str]:
    """Every layer a feature can be read from: ``"penultimate"`` plus all named sub-modules."""
    return [PENULTIMATE] + [n for n, _ in model.named_modules() if n]


def check_layer(model: nn.Module, layer: str, arch: str = "") -> str:
    """``layer`` if ``model`` has it, else a one-line ``UserError`` with close and final names."""
    names = layer_names(model)
    if layer in names:
        return layer
    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    what = arch or type(model).__name__
    raise UserError(
        f"unknown layer '{layer}' for {what}{hint}; the last layers are: {', '.join(names[-8:])}, "
        f"{PENULTIMATE} ({len(names)} names in all; list them with "
        f"'python -m components.backbones --layers {arch or '<arch>'}')"
    )


class _Stop(Exception):
    """Raised by the capture hook so the forward pass ends at the feature layer."""


class FeatureExtractor(nn.Module):
    """Backbone + layer name → features ``(B, d)``: the layer's output flattened from dim 1.

    Reads the layer with a forward hook and stops the forward pass there (nothing after the layer
    runs). ``layer="penultimate"`` reads the input of the final classification layer. A module
    called several times in one forward (e.g. ResNet's shared ReLU) gives its first call's output.
    Gradients flow (for activation maximisation); wrap calls in ``torch.inference_mode()`` to extract.

    Args:
        backbone: the classifier network.
        layer: dotted module name (``"avgpool"``, ``"classifier.2"``) or ``"penultimate"``.
        arch: model name, only for error messages.
    """

    def __init__(self, backbone: nn.Module, layer: str, arch: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.layer = check_layer(backbone, layer, arch)
        self._read_input = layer == PENULTIMATE
        self._target = _classifier_layer(backbone) if self._read_input else layer

    def forward(self, images: Tensor) -> Tensor:
        """Float images ``(B, C, H, W)`` (already normalised) → features ``(B, d)``."""
        captured: list[Tensor] = []

        def capture(module: nn.Module, args: tuple, output: Tensor | None = None) -> None:
            captured.append(args[0] if self._read_input else output)
            raise _Stop

        module = self.backbone.get_submodule(self._target)
        handle = (module.register_forward_pre_hook(capture) if self._read_input
                  else module.register_forward_hook(capture))
        try:
            self.backbone(images)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"layer '{self.layer}' was not reached in the forward pass")
        features = captured[0]
        if not isinstance(features, Tensor):
            raise UserError(f"layer '{self.layer}' does not output one tensor; pick another layer")
        return features.flatten(1)


def feature_dim(arch: str, layer: str, num_classes: int, image_shape: tuple[int, int, int]) -> int:
    """Width ``d`` of ``layer``'s features for one ``(C, H, W)`` image, on the meta device (no compute)."""
    with torch.device("meta"):
        model = build_backbone(arch, num_classes, pretrained=False).eval()
        return FeatureExtractor(model, layer, arch)(torch.zeros(1, *image_shape)).shape[1]


def _shape_problems(model: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, mismatched


def state_dict_from_file(path: str | Path, prefix: str = "net.") -> tuple[dict[str, Tensor], dict]:
    """Read a plain state_dict (``.pth``) or a Lightning checkpoint (``.ckpt``, keys under ``prefix``).

    Returns ``(state_dict, hyper_parameters)``; the latter is empty for a plain state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' not found; train the backbone first or fix the path")
    # weights_only: a checkpoint from elsewhere cannot run code; this project's .ckpt files load so
    obj = load_weights(path, "backbone checkpoint")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        check_finite_weights(state, f"backbone checkpoint '{path}'")
        hparams = obj.get("hyper_parameters")
        return state, dict(hparams) if isinstance(hparams, dict) else {}
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        check_finite_weights(obj, f"backbone checkpoint '{path}'")
        return obj, {}
    raise UserError(f"'{path}' holds neither a state_dict nor a Lightning checkpoint")


def load_backbone(arch: str, num_classes: int, checkpoint: str | Path) -> nn.Module:
    """Build ``arch`` and load ``checkpoint`` (state_dict ``.pth`` or BackboneClassifier ``.ckpt``), strictly.

    A checkpoint of another architecture or class count is a one-line ``UserError``.
    """
    state, hparams = state_dict_from_file(checkpoint)
    if hparams.get("arch") not in (None, arch):
        raise UserError(f"checkpoint '{checkpoint}' is a {hparams['arch']} model, not {arch}; "
                        f"fix the arch or point at the right checkpoint")
    with torch.device("meta"):
        model = build_backbone(arch, num_classes, pretrained=False)
    missing, unexpected, mismatched = _shape_problems(model, state)
    if missing or unexpected or mismatched:
        head = _classifier_layer(model)
        if not missing and not unexpected and all(m.startswith(head + ".") for m in mismatched):
            raise UserError(f"checkpoint '{checkpoint}' has another number of classes "
                            f"({mismatched[0]}); set num_classes to match it")
        detail = "; ".join(filter(None, [
            f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(mismatched)} shape mismatches (e.g. {mismatched[0]})" if mismatched else ""]))
        raise UserError(f"checkpoint '{checkpoint}' does not fit {arch} ({detail}); it is probably "
                        f"from another architecture: fix the arch or the checkpoint path")
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        # a non-persistent buffer is not in the state_dict: build for real and copy in
        model = build_backbone(arch, num_classes, pretrained=False)
        model.load_state_dict(state, strict=True)
    return model


def main(argv: list[str] | None = None) -> None:
    """``python -m components.backbones [--layers ARCH]``: list models or layers."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--layers":
        with torch.device("meta"):
            model = build_backbone(check_arch(argv[1]), 1000)
        print(f"{argv[1]}: default layer '{default_layer(argv[1])}'")
        print("\n".join(layer_names(model)))
    else:
        print("\n".join(classification_models()))


if __name__ == "__main__":
    from common.errors import run_cli

    run_cli(main)
