"""``ShardFeatureData``: the splits of per-backbone shard stores as streamed dict batches, no images."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from common.errors import UserError
from datamodules.shard_stream import (AlignedShards, gather_rows, open_split, rank_and_world, shard_loader,
                                      stream_normalizers)
from features.activation_cache import FeatureNormalizer, Normalization


class ShardFeatureData(L.LightningDataModule):
    """Batches ``{backbone: (B, d) float32}`` streamed from ``<shards_root>/<name>/<split>`` stores.

    Train rows are shuffled per ``(seed, epoch)`` and split over DDP ranks (the trainer's rank and
    world size); val/test come in row order, each rank a contiguous part (``datamodules.shard_stream``).
    ``ActivationDataModule(storage: {kind: shards})`` serves its batches through this class; the
    streaming benchmark uses it directly.

    Args:
        shards_root: folder holding ``<name>/<split>/index.json`` per backbone and split.
        names: backbone names, in model order.
        feature_dims: name → d expected of each store (``None``: whatever the stores hold).
        batch_size: rows per batch.
        seed: seeds the shard, in-shard and group permutations.
        normalization: what batches must be (``l2``, ``none``, ``standardize``), applied per batch
            to raw stores and checked against stores normalised when written.
        memory_budget_mb: feature data resident per loader, in MiB (``shard_stream.group_rows_for``).
        verify: check shards against their manifests when opening.
        drop_last: drop the last incomplete training batch.
        row_key: also serve each batch's global rows ``(B,)`` under this key (for checks).
    """

    def __init__(self, shards_root: str | Path, names: list[str], feature_dims: Mapping[str, int] | None = None,
                 batch_size: int = 1024, seed: int = 0, normalization: Normalization = "l2",
                 memory_budget_mb: float = 2048.0, verify: bool = True, drop_last: bool = False,
                 row_key: str | None = None) -> None:
        super().__init__()
        if not names:
            raise UserError("ShardFeatureData needs at least one backbone name")
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be at least 1")
        if normalization not in ("l2", "none", "standardize"):
            raise UserError(f"normalization must be l2, none or standardize, got '{normalization}'")
        self.shards_root, self.names = Path(shards_root), list(names)
        self.feature_dims = dict(feature_dims) if feature_dims is not None else None
        self.batch_size, self.seed, self.normalization = batch_size, seed, normalization
        self.memory_budget_mb, self.verify, self.drop_last = memory_budget_mb, verify, drop_last
        self.row_key = row_key
        self._shards: dict[str, AlignedShards] = {}
        self._normalizers: dict[str, FeatureNormalizer | None] | None = None

    def split(self, split: str) -> AlignedShards:
        """The split's stores, opened and checked on first use (train first: it fixes the normalisation)."""
        for wanted in dict.fromkeys(("train", split)):
            if wanted not in self._shards:
                self._shards[wanted] = open_split(self.shards_root, self.names, wanted, self.feature_dims,
                                                  verify=self.verify)
        if self._normalizers is None:
            self._normalizers = stream_normalizers(self._shards["train"], self.normalization)
        return self._shards[split]

    def setup(self, stage: str | None = None) -> None:
        self.split("train")

    def loader(self, split: str, shuffle: bool, rank: int = 0, world: int = 1) -> DataLoader:
        """This rank's loader of ``split`` (``shuffle``: the seeded per-epoch training order)."""
        shards = self.split(split)
        return shard_loader(shards, self.batch_size, memory_budget_mb=self.memory_budget_mb, seed=self.seed,
                            shuffle=shuffle, drop_last=self.drop_last and shuffle, rank=rank, world=world,
                            normalizers=self._normalizers, row_key=self.row_key)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", True, *rank_and_world(self.trainer))

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", False, *rank_and_world(self.trainer))

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", False, *rank_and_world(self.trainer))

    def split_features(self, split: str) -> dict[str, Tensor]:
        """Whole split, read at once: name → ``(N, d)`` float32, row i = global row i (rows of
        undecodable images as stored: zeros). For the small held-out splits of analysis code."""
        shards = self.split(split)
        rows = np.arange(shards.rows, dtype=np.int64)
        out = {}
        for name, store in shards.stores.items():
            x = torch.from_numpy(gather_rows(store, rows)).float()
            norm = self._normalizers[name]
            out[name] = norm(x) if norm is not None else x
        return out

    def normalizer(self, name: str) -> FeatureNormalizer:
        """The normalisation the served rows of ``name`` went through (applied here or when written)."""
        self.split("train")
        if self._normalizers[name] is not None:
            return self._normalizers[name]
        store = self._shards["train"].stores[name]
        return FeatureNormalizer.from_manifest({"key": {"normalization": self.normalization},
                                                "stats": (store.key or {}).get("stats")}, f"'{store.index_path}'")
