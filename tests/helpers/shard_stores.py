"""Small shard stores for the streaming tests: row i of every backbone encodes i."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.shards import ShardStore


def id_rows(rows: int, dim: int, offset: float = 0.0) -> np.ndarray:
    """``(rows, dim)`` float32: column 0 is the row index, column c >= 1 adds ``offset + c / 8``."""
    x = np.arange(rows, dtype=np.float32)[:, None] + offset + np.arange(dim, dtype=np.float32)[None, :] / 8
    x[:, 0] = np.arange(rows)
    return x.astype(np.float32)


def write_store(root: str | Path, name: str, split: str, features: np.ndarray, shard_rows: int,
                bad: tuple[int, ...] = (), dtype: str = "float32", key: dict | None = None) -> ShardStore:
    """``<root>/<name>/<split>`` holding ``features`` (N, d); ``bad``: global rows to list as bad."""
    store = ShardStore(Path(root) / name / split, features.shape[1], dtype, shard_rows, key or {"name": name})
    store.reset_if_stale()
    for i in range(store.num_shards(len(features))):
        start, stop = store.shard_range(i, len(features))
        store.write_shard(i, start, features[start:stop], [b - start for b in bad if start <= b < stop])
    store.finalize(len(features))
    return store


def write_id_stores(root: str | Path, rows: int, dims: dict[str, int], shard_rows: dict[str, int],
                    bad: dict[str, tuple[int, ...]] | None = None, splits=("train",), **kwargs) -> Path:
    """One id-encoding store per (backbone, split); backbones may use different shard sizes."""
    for split in splits:
        for m, (name, dim) in enumerate(dims.items()):
            write_store(root, name, split, id_rows(rows, dim, offset=m / 2), shard_rows[name],
                        (bad or {}).get(name, ()), **kwargs)
    return Path(root)
