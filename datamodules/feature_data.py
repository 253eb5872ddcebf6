"""``FeatureData``: (features, labels) loaders over an image datamodule's splits, features computed once."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from common.errors import UserError
from datamodules.image_datamodule import ImageDataModule, Split
from datamodules.in_memory import InMemoryTensorDataset, SplitLoaders, in_memory_loader

SPLITS: tuple[Split, ...] = ("train", "val", "test")


class FeatureData(SplitLoaders, L.LightningDataModule):
    """``(features, labels)`` loaders over the splits of an image datamodule, features computed once.

    The ``LinearProbe`` sets the featurizer (its frozen encoder, or flat pixels) in its ``setup``;
    each split is then preprocessed (``images.transform(x, train=False)``), featurized in chunks and
    held in memory, so an epoch costs only the linear layer. A full-batch solver (L-BFGS) asks for
    ``full_batch``: every loader then serves its whole split as one batch.

    Args:
        images: the image datamodule (dataset, split seed, preprocessing).
        batch_size: feature rows per training step (mini-batch solvers).
        seed: seeds the per-epoch shuffling of the training features.
        extract_batch_size: images featurized at once.
    """

    def __init__(self, images: ImageDataModule, batch_size: int = 256, seed: int = 0,
                 extract_batch_size: int = 2048) -> None:
        super().__init__()
        self.images = images
        self.batch_size = batch_size
        self.seed = seed
        self.extract_batch_size = extract_batch_size
        self.featurizer: Callable[[Tensor], Tensor] | None = None
        self.full_batch = False
        self._features: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.images.class_names)

    def prepare_data(self) -> None:
        self.images.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.images.setup(stage)

    def set_featurizer(self, featurizer: Callable[[Tensor], Tensor], full_batch: bool = False) -> None:
        """Use ``featurizer`` (preprocessed images (B, C, H, W) → (B, F)); a new one drops the cache.
        ``full_batch``: serve each split as a single batch (for full-batch solvers)."""
        self.full_batch = full_batch
        if featurizer != self.featurizer:
            self.featurizer = featurizer
            self._features.clear()

    @torch.no_grad()
    def features(self, split: Split, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Features (N, F) on the CPU and labels (N,) of one split, computed on first use."""
        if split not in self._features:
            if self.featurizer is None:
                raise UserError("FeatureData has no featurizer; train it with a LinearProbe model")
            images, labels = self.images.split(split)
            chunks = [self.featurizer(self.images.transform(chunk.to(device), train=False)).cpu()
                      for chunk in images.split(self.extract_batch_size)]
            self._features[split] = (torch.cat(chunks), labels)
        return self._features[split]

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        device = self.trainer.lightning_module.device if self.trainer is not None else "cpu"
        features, labels = self.features(split, device)
        batch_size = max(len(labels), 1) if self.full_batch else self.batch_size
        return in_memory_loader(InMemoryTensorDataset(features, labels), batch_size,
                                shuffle=shuffle and not self.full_batch, seed=self.seed)

