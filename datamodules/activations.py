"""``ActivationDataModule``: backbone features of an image dataset, cached once, served as dict batches."""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.auto_options import basis, note, resolve_compile
from common.errors import UserError
from common.run_folder import check_path_component
from common.io import check_writable_dir
from datamodules.image_datamodule import ImageDataModule, Split
from datamodules.in_memory import InMemoryTensorDataset, SplitLoaders, in_memory_loader
from datamodules.shard_features import ShardFeatureData
from datamodules.shard_stream import rank_and_world
from features.activation_cache import (SPLITS, ActivationCache, EntryStatus, FeatureNormalizer,
                                       Normalization, Rebuild, manifest_json, sha256_file, tensor_sha256)
from features.extractor import (FeatureExtractor, Precision, extract_features, resolve_device,
                                resolve_precision)
from components.backbones import (build_backbone, check_arch, check_layer,
                                                    default_layer, feature_dim, load_backbone,
                                                    pretrained_weights)


@dataclass
class BackboneSpec:
    """One backbone whose features are cached.

    Attributes:
        name: key of this backbone in batches and folder name in the cache (e.g. ``"resnet50"``).
        arch: torchvision model name.
        checkpoint: fine-tuned weights: a state_dict ``.pth`` (``ExportWeights``, e.g.
            ``resnet_fine_tuned.pth``) or a Lightning ``.ckpt`` of ``BackboneClassifier``.
            ``None`` with ``pretrained`` set reads the ImageNet network itself.
        layer: module whose output is the feature (``None`` = the arch's default: ResNet
            ``avgpool``, MobileNetV3 ``classifier.2``, VGG ``classifier.4``, else ``penultimate``).
        num_classes: classes of the checkpoint's head (``None`` = the image dataset's).
        pretrained: with no checkpoint: ``True`` or a weight-set name for torchvision's weights.
    """

    name: str
    arch: str
    checkpoint: str | None = None
    layer: str | None = None
    num_classes: int | None = None
    pretrained: bool | str = False


@dataclass
class FeatureStorage:
    """Where the training rows come from.

    Attributes:
        kind: ``memory``: the single-file cache, built here and loaded whole into every process;
            ``shards``: shard stores written by the extraction (``features.shards``), streamed in
            bounded memory and split over DDP ranks (``datamodules.shard_stream``; docs/at_scale.md).
        shards_root: with ``shards``: the folder holding ``<backbone name>/<split>/index.json``.
        memory_budget_mb: with ``shards``: feature data resident per process and loader, in MiB
            (rows of the current group, one mapped shard, one batch); the model is not counted.
        verify: with ``shards``: check every shard against its manifest when opening (hashes only
            shards changed since they were last verified).
    """

    kind: Literal["memory", "shards"] = "memory"
    shards_root: str | None = None
    memory_budget_mb: float = 2048.0
    verify: bool = True

    @classmethod
    def coerce(cls, value: "FeatureStorage | dict | None") -> "FeatureStorage":
        if value is None:
            return cls()
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise UserError(f"data.storage has unknown option(s) {', '.join(sorted(unknown))}; "
                                f"use kind, shards_root, memory_budget_mb, verify")
            value = cls(**value)
        if value.kind not in ("memory", "shards"):
            raise UserError(f"data.storage.kind={value.kind!r} is unknown; use 'memory' or 'shards'")
        if value.kind == "shards" and not value.shards_root:
            raise UserError("data.storage.kind is 'shards' but data.storage.shards_root is not set; "
                            "give the folder holding <backbone>/<split>/index.json")
        if not value.memory_budget_mb > 0:
            raise UserError(f"data.storage.memory_budget_mb={value.memory_budget_mb} must be positive")
        return value


class DictTensorDataset(InMemoryTensorDataset):
    """Aligned feature tensors served as ``{name: (B, d_name)}`` batches, one index op per tensor."""

    def __init__(self, features: dict[str, Tensor]) -> None:
        super().__init__(*features.values())
        self.names = list(features)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return dict(zip(self.names, super().__getitem__(index)))

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        return dict(zip(self.names, super().__getitems__(indices)))


class ActivationDataModule(SplitLoaders, L.LightningDataModule):
    """Features of every split of ``images`` for several backbones, extracted once into a cache.

    Batches are ``dict[str, Tensor]``: backbone name → ``(B, d_name)`` float32 features; row b of
    every tensor comes from the same image. The train loader draws rows by a permutation seeded by
    ``(seed, epoch)``; val/test keep the image order of ``images.split(...)``. ``prepare_data``
    builds or validates the cache (see ``features.activation_cache``); ``setup`` loads it. With
    ``storage.kind: shards`` every split is streamed from shard stores instead (nothing is
    extracted or loaded whole; ``datamodules.shard_stream`` gives the order and the DDP split).

    Args:
        backbones: the backbones (name, arch, checkpoint, layer, ...); names must be unique.
        images: the image datamodule whose train/val/test splits are extracted (its eval transform).
        cache_dir: folder of the cache, one sub-folder per backbone name.
        normalization: ``l2`` (each row unit-norm, the study's default), ``none``, or
            ``standardize`` (per-dimension mean/std of the train split, stored in the manifest).
        batch_size: rows per training batch.
        extract_batch_size: images per forward pass while extracting.
        seed: seeds the per-epoch shuffling (linked to ``seed_everything`` by ``train.py``).
        precision: extraction autocast: ``32``, ``bf16``, ``16``, or ``auto``: an existing cache at
            any precision is accepted, a new one is built in bf16 where bfloat16 is native on the
            device (CUDA with bf16, a CPU with AVX512-BF16/AMX), else fp32 (emulated bf16 is
            several times slower). Part of the cache key.
        device: where extraction runs: ``auto`` (CUDA if available), ``cpu``, ``cuda:0``...
        rebuild: ``auto`` re-extracts missing/stale/corrupted entries; ``never`` stops with an
            error instead (use it to insist on the exact cache an earlier stage built).
        drop_last: drop the last incomplete training batch.
        progress: progress bars (with ETA) and one status line per cache entry on stderr.
        compile: extract with an inductor-compiled copy of each backbone cut at its layer
            (``features.extractor.compile_extractor``): faster per image, after ~30 s of
            compilation per backbone, so only for long extractions; ``auto``: on CUDA only. Not
            part of the cache key (same features up to float rounding).
        storage: ``FeatureStorage``: ``memory`` (the default, the single-file cache) or ``shards``
            (streamed from ``shards_root`` within ``memory_budget_mb``).
    """

    def __init__(
        self,
        backbones: list[BackboneSpec],
        images: ImageDataModule,
        cache_dir: str = "artifacts/activations",
        normalization: Normalization = "l2",
        batch_size: int = 1024,
        extract_batch_size: int = 256,
        seed: int = 0,
        precision: Precision = "auto",
        device: str = "auto",
        rebuild: Rebuild = "auto",
        drop_last: bool = False,
        progress: bool = True,
        compile: bool | Literal["auto"] = "auto",
        storage: FeatureStorage | None = None,
    ) -> None:
        super().__init__()
        if not backbones:
            raise UserError("data.backbones is empty; list at least one backbone (name, arch, checkpoint)")
        backbones = [b if isinstance(b, BackboneSpec) else BackboneSpec(**b) for b in backbones]
        backbones = [dataclasses.replace(b, checkpoint=None if b.checkpoint is None else os.fspath(b.checkpoint))
                     for b in backbones]
        names = [b.name for b in backbones]
        for i, spec in enumerate(backbones):
            check_path_component(spec.name, f"backbones[{i}].name")
            if names.count(spec.name) > 1:
                raise UserError(f"backbone name '{spec.name}' appears twice in data.backbones; names must be unique")
            check_arch(spec.arch)
            with torch.device("meta"):
                check_layer(build_backbone(spec.arch, 10), spec.layer or default_layer(spec.arch), spec.arch)
            if spec.checkpoint is None and not spec.pretrained:
                raise UserError(f"backbones[{i}] '{spec.name}' needs a checkpoint (or pretrained: true)")
        if batch_size < 1 or extract_batch_size < 1:
            raise UserError("batch_size and extract_batch_size must be at least 1")
        storage = FeatureStorage.coerce(storage)
        self.save_hyperparameters(ignore=["backbones", "images", "storage"])
        self.hparams["backbones"] = [dataclasses.asdict(b) for b in backbones]
        self.hparams["storage"] = dataclasses.asdict(storage)
        self.storage = storage
        self.hparams["images"] = f"{type(images).__module__}.{type(images).__qualname__}"
        self.specs = {b.name: b for b in backbones}
        self.images = images
        self.batch_size = batch_size
        self.extract_batch_size = extract_batch_size
        self.seed = seed
        self.precision = precision
        self.device = device
        self.drop_last = drop_last
        self.progress = progress
        extract_on = resolve_device(device)  # a CUDA device asked for but missing fails here
        self.compile = resolve_compile(compile, extract_on)
        if compile == "auto":
            note("data.compile", self.compile, basis(extract_on))
        if precision == "auto":
            note("data.precision", resolve_precision("auto", extract_on),
                 basis(extract_on) + "; an existing cache is reused at its precision")
        self.cache = ActivationCache(cache_dir, normalization, rebuild, verbose=progress)
        self.last_build: list[EntryStatus] = []
        self._features: dict[str, dict[str, Tensor]] = {}
        self.stream = None if storage.kind == "memory" else ShardFeatureData(
            storage.shards_root, self.names, None, batch_size, seed, normalization, storage.memory_budget_mb,
            storage.verify, drop_last)
        self._checkpoint_hashes: dict[tuple, str] = {}

    # ---- cache identity ------------------------------------------------------------------------

    def _layer(self, spec: BackboneSpec) -> str:
        return spec.layer or default_layer(spec.arch)

    def _num_classes(self, spec: BackboneSpec) -> int:
        return spec.num_classes or self.images.num_classes

    def _checkpoint_sha256(self, path: str) -> str:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"checkpoint '{path}' not found; train the backbone first or fix the path") from None
        fingerprint = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if fingerprint not in self._checkpoint_hashes:
            self._checkpoint_hashes[fingerprint] = sha256_file(path)
        return self._checkpoint_hashes[fingerprint]

    def cache_key(self, name: str) -> dict:
        """What identifies backbone ``name``'s features (split and normalisation are added by the cache)."""
        spec = self.specs[name]
        transform = self.images.transform
        if spec.checkpoint is not None:
            weights = {"checkpoint_sha256": self._checkpoint_sha256(spec.checkpoint)}
        else:
            weights = {"pretrained": str(pretrained_weights(spec.arch, spec.pretrained))}
        return manifest_json({
            "arch": spec.arch, "layer": self._layer(spec), "num_classes": self._num_classes(spec),
            "weights": weights,
            "dataset": f"{type(self.images).__module__}.{type(self.images).__qualname__}",
            "transform": {"image_size": transform.image_size, "channels": transform.channels,
                          "mean": transform.mean, "std": transform.std},
            "precision": self._precision(name),
        })

    def _precision(self, name: str) -> str:
        """The extraction precision of ``name``'s cache: as asked, or for ``auto`` what the cache
        already holds (so a cache built in bf16 on a GPU is reused on a CPU), else the device's."""
        if self.precision != "auto":
            return resolve_precision(self.precision, resolve_device(self.device))
        manifest = self.cache.read_manifest(name, "train")
        existing = manifest and manifest["key"].get("precision")
        return existing if existing in ("32", "bf16", "16") else resolve_precision("auto", resolve_device(self.device))

    # ---- building ------------------------------------------------------------------------------

    def load_backbone_network(self, name: str) -> nn.Module:
        """Backbone ``name``'s classifier network with its checkpoint (or pretrained weights) loaded."""
        spec = self.specs[name]
        if spec.checkpoint is not None:
            return load_backbone(spec.arch, self._num_classes(spec), spec.checkpoint)
        return build_backbone(spec.arch, self._num_classes(spec), spec.pretrained)

    def _extract(self, name: str, split: str, loaded: dict[str, nn.Module], precision: str) -> Tensor:
        if name not in loaded:
            loaded.clear()  # one backbone in memory at a time
            loaded[name] = FeatureExtractor(self.load_backbone_network(name),
                                            self._layer(self.specs[name]), self.specs[name].arch)
        extractor = loaded[name]
        images, _ = self.images.split(split)
        return extract_features(extractor, images, self.images.transform, self.extract_batch_size,
                                self.device, precision, progress=self.progress,
                                desc=f"{name}/{split}", compile=self.compile)

    def build_cache(self) -> list[EntryStatus]:
        """Make every (backbone, split) entry valid, extracting only what is missing or stale."""
        check_writable_dir(self.cache.root, "data.cache_dir")
        for spec in self.specs.values():
            if spec.checkpoint is not None:
                self._checkpoint_sha256(spec.checkpoint)  # a missing file fails before any work
        self.images.setup()
        images_sha = {s: tensor_sha256(*self.images.split(s)) for s in SPLITS}
        rows = {s: len(self.images.split(s)[1]) for s in SPLITS}
        info = {"dataset_hparams": manifest_json(dict(getattr(self.images, "hparams", {}))),
                "extract_batch_size": self.extract_batch_size, "compile": self.compile,
                "device": str(resolve_device(self.device))}
        statuses, loaded = [], {}
        for name, spec in self.specs.items():
            key = self.cache_key(name)
            statuses += self.cache.ensure(
                name, key, images_sha,
                lambda split, n=name, p=key["precision"]: self._extract(n, split, loaded, p),
                {**info, "name": name, "checkpoint": spec.checkpoint}, rows)
        loaded.clear()
        self.last_build = statuses
        return statuses

    def prepare_data(self) -> None:
        if self.stream is not None:
            return  # the shard stores are written by the extraction stage; setup opens them
        self.images.prepare_data()
        self.build_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.stream is not None:
            self.stream.feature_dims = self.feature_dims  # each store must hold its backbone's width
            self.stream.setup(stage)
            return
        if self._features:
            return
        self.build_cache()  # cheap when valid (hashes are remembered); recovers if prepare_data was skipped
        for split in SPLITS:
            rows = len(self.images.split(split)[1])
            loaded = {name: self.cache.load(name, split)[0] for name in self.specs}
            counts = {name: t.shape[0] for name, t in loaded.items()}
            if len(set(counts.values())) > 1 or rows not in counts.values():
                raise UserError(f"cached {split} rows differ across backbones ({counts}) or from the "
                                f"{rows} images of the split; rebuild the cache (rebuild: auto)")
            self._features[split] = loaded

    # ---- loaders -------------------------------------------------------------------------------

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        if self.stream is not None:
            self.setup()
            return self.stream.loader(split, shuffle, *rank_and_world(self.trainer))
        return in_memory_loader(DictTensorDataset(self.split_features(split)), self.batch_size,
                                shuffle=shuffle, seed=self.seed, drop_last=self.drop_last and shuffle)

    # ---- helpers for analysis code -------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Backbone names, in config order."""
        return list(self.specs)

    def split_features(self, split: Split) -> dict[str, Tensor]:
        """Whole split: name → ``(N, d)`` float32, row i = image i of ``images.split(split)``.
        From shard stores: read whole (rows of undecodable images as stored, zeros)."""
        if self.stream is not None:
            self.setup()
            return self.stream.split_features(split)
        self.setup()
        return dict(self._features[split])

    def split_labels(self, split: Split) -> Tensor:
        """Labels ``(N,)`` int64 of a split, aligned with ``split_features(split)``."""
        return self.images.split(split)[1]

    @cached_property
    def feature_dims(self) -> dict[str, int]:
        """name → feature width d, from a shape-only (meta device) forward pass: nothing is extracted."""
        side = self.images.transform.image_size
        shape = (self.images.transform.channels, side, side) if side else self.images.image_shape
        return {name: feature_dim(spec.arch, self._layer(spec), self._num_classes(spec), shape)
                for name, spec in self.specs.items()}

    def normalizer(self, name: str) -> FeatureNormalizer:
        """The normalisation the cached rows of ``name`` went through (stats from the train split)."""
        if self.stream is not None:
            self.setup()
            return self.stream.normalizer(name)
        return self.cache.normalizer(name)

    def backbone(self, name: str) -> nn.Module:
        """Images → cached-feature function of backbone ``name``, for activation maximisation.

        ``nn.Sequential(extractor=FeatureExtractor, normalize=FeatureNormalizer)`` in eval mode with
        frozen weights: input float images ``(B, C, H, W)`` as ``images.transform(uint8, train=False)``
        gives them, output ``(B, d)`` rows as in the cache; gradients flow to the input.
        ``.extractor.backbone`` is the classifier network itself.
        """
        if name not in self.specs:
            raise UserError(f"unknown backbone '{name}'; known: {', '.join(self.specs)}")
        spec = self.specs[name]
        extractor = FeatureExtractor(self.load_backbone_network(name), self._layer(spec), spec.arch)
        model = nn.Sequential(OrderedDict(extractor=extractor, normalize=self.normalizer(name)))
        return model.eval().requires_grad_(False)

    @property
    def cache_dir(self) -> Path:
        return self.cache.root
