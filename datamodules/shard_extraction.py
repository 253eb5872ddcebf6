"""``ShardExtractionData``: the images of the shards still to write, this rank's share, shard-aligned.

Used by ``build_cache.py --store shards`` for a Lightning ``predict`` run. ``setup`` (run on every
rank once the process group exists) lets rank 0 clear stale stores, drop damaged shards and list the
missing ones, broadcasts that list, and each rank takes every ``world``-th missing shard (whole shards, so no two ranks
write one). Batches are cut from each shard's first row, so a shard is extracted in the same
batches whichever rank, and however many ranks, extract it.
"""

from __future__ import annotations

import sys
from typing import Iterator

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.image_datamodule import ImageDataModule, Split
from features.activation_cache import tensor_sha256
from features.shards import ShardStore


class SplitTensors(Dataset):
    """An in-memory split ``(uint8 images, labels)`` served as ``(image, label, i, "")``, the item
    layout of ``ImageFolderDataModule.files`` (nothing to decode, so no problem)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, str]:
        return self.images[index], int(self.labels[index]), index, ""


def split_dataset(images: ImageDataModule, split: Split) -> Dataset:
    """``split`` as a dataset of ``(uint8 image, label, row, problem)``: lazily decoded files when
    the datamodule has them (``ImageFolderDataModule``), else its in-memory tensors."""
    files = getattr(images, "files", None)
    return files(split) if callable(files) else SplitTensors(*images.split(split))


def split_identity(images: ImageDataModule, split: Split) -> str:
    """What the rows of ``split`` are, as a hex digest: the file list of an image folder (no image
    is read), else the SHA-256 of the in-memory split (as the single-file cache keys it)."""
    identity = getattr(images, "identity", None)
    return identity(split) if callable(identity) else tensor_sha256(*images.split(split))


class ShardBatches(Sampler[list[int]]):
    """Row-index batches of the given shards: each shard's rows ``[start, stop)`` cut into
    ``batch_size`` chunks from ``start`` (a batch never spans two shards)."""

    def __init__(self, shards: list[int], store: ShardStore, total_rows: int, batch_size: int) -> None:
        self.ranges = [store.shard_range(i, total_rows) for i in shards]
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start, stop in self.ranges:
            for first in range(start, stop, self.batch_size):
                yield list(range(first, min(first + self.batch_size, stop)))

    def __len__(self) -> int:
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.ranges)


class ShardExtractionData(L.LightningDataModule):
    """Predict loaders over the rows of this rank's missing shards, one loader per split.

    Args:
        images: the image datamodule (its splits and, for files, its decoding workers).
        stores: split → the ``ShardStore`` its rows go to.
        batch_size: images per forward pass (a shard's last batch may be smaller).
        num_workers: loader workers for in-memory splits (image folders use their own setting).

    After ``setup``: ``totals`` (split → rows), ``todo_rows`` (rows of every missing shard, all
    ranks), ``plan`` (split → this rank's shard indices) and ``loader_splits`` (the split of each predict loader, in order; read by ``ShardWriter``).
    """

    def __init__(self, images: ImageDataModule, stores: dict[str, ShardStore], batch_size: int,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.images = images
        self.stores = stores
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.totals: dict[str, int] = {}
        self.plan: dict[str, list[int]] = {}
        self.todo_rows = 0
        self.loader_splits: list[str] = []
        self._datasets: dict[str, Dataset] = {}

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def missing(self, split: str) -> list[int]:
        """Shards of ``split`` that are not complete and valid (rank 0, after dropping damaged ones)."""
        store, total = self.stores[split], self.totals[split]
        return [i for i in range(store.num_shards(total))
                if store.problem(i, *_rows_start(store, i, total)) is not None]

    def setup(self, stage: str | None = None) -> None:
        self.images.setup()
        self._datasets = {split: split_dataset(self.images, split) for split in self.stores}
        self.totals = {split: len(ds) for split, ds in self._datasets.items()}
        rank, world = self._rank_world()
        missing: dict[str, list[int]] = {}
        if rank == 0:
            for split, store in self.stores.items():
                store.reset_if_stale()
                store.remove_temp_files()
                _, damaged = store.drop_damaged(self.totals[split])
                for index, reason in sorted(damaged.items()):
                    print(f"shards: '{store.shard_path(index)}' {reason}; extracting it again", file=sys.stderr)
                missing[split] = self.missing(split)
        if self.trainer is not None:  # one plan for all: ranks must not look while others write
            missing = self.trainer.strategy.broadcast(missing, 0)
        self.todo_rows = sum(_rows_start(self.stores[split], i, self.totals[split])[0]
                             for split, shards in missing.items() for i in shards)
        self.plan = {split: shards[rank::world] for split, shards in missing.items()}
        self.loader_splits = list(self.stores)  # every rank the same loaders (Lightning syncs their lengths)

    def _loader(self, split: str, shards: list[int]) -> DataLoader:
        sampler = ShardBatches(shards, self.stores[split], self.totals[split], self.batch_size)
        loader = getattr(self.images, "loader", None)
        if callable(loader) and getattr(self.images, "files", None) is not None:
            return loader(split, batch_sampler=sampler)
        return DataLoader(self._datasets[split], batch_sampler=sampler, num_workers=self.num_workers)

    def predict_dataloader(self) -> list[DataLoader]:
        """One loader per split, in ``loader_splits`` order; empty where this rank has no shard."""
        return [self._loader(split, self.plan[split]) for split in self.loader_splits]


def _rows_start(store: ShardStore, index: int, total: int) -> tuple[int, int]:
    start, stop = store.shard_range(index, total)
    return stop - start, start
