"""Loading and checking the study's inputs: the two SAE checkpoints, the activation datamodule (from a
nested config or rebuilt from a training run's ``config.yaml``), one split's features and images,
and each backbone's differentiable path for activation maximisation.

The activation datamodule (``datamodules.activations.ActivationDataModule``) is used through:
``feature_dims`` (name -> d), ``split_features(split)`` (name -> (N, d) features, rows aligned with
``images.split(split)``), ``images`` (the image datamodule: ``split``, ``transform``,
``class_names``) and ``backbone(name)`` (images → features as cached: extractor + normaliser).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml
from lightning import LightningDataModule
from torch import Tensor, nn

from analysis.universality.codes import saes_of
from common.errors import UserError
from common.safe_load import check_finite_weights, load_weights


def load_system(path: str | Path, kind: str) -> nn.Module:
    """A trained ``UniversalSAE`` (kind "usae") or ``IndependentSAEs`` (kind "independent") on the CPU,
    in eval mode; a one-line ``UserError`` for a missing or unreadable checkpoint."""
    from lightning_modules.independent_saes import IndependentSAEs
    from lightning_modules.universal_sae import UniversalSAE

    arg = {"usae": "usae_checkpoint", "independent": "independent_checkpoint"}[kind]
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{arg} '{path}' does not exist; train it first (see the config's comments) "
                        f"or point {arg} at a .ckpt file")
    cls = UniversalSAE if kind == "usae" else IndependentSAEs
    # weights_only: nothing in the file can run code (the one-line refusal names the file)
    ckpt = load_weights(path, arg)
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    hp = hp if isinstance(hp, dict) else {}
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "feature_dims" not in hp:
        raise UserError(f"{arg} '{path}' is not a {cls.__name__} checkpoint (no state_dict/feature_dims); "
                        "point it at a .ckpt written by train.py for that system")
    saved_class = str(hp.get("_class_path", ""))  # LightningCLI records the class it built
    if saved_class and saved_class.rsplit(".", 1)[-1] != cls.__name__:
        raise UserError(f"{arg} '{path}' holds a {saved_class.rsplit('.', 1)[-1]} checkpoint, not a "
                        f"{cls.__name__}; swap usae_checkpoint and independent_checkpoint or fix the path")
    # Lightning imports and calls what these name when it rebuilds the system: only ours
    if (saved_class and not saved_class.startswith("lightning_modules.")) or \
            hp.get("_instantiator") not in (None, "lightning.pytorch.cli.instantiate_module"):
        raise UserError(f"{arg} '{path}' names code from outside this project (class "
                        f"'{saved_class}', instantiator '{hp.get('_instantiator')}'); point it at a "
                        f".ckpt written by train.py")
    check_finite_weights(ckpt["state_dict"], f"{arg} '{path}'")
    try:
        system = cls.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{arg} '{path}' does not load as a {cls.__name__} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:160]}); was it trained with the other system?") from None
    return system.eval()


def sae_feature_dims(system: nn.Module) -> dict[str, int]:
    """name -> input dim of each of the system's SAEs."""
    return {name: int(getattr(sae, "input_dim", 0) or sae.get_dictionary().shape[1])
            for name, sae in saes_of(system).items()}


def check_system_matches(system: nn.Module, feature_dims: Mapping[str, int], arg: str, path: str) -> None:
    """``UserError`` unless the system's SAEs are exactly for the cache's backbones and feature dims."""
    mine = sae_feature_dims(system)
    theirs = {str(k): int(v) for k, v in feature_dims.items()}
    if mine != theirs:
        raise UserError(f"{arg} '{path}' has SAEs for {mine} but the activation cache holds {theirs}; "
                        "use the checkpoint trained on this cache, or the data config of its training run")


def check_same_latents(usae: nn.Module, independent: nn.Module) -> None:
    """Both systems' SAEs must be over the same backbones (in the same order)."""
    a, b = list(saes_of(usae)), list(saes_of(independent))
    if a != b:
        raise UserError(f"usae_checkpoint is over backbones {a} but independent_checkpoint over {b}; "
                        "train both on the same activation cache")


def datamodule_from_run_config(path: str | Path) -> LightningDataModule:
    """Rebuild the ``data`` section of a training run's ``config.yaml`` (as LightningCLI saved it).

    ``seed_everything`` is passed to ``data.init_args.seed`` when the datamodule takes a seed and
    the file lacks it (LightningCLI does not write linked arguments).
    """
    from jsonargparse import ArgumentParser

    path = Path(path)
    if not path.is_file():
        raise UserError(f"train_config '{path}' does not exist; point it at the config.yaml of the SAE "
                        "training run (runs/<experiment>/<version>/config.yaml)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"train_config '{path}' is not valid YAML ({str(err).splitlines()[0]})") from None
    section = config.get("data") if isinstance(config, dict) else None
    if not isinstance(section, dict) or "class_path" not in section:
        raise UserError(f"train_config '{path}' has no 'data: {{class_path, init_args}}' section; "
                        "give the SAE training run's config.yaml or set 'data' here instead")
    section = {"class_path": section["class_path"], "init_args": dict(section.get("init_args") or {})}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    seed = config.get("seed_everything")
    if isinstance(seed, int) and "seed" not in section["init_args"]:
        section["init_args"]["seed"] = seed
    try:
        parsed = parser.parse_object({"data": section})
    except Exception:
        section["init_args"].pop("seed", None)  # this datamodule takes no seed
        try:
            parsed = parser.parse_object({"data": section})
        except Exception as err:
            raise UserError(f"train_config '{path}': its data section does not build "
                            f"({' '.join(str(err).split())[:200]})") from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # jsonargparse >= 4.49
    return instantiate(parsed).data


def build_datamodule(data: LightningDataModule | None, train_config: str | None) -> LightningDataModule:
    """The activation datamodule: ``data`` if given, else rebuilt from ``train_config``; prepared and set up."""
    if (data is None) == (train_config is None):
        raise UserError("give exactly one of 'data' (the activation datamodule config) and 'train_config' "
                        "(the SAE training run's config.yaml)")
    dm = data if data is not None else datamodule_from_run_config(train_config)
    for attr in ("feature_dims", "split_features", "images"):
        if not hasattr(dm, attr):
            raise UserError(f"{type(dm).__name__} is not an activation datamodule (no '{attr}'); use "
                            "datamodules.activations.ActivationDataModule")
    dm.prepare_data()
    dm.setup("test")
    return dm


@dataclass
class SplitData:
    """One split: features name -> (N, d) float32; images (N, C, H, W) uint8; labels (N,) int64."""

    features: dict[str, Tensor]
    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]


def load_split(dm: Any, split: str) -> SplitData:
    """Features and raw images of ``split``, checked for emptiness, finiteness and alignment."""
    images, labels = dm.images.split(split)
    features = {str(k): v.float() for k, v in dm.split_features(split).items()}
    rows = {name: int(x.shape[0]) for name, x in features.items()}
    if int(images.shape[0]) == 0 or not rows or 0 in rows.values():
        raise UserError(f"split '{split}' is empty ({int(images.shape[0])} images); pick a split with "
                        "images (split: test or val) or check the datamodule's sizes")
    if set(rows.values()) != {int(images.shape[0])}:
        raise UserError(f"split '{split}': feature rows {rows} do not match its {int(images.shape[0])} images; "
                        "rebuild the activation cache")
    bad = [name for name, x in features.items() if not bool(torch.isfinite(x).all())]
    if bad:
        raise UserError(f"split '{split}': NaN or inf in the cached features of {', '.join(bad)}; rebuild the cache")
    names = tuple(getattr(dm.images, "class_names", ()) or ())
    return SplitData(features, images, labels, names)


def input_shape(dm: Any, images: Tensor) -> tuple[int, int, int]:
    """(C, S, S) of activation-maximisation images: the data's channels at the backbone's input size."""
    size = getattr(dm.images.transform, "image_size", None) or int(images.shape[-1])
    return int(images.shape[1]), int(size), int(size)


def preprocess_fn(dm: Any) -> Callable[[Tensor], Tensor]:
    """Pixels in [0, 1] -> backbone input: the image datamodule's eval transform (differentiable)."""
    transform = dm.images.transform
    return lambda x: transform(x, train=False)


def feature_head(dm: Any, name: str) -> nn.Module:
    """Backbone input -> (B, d) features of backbone ``name`` exactly as cached (feature layer and the
    cache's normalisation), eval mode: ``ActivationDataModule.backbone(name)``."""
    head = dm.backbone(name)
    if not isinstance(head, nn.Module):
        raise UserError(f"the datamodule's backbone('{name}') gave a {type(head).__name__}; expected a module "
                        "mapping images to cached features")
    return head.eval()
