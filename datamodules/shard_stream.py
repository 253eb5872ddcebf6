"""Stream aligned rows of per-backbone shard stores in bounded memory, split over DDP ranks.

``open_split`` opens one split's stores (``<root>/<backbone>/<split>``, ``features.shards``) and
checks they line up; ``ShardOrder`` (a ``DistributedSampler``, so Lightning keeps it under DDP and
calls its ``set_epoch``) decides which global rows each rank sees, in which order, grouped so that
one group fits the memory budget; ``ShardRows`` reads a group's rows from the memory-mapped shards
of every backbone and serves ``{backbone: (B, d) float32}`` batches from it. ``shard_loader`` puts
them together.

Order of one epoch (seed s, epoch e): the good rows of each shard of the first store are permuted
by (s, e, shard) and cut into pieces (so a group holds pieces of about ``GROUP_SPAN`` shards); the
pieces are permuted by (s, e); the concatenation is cut into ``world``
equal contiguous parts (the last ``N mod world`` rows are left out this epoch), one per rank; a
rank's part is cut into groups of ``group_rows`` rows, each shuffled again by (s, e, rank, group)
and served as batches. Without shuffling (val/test) rows come in row order, split into ``world``
contiguous parts of ``N // world`` or ``N // world + 1`` rows, nothing left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from common.errors import UserError
from common.memory import release_freed_memory
from datamodules.in_memory import keep_batch
from features.activation_cache import FeatureNormalizer, Normalization
from features.shards import ShardStore

_MB = 1 << 20
GROUP_SPAN = 16  # a training group holds rows of about this many shards (pieces of each)
_INDEX_BYTES = 24  # per resident row: its global id, its position in the group, its batch slot


@dataclass
class AlignedShards:
    """One split's stores, one per backbone, rows aligned by global row index (image index).

    ``blocks``: ``(n_blocks, 2)`` start/stop rows of the first store's shards (the unit of the shard
    permutation); ``bad``: sorted global rows listed in any store's ``bad_rows`` (dropped for all);
    ``good``: good rows per block.
    """

    split: str
    stores: dict[str, ShardStore]
    rows: int
    blocks: np.ndarray
    bad: np.ndarray
    good: np.ndarray

    @property
    def names(self) -> list[str]:
        return list(self.stores)

    @property
    def num_good(self) -> int:
        return int(self.good.sum())

    def block_rows(self, block: int) -> np.ndarray:
        """The good global rows of ``block``, ascending."""
        start, stop = (int(v) for v in self.blocks[block])
        lo, hi = np.searchsorted(self.bad, [start, stop])
        return np.setdiff1d(np.arange(start, stop, dtype=np.int64), self.bad[lo:hi], assume_unique=True)

    def row_bytes(self) -> int:
        """Bytes of one row of every backbone as stored."""
        return sum(s.dim * np.dtype(s.dtype).itemsize for s in self.stores.values())

    def shard_bytes(self) -> int:
        """Bytes of the largest shard of any backbone (mapped while its rows are read)."""
        return max(s.shard_rows * s.dim * np.dtype(s.dtype).itemsize for s in self.stores.values())


def open_split(root: str | Path, names: list[str], split: str, dims: Mapping[str, int] | None = None,
               verify: bool = True) -> AlignedShards:
    """Open ``<root>/<name>/<split>`` for every name; a one-line ``UserError`` when a store is
    missing, holds another feature width than ``dims`` says, or has another row count."""
    stores: dict[str, ShardStore] = {}
    for name in names:
        folder = Path(root) / name / split
        if not (folder / "index.json").is_file():
            raise UserError(f"no shard store for backbone '{name}', split '{split}' in '{folder}'; "
                            f"extract it first or fix data.storage.shards_root")
        store = ShardStore.open(folder, verify=verify)
        if dims is not None and name in dims and store.dim != int(dims[name]):
            raise UserError(f"shard store '{folder}' holds {store.dim}-d rows but backbone '{name}' has "
                            f"{int(dims[name])}-d features; point data.storage.shards_root at this layer's store")
        stores[name] = store
    counts = {name: s.rows for name, s in stores.items()}
    if len(set(counts.values())) > 1:
        raise UserError(f"shard stores of split '{split}' hold different row counts {counts}; "
                        f"extract every backbone from the same images")
    first = stores[names[0]]
    rows = first.rows
    blocks = np.array([first.shard_range(i, rows) for i in range(first.num_shards(rows))], dtype=np.int64)
    bad = sorted({e.start + int(b) for s in stores.values() for e in s.entries for b in e.bad_rows})
    bad = np.array(bad, dtype=np.int64)
    good = blocks[:, 1] - blocks[:, 0] - np.diff(np.searchsorted(bad, blocks), axis=1)[:, 0]
    if good.sum() == 0:
        raise UserError(f"shard stores of split '{split}' under '{root}' hold no usable rows")
    return AlignedShards(split, stores, rows, blocks.reshape(-1, 2), bad, good.astype(np.int64))


def group_rows_for(shards: AlignedShards, memory_budget_mb: float, batch_size: int) -> int:
    """Rows resident at once (a multiple of ``batch_size``) so that the data of one loader fits
    ``memory_budget_mb``: ``group · (row_bytes + 24) + one shard + batch · Σd · (itemsize + 16)``
    (the group as stored; the shard being mapped; a batch gathered, in float32, normalised, plus
    the batch in training and the one the loop fetched ahead)."""
    batch_bytes = batch_size * sum(s.dim * (np.dtype(s.dtype).itemsize + 16) for s in shards.stores.values())
    fixed = shards.shard_bytes() + batch_bytes
    per_row = shards.row_bytes() + _INDEX_BYTES
    group = int((memory_budget_mb * _MB - fixed) // per_row) // batch_size * batch_size
    if group < batch_size:
        need = math.ceil((fixed + batch_size * per_row) / _MB)
        raise UserError(f"memory_budget_mb={memory_budget_mb} cannot hold one batch of {batch_size} rows plus "
                        f"one mapped shard ({need} MB needed); raise memory_budget_mb or lower batch_size")
    return group


def rank_and_world(trainer=None) -> tuple[int, int]:
    """``(global rank, world size)``: the trainer's, else the initialised process group's, else (0, 1)."""
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng([int(v) % (1 << 63) for v in entropy])


@dataclass(frozen=True)
class ShardBatch:
    """What ``ShardOrder`` yields per batch: the group it belongs to, the group's global rows
    (ascending: the order they are read in), the batch's positions in that array, and whether it
    is the group's last batch (the group is then dropped)."""

    group: tuple
    ids: np.ndarray
    take: np.ndarray
    last: bool

    @property
    def rows(self) -> np.ndarray:
        """Global rows of this batch, in batch order."""
        return self.ids[self.take]


class ShardOrder(DistributedSampler):
    """Which rows this rank reads, in groups of ``group_rows``, and in which order (module docstring).

    A ``DistributedSampler`` so that Lightning neither replaces it under DDP nor forgets its
    ``set_epoch``; yields one ``ShardBatch`` per step; ``len`` is the number of batches (equal on
    every rank when shuffling, so DDP steps stay in lockstep). ``on_stop`` (if set) is called when
    an iteration ends or is abandoned (e.g. after Lightning's sanity-check batches).
    """

    def __init__(self, shards: AlignedShards, batch_size: int, group_rows: int, *, rank: int = 0,
                 world: int = 1, seed: int = 0, shuffle: bool = True, drop_last: bool = False) -> None:
        if batch_size < 1 or group_rows < batch_size or group_rows % batch_size:
            raise UserError(f"group_rows={group_rows} must be a positive multiple of batch_size={batch_size}")
        super().__init__(range(shards.num_good), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.shards, self.batch_size, self.group_rows = shards, batch_size, group_rows
        self.on_stop = None
        # pieces per shard: small enough that one group draws from about GROUP_SPAN shards
        longest = int((shards.blocks[:, 1] - shards.blocks[:, 0]).max())
        self.pieces = max(1, min(longest, -(-longest * GROUP_SPAN // group_rows))) if shuffle else 1
        n = shards.good[:, None]
        cuts = n * np.arange(self.pieces + 1)[None, :] // self.pieces  # piece j of block k: [cuts[k,j], cuts[k,j+1])
        self._cuts, self._piece_rows = cuts, np.diff(cuts, axis=1).reshape(-1)

    def span(self) -> tuple[int, int]:
        """``[lo, hi)``: this rank's positions in the epoch's global sequence of good rows."""
        n, world, rank = self.shards.num_good, self.num_replicas, self.rank
        if self.shuffle:
            per = n // world
            return rank * per, (rank + 1) * per
        return rank * n // world, (rank + 1) * n // world

    def __len__(self) -> int:
        lo, hi = self.span()
        return (hi - lo) // self.batch_size if self.drop_last else -(-(hi - lo) // self.batch_size)

    def sequence(self, lo: int, hi: int) -> np.ndarray:
        """Global rows at positions ``[lo, hi)`` of this epoch's sequence (before group shuffling)."""
        count = len(self._piece_rows)
        pieces = _rng(self.seed, self.epoch, 0).permutation(count) if self.shuffle else np.arange(count)
        sizes = self._piece_rows[pieces]
        ends = np.cumsum(sizes)
        parts, i, permuted = [], int(np.searchsorted(ends, lo, side="right")), {}
        while i < count and lo < hi:
            block, j = divmod(int(pieces[i]), self.pieces)
            if block not in permuted:
                rows = self.shards.block_rows(block)
                if self.shuffle:
                    rows = rows[_rng(self.seed, self.epoch, 1, block).permutation(len(rows))]
                permuted = {block: rows}  # pieces of one block are rarely adjacent: keep one
            rows = permuted[block][self._cuts[block, j]:self._cuts[block, j + 1]]
            begin, stop = int(ends[i] - sizes[i]), min(hi, int(ends[i]))
            parts.append(rows[lo - begin:stop - begin])
            lo, i = stop, i + 1
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[ShardBatch]:
        try:
            yield from self._batches()
        finally:  # also when the loader's iterator is dropped part-way
            if self.on_stop is not None:
                self.on_stop()

    def _batches(self) -> Iterator[ShardBatch]:
        lo, hi = self.span()
        total = len(self) * self.batch_size if self.drop_last else hi - lo
        for g, start in enumerate(range(0, total, self.group_rows)):
            stop = min(start + self.group_rows, total)
            seq = self.sequence(lo + start, lo + stop)
            if self.shuffle:
                seq = seq[_rng(self.seed, self.epoch, 2, self.rank, g).permutation(len(seq))]
            order = np.argsort(seq, kind="stable")
            take = np.empty_like(order)
            take[order] = np.arange(len(order))
            ids, key = seq[order], (self.shards.split, self.epoch if self.shuffle else -1, self.rank, g)
            for b in range(0, len(seq), self.batch_size):
                yield ShardBatch(key, ids, take[b:b + self.batch_size], last=b + self.batch_size >= len(seq))


#: a dropped group at least this large is trimmed back to the OS (``common.memory``)
TRIM_BYTES = 64 * _MB


def gather_rows(store: ShardStore, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (ascending global rows) of ``store`` as one ``(len(ids), d)`` array in the
    store's dtype, read shard by shard from memory maps (one mapped at a time)."""
    out = np.empty((len(ids), store.dim), dtype=store.dtype)
    starts = np.array([e.start for e in store.entries], dtype=np.int64)
    shard_of = np.searchsorted(starts, ids, side="right") - 1
    bounds = np.searchsorted(shard_of, np.arange(len(starts) + 1))
    for i in range(len(starts)):
        a, b = int(bounds[i]), int(bounds[i + 1])
        if a < b:
            mapped = store.mmap(i)
            np.take(mapped, ids[a:b] - starts[i], axis=0, out=out[a:b])  # no temporary copy
            del mapped
    return out


class ShardRows(Dataset):
    """Batches of aligned rows for ``ShardBatch`` keys: ``{backbone: (B, d) float32}``, each
    backbone's rows normalised by its entry of ``normalizers`` (``None``: served as stored).

    Holds one group of rows (in the store dtype) at a time, from its first batch to its last. ``row_key``: also serve the batch's global rows ``(B,)`` int64 under this key (checks).
    """

    def __init__(self, shards: AlignedShards, normalizers: Mapping[str, FeatureNormalizer | None] | None = None,
                 row_key: str | None = None) -> None:
        if row_key is not None and row_key in shards.stores:
            raise UserError(f"row_key '{row_key}' is a backbone name; choose another")
        self.shards = shards
        self.normalizers = dict(normalizers or {})
        self.row_key = row_key
        self._key: tuple | None = None
        self._resident: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return self.shards.num_good

    def __getitem__(self, batch: ShardBatch) -> dict[str, Tensor]:
        if batch.group != self._key:
            self.release()  # free the previous group before reading the next
            self._resident = {name: torch.from_numpy(gather_rows(store, batch.ids))
                              for name, store in self.shards.stores.items()}
            self._key = batch.group
        take = torch.from_numpy(batch.take)
        out = {}
        for name, rows in self._resident.items():
            x = rows[take].float()
            norm = self.normalizers.get(name)
            out[name] = norm(x) if norm is not None else x
        if self.row_key is not None:
            out[self.row_key] = torch.from_numpy(batch.rows)
        if batch.last:
            self.release()
        return out

    def release(self) -> None:
        """Drop the resident group (the next batch reads its group again). A large group's pages are
        handed back to the OS (else the resident set outgrows the budget); the one-batch groups of
        val and test are too small for a trim to pay on every batch."""
        freed = sum(t.nbytes for t in self._resident.values())
        self._resident, self._key = {}, None
        if freed >= TRIM_BYTES:
            release_freed_memory()


def stream_normalizers(train: AlignedShards, mode: Normalization) -> dict[str, FeatureNormalizer | None]:
    """What each backbone's streamed rows still need to match ``mode``, as the in-memory cache
    applies it: ``None`` when the store already holds ``mode`` rows (its key's ``normalization``),
    else (raw rows: ``normalization`` absent or ``none``) the ``FeatureNormalizer`` of ``mode``,
    with ``standardize`` statistics of the train split's good rows (one streaming pass, float64)."""
    out: dict[str, FeatureNormalizer | None] = {}
    for name, store in train.stores.items():
        stored = (store.key or {}).get("normalization", "none")
        if stored == mode:
            out[name] = None
        elif stored != "none":
            raise UserError(f"shard store '{store.folder}' holds '{stored}'-normalised rows but "
                            f"data.normalization is '{mode}'; set normalization: {stored} or extract raw rows")
        elif mode == "standardize":
            out[name] = _standardizer(train, name)
        else:
            out[name] = FeatureNormalizer(mode)
    return out


def _standardizer(train: AlignedShards, name: str) -> FeatureNormalizer:
    """``FeatureNormalizer.fit("standardize", rows)`` over the good rows, one block at a time."""
    store = train.stores[name]
    total, sq, n = np.zeros(store.dim), np.zeros(store.dim), 0
    for block in range(len(train.good)):
        x = gather_rows(store, train.block_rows(block)).astype(np.float64)
        total += x.sum(0)
        sq += np.square(x).sum(0)
        n += len(x)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return FeatureNormalizer("standardize", torch.from_numpy(mean).float(), torch.from_numpy(std).float())


def shard_loader(shards: AlignedShards, batch_size: int, *, memory_budget_mb: float, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int = 0, world: int = 1,
                 normalizers: Mapping[str, FeatureNormalizer | None] | None = None,
                 row_key: str | None = None) -> DataLoader:
    """A loader of ``{backbone: (B, d) float32}`` batches streamed from ``shards`` (module docstring),
    in the main process (``num_workers=0``); ``row_key`` adds each batch's global rows. Without
    ``shuffle`` a group is one batch (rows in row order: contiguous reads; nothing is held between
    batches, so an evaluation Lightning stops early keeps no rows)."""
    group = group_rows_for(shards, memory_budget_mb, batch_size)
    order = ShardOrder(shards, batch_size, group if shuffle else batch_size, rank=rank, world=world, seed=seed,
                       shuffle=shuffle, drop_last=drop_last)
    rows = ShardRows(shards, normalizers, row_key)
    order.on_stop = rows.release
    return DataLoader(rows, batch_size=None, sampler=order, collate_fn=keep_batch, num_workers=0)
