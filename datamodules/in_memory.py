"""A dataset held as tensors in memory, fetched a whole batch at a time by fancy indexing."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class InMemoryTensorDataset(Dataset):
    """Aligned tensors (first dim = samples) served by batch: one index op per batch, no per-sample calls.

    ``DataLoader`` calls ``__getitems__`` with the sampler's indices for a whole batch, so shuffling,
    ``DistributedSampler`` (injected by Lightning under DDP) and seeded generators all work unchanged.
    """

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("InMemoryTensorDataset needs tensors with the same number of rows")
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def keep_batch(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Collate function for ``InMemoryTensorDataset``: the batch is already stacked."""
    return batch


class EpochSeededSampler(Sampler[int]):
    """A random permutation that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch, so a run resumed from a checkpoint sees exactly
    the order an uninterrupted run would have seen (a generator carried across epochs would not).
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def in_memory_loader(
    dataset: InMemoryTensorDataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False
) -> DataLoader:
    """A loader over ``dataset``; with ``shuffle`` each epoch's order is drawn from ``(seed, epoch)``."""
    sampler = EpochSeededSampler(len(dataset), seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=keep_batch,
                      drop_last=drop_last, num_workers=0)


class SplitLoaders:
    """Mixin (before ``LightningDataModule`` in the bases): the train, val, test and predict loaders from
    the subclass's ``_loader(split, shuffle)``; train is shuffled, predict reads the test split."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
