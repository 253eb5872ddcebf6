"""Shared machinery for image datamodules: splits held as uint8 tensors, transforms per batch."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.batch_transform import BatchTransform
from datamodules.in_memory import InMemoryTensorDataset, in_memory_loader

Split = Literal["train", "val", "test"]


class ImageDataModule(L.LightningDataModule):
    """Base for datasets small enough to hold in memory as uint8 ``(N, C, H, W)`` plus int64 labels.

    Loaders yield ``(uint8 images, labels)``; ``on_after_batch_transfer`` turns images into float,
    resized and normalised ones on the batch's device (with augmentation while training). Code that
    iterates a loader itself (feature extraction) calls ``transform(images, train=False)``.
    Subclasses implement ``load_split_tensors(train: bool)`` and set ``num_classes``/``class_names``.
    """

    num_classes: int
    class_names: tuple[str, ...]

    def __init__(self, batch_size: int, val_size: int, train_subset: int | None, seed: int,
                 transform: BatchTransform) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.val_size = val_size
        self.train_subset = train_subset
        self.seed = seed
        self.transform = transform
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}

    def load_split_tensors(self, train: bool) -> tuple[Tensor, Tensor]:
        """Return the official train or test split as ``(uint8 (N, C, H, W), int64 (N,))``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        images, labels = self.load_split_tensors(train=True)
        if not 0 <= self.val_size < len(labels):
            raise ValueError(f"val_size must be in [0, {len(labels)}), got {self.val_size}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        train_idx = order[self.val_size:]
        if self.train_subset is not None:
            train_idx = train_idx[: self.train_subset]
        val_idx, train_idx = order[: self.val_size].sort().values, train_idx.sort().values
        self._splits["train"] = (images[train_idx], labels[train_idx])
        self._splits["val"] = (images[val_idx], labels[val_idx])
        self._splits["test"] = self.load_split_tensors(train=False)

    def split(self, name: Split) -> tuple[Tensor, Tensor]:
        """The raw ``(uint8 images, labels)`` of one split; rows are in a fixed, seeded order."""
        self.setup()
        return self._splits[name]

    def dataloader(self, name: Split, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        """A loader over one split, yielding raw ``(uint8 images, labels)`` batches."""
        images, labels = self.split(name)
        return in_memory_loader(InMemoryTensorDataset(images, labels), batch_size or self.batch_size,
                                shuffle=shuffle, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.transform(images, train=training), labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of transformed images, as models see them."""
        images, _ = self.split("test")
        side = self.transform.image_size or images.shape[-1]
        return (self.transform.channels, side, side)
