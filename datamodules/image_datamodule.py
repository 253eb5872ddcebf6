"""Shared machinery for image datamodules: splits held as uint8 tensors, transforms per batch."""

from __future__ import annotations

from typing import Literal, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from common.errors import UserError
from common.validate import finite, in_range, positive
from datamodules.batch_transform import BatchTransform
from datamodules.in_memory import InMemoryTensorDataset, in_memory_loader

Split = Literal["train", "val", "test"]


def _whole(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{name} must be an integer >= {low}, got {value!r}")


def check_image_options(image_size: int | None, channels: int, mean: Sequence[float] | None,
                        std: Sequence[float] | None, rotation_degrees: float) -> None:
    """One-line ``UserError`` for transform options that would give garbage: a non-positive or
    non-finite ``std`` (division by zero: NaN everywhere), a non-finite ``mean``, one given without
    the other or not one per channel, ``image_size < 1``, a rotation outside [0, 180] degrees."""
    if image_size is not None:
        _whole("data.image_size", image_size, 1)
    if (mean is None) != (std is None):
        raise UserError(f"give both data.mean and data.std, or neither (got mean={mean}, std={std})")
    if mean is not None:
        for name, values in (("data.mean", mean), ("data.std", std)):
            if len(values) != channels:
                raise UserError(f"{name} needs {channels} values (one per channel), got {list(values)}")
        finite("data.mean", mean)
        positive("data.std", std)
    in_range("data.rotation_degrees", rotation_degrees, 0.0, 180.0)


def seeded_split(n: int, val_size: int, train_subset: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """``(train indices, val indices)`` of ``n`` official-train images, each sorted: ``val_size``
    drawn by a permutation seeded by ``seed``, then the first ``train_subset`` of the rest (all if
    ``None``). Every image datamodule splits this way, so one seed gives one split."""
    if val_size >= n:
        raise UserError(f"data.val_size={val_size} leaves no training images: the training set "
                        f"has {n}; set val_size below that (e.g. {max(1, n // 10)})")
    left = n - val_size
    if train_subset is not None and train_subset > left:
        raise UserError(f"data.train_subset={train_subset} is more than the {left} training images "
                        f"left after val_size={val_size}; lower it or set it to null (all)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_idx = order[val_size:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    return train_idx.sort().values, order[:val_size].sort().values


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
        _whole("data.batch_size", batch_size, 1)
        _whole("data.val_size", val_size, 1)
        if train_subset is not None:
            _whole("data.train_subset", train_subset, 1)
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
        train_idx, val_idx = seeded_split(len(labels), self.val_size, self.train_subset, self.seed)
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
