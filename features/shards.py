"""Sharded activation store: one folder of fixed-size ``.npy`` shards per (backbone, split).

Layout: ``<root>/<backbone>/<split>/shard-00000.npy`` (a plain NumPy array ``(rows, d)``, float16
or float32, no pickle, read with ``np.load(mmap_mode="r")``), beside it ``shard-00000.json`` (its
manifest entry: start row, rows, dtype, dim, bytes, sha256, the mtime it was verified at, and the
rows whose image could not be decoded), and ``index.json`` (the store's key, dim, dtype, shard size,
total rows and every entry), written once every shard is there.

A shard is written to a temporary name, fsynced and renamed (``common.io.atomic_path``), and only
then gets its manifest entry, so a killed writer leaves complete shards plus at most a temp file:
a partial shard is never served. Hashes are checked incrementally: a shard whose size and mtime
equal its entry's is trusted (it was hashed when written or last verified); any other is re-hashed
once and, if it still matches, its entry is updated. A shard that fails is reported as damaged and
removed by ``drop_damaged`` so the extraction rebuilds only that shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from common.errors import UserError
from common.io import atomic_path, atomic_write_json

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
DEFAULT_SHARD_ROWS = 65_536


def file_sha256(path: Path, chunk: int = 1 << 23) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ShardEntry:
    """One shard's manifest entry. ``start``: global row (image index) of its first row."""

    index: int
    start: int
    rows: int
    dim: int
    dtype: str
    bytes: int
    sha256: str
    mtime_ns: int
    bad_rows: list[int] = field(default_factory=list)

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.npy"


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class ShardStore:
    """The shards of one (backbone, split): write, verify, memory-map.

    Args:
        folder: ``<root>/<backbone>/<split>``.
        dim: feature width d (every shard must have it).
        dtype: ``float16`` (half the disk and page cache; rows are float32 again in batches) or
            ``float32``.
        shard_rows: rows per shard (the last shard of a split holds the rest).
        key: what the rows are (backbone, layer, weights, dataset, transform, normalisation); a
            store written for another key is stale and cleared by ``reset_if_stale``.
    """

    def __init__(self, folder: str | os.PathLike, dim: int, dtype: str = "float16",
                 shard_rows: int = DEFAULT_SHARD_ROWS, key: dict | None = None) -> None:
        if dtype not in DTYPES:
            raise UserError(f"shard dtype must be float16 or float32, got '{dtype}'")
        if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
            raise UserError(f"shard_rows must be an integer >= 1, got {shard_rows!r}")
        self.folder = Path(folder)
        self.dim = int(dim)
        self.dtype = dtype
        self.shard_rows = shard_rows
        self.key = key or {}
        self._verified: dict[int, tuple] = {}

    # ---- layout --------------------------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.npy"

    def entry_path(self, index: int) -> Path:
        return self.folder / f"shard-{index:05d}.json"

    @property
    def index_path(self) -> Path:
        return self.folder / "index.json"

    def num_shards(self, total_rows: int) -> int:
        return -(-total_rows // self.shard_rows)

    def shard_range(self, index: int, total_rows: int) -> tuple[int, int]:
        """``(start, stop)`` global rows of shard ``index`` in a split of ``total_rows``."""
        start = index * self.shard_rows
        return start, min(start + self.shard_rows, total_rows)

    # ---- writing -------------------------------------------------------------------------------
    def reset_if_stale(self) -> bool:
        """Remove every shard when the folder was written for another key, dim, dtype or shard
        size (one line on stderr); ``True`` if something was removed."""
        meta = _read_json(self.folder / "store.json")
        want = {"format": FORMAT_VERSION, "key": self.key, "dim": self.dim, "dtype": self.dtype,
                "shard_rows": self.shard_rows}
        if meta == want:
            return False
        removed = False
        if self.folder.is_dir():
            for path in list(self.folder.glob("shard-*")) + [self.index_path]:
                removed |= path.exists()
                path.unlink(missing_ok=True)
        if removed:
            print(f"shards: '{self.folder}' was written with other settings; rebuilding it", file=sys.stderr)
        atomic_write_json(self.folder / "store.json", want)
        return removed

    def remove_temp_files(self) -> int:
        """Remove the temporary files a killed writer left (``.shard-*.tmp``, never served); returns
        how many. Call only while no writer is running on this folder."""
        removed = 0
        for path in self.folder.glob(".shard-*.tmp") if self.folder.is_dir() else ():
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    def write_shard(self, index: int, start: int, rows: np.ndarray, bad_rows: Iterable[int] = ()) -> ShardEntry:
        """Write one complete shard atomically, then its manifest entry; returns the entry.

        ``rows``: ``(n, dim)``; cast to the store's dtype. ``bad_rows``: local offsets of rows whose
        image could not be decoded (zeros in the file, never served).
        """
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise UserError(f"shard {index} of '{self.folder}' gets rows of shape {tuple(rows.shape)}, "
                            f"but the store holds {self.dim}-d features; use one layer per store")
        self.entry_path(index).unlink(missing_ok=True)
        path = self.shard_path(index)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, rows, allow_pickle=False)
            size, digest = tmp.stat().st_size, file_sha256(tmp)
        entry = ShardEntry(index, int(start), rows.shape[0], self.dim, self.dtype, size, digest,
                           path.stat().st_mtime_ns, sorted(int(b) for b in bad_rows))
        atomic_write_json(self.entry_path(index), {**entry.__dict__, "file": entry.file})
        self._verified[index] = (size, entry.mtime_ns, digest)
        return entry

    # ---- reading and verification --------------------------------------------------------------
    def read_entry(self, index: int) -> ShardEntry | None:
        raw = _read_json(self.entry_path(index))
        if raw is None:
            return None
        raw.pop("file", None)
        try:
            return ShardEntry(**raw)
        except TypeError:
            return None

    def problem(self, index: int, expected_rows: int | None = None, expected_start: int | None = None) -> str | None:
        """Why shard ``index`` cannot be served (``None`` if it can). Hashes only a shard whose size
        or mtime changed since it was last verified; a good re-hash is remembered in its entry."""
        entry = self.read_entry(index)
        path = self.shard_path(index)
        if entry is None:
            return "missing" if not path.exists() else "no manifest entry (interrupted write)"
        if entry.dim != self.dim:
            raise UserError(f"shard '{path}' holds {entry.dim}-d rows but the store holds {self.dim}-d "
                            f"features: it belongs to another layer or backbone; delete '{self.folder}' "
                            f"and extract again")
        if entry.dtype != self.dtype:
            return f"dtype {entry.dtype}, not {self.dtype}"
        if expected_rows is not None and entry.rows != expected_rows:
            return f"{entry.rows} rows, expected {expected_rows}"
        if expected_start is not None and entry.start != expected_start:
            return f"starts at row {entry.start}, expected {expected_start}"
        try:
            stat = path.stat()
        except FileNotFoundError:
            return "shard file missing"
        if stat.st_size != entry.bytes:
            return f"damaged ({stat.st_size} bytes, manifest says {entry.bytes})"
        if self._verified.get(index) == (stat.st_size, stat.st_mtime_ns, entry.sha256):
            return None
        if stat.st_mtime_ns != entry.mtime_ns:  # changed since verified: hash it once
            if file_sha256(path) != entry.sha256:
                return "damaged (SHA-256 differs from its manifest entry)"
            entry.mtime_ns = stat.st_mtime_ns
            atomic_write_json(self.entry_path(index), {**entry.__dict__, "file": entry.file})
        header = self._header(path)
        if header != ((entry.rows, entry.dim), entry.dtype):
            if header is not None and len(header[0]) == 2 and header[0][1] != self.dim:
                raise UserError(f"shard '{path}' holds {header[0][1]}-d rows but the store holds "
                                f"{self.dim}-d features; delete '{self.folder}' and extract again")
            return f"damaged (header {header} does not match its manifest entry)"
        self._verified[index] = (stat.st_size, stat.st_mtime_ns, entry.sha256)
        return None

    @staticmethod
    def _header(path: Path) -> tuple[tuple[int, ...], str] | None:
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh)
        except (OSError, ValueError):
            return None
        return (tuple(shape), str(dtype)) if not fortran else None

    def drop_damaged(self, total_rows: int) -> tuple[set[int], dict[int, str]]:
        """``(valid shard indices, {damaged index: reason})`` for a split of ``total_rows``; the
        files of damaged shards are removed (so they are rebuilt) and the index is dropped."""
        valid, damaged = set(), {}
        for i in range(self.num_shards(total_rows)):
            start, stop = self.shard_range(i, total_rows)
            reason = self.problem(i, stop - start, start)
            if reason is None:
                valid.add(i)
            elif reason != "missing":
                damaged[i] = reason
                self.shard_path(i).unlink(missing_ok=True)
                self.entry_path(i).unlink(missing_ok=True)
        if len(valid) < self.num_shards(total_rows):
            self.index_path.unlink(missing_ok=True)
        return valid, damaged

    def finalize(self, total_rows: int) -> dict:
        """Write ``index.json`` once every shard is valid (``UserError`` naming a missing one)."""
        entries = []
        for i in range(self.num_shards(total_rows)):
            start, stop = self.shard_range(i, total_rows)
            reason = self.problem(i, stop - start, start)
            if reason is not None:
                raise UserError(f"shard '{self.shard_path(i)}' is {reason}; run the extraction again "
                                f"(completed shards are kept)")
            entries.append({**self.read_entry(i).__dict__, "file": self.shard_path(i).name})
        index = {"format": FORMAT_VERSION, "key": self.key, "dim": self.dim, "dtype": self.dtype,
                 "shard_rows": self.shard_rows, "rows": total_rows, "shards": entries,
                 "bad_rows": sum(len(e["bad_rows"]) for e in entries)}
        atomic_write_json(self.index_path, index)
        return index

    @classmethod
    def open(cls, folder: str | os.PathLike, verify: bool = True) -> "ShardStore":
        """An existing, finalized store (``index.json``); every shard checked (incrementally) when
        ``verify``. A missing or damaged store is a one-line ``UserError``."""
        folder = Path(folder)
        index = _read_json(folder / "index.json")
        if index is None or not isinstance(index.get("shards"), list):
            raise UserError(f"no complete shard store in '{folder}' (index.json missing); write its shards "
                            f"and finalize it first")
        store = cls(folder, index["dim"], index["dtype"], index["shard_rows"], index.get("key"))
        store.rows = int(index["rows"])
        store.entries = [store.read_entry(i) for i in range(len(index["shards"]))]
        if verify:
            for i in range(len(index["shards"])):
                start, stop = store.shard_range(i, store.rows)
                reason = store.problem(i, stop - start, start)
                if reason is not None:
                    raise UserError(f"shard '{store.shard_path(i)}' is {reason}; run the extraction "
                                    f"again to rebuild it (completed shards are kept)")
        return store

    def mmap(self, index: int) -> np.ndarray:
        """Shard ``index`` as a read-only memory map ``(rows, dim)`` (no pickle)."""
        return np.load(self.shard_path(index), mmap_mode="r", allow_pickle=False)

    def bad_rows(self, index: int) -> list[int]:
        entry = self.entries[index] if getattr(self, "entries", None) else self.read_entry(index)
        return list(entry.bad_rows) if entry else []


def migrate_single_file(features, folder: str | os.PathLike, key: dict, dtype: str = "float32",
                        shard_rows: int = DEFAULT_SHARD_ROWS, source: str = "") -> ShardStore:
    """Write an in-memory (or mmapped) ``(N, d)`` split of the single-file cache as a shard store,
    with one line on stderr; returns the opened store."""
    array = features.numpy() if hasattr(features, "numpy") else np.asarray(features)
    store = ShardStore(folder, array.shape[1], dtype, shard_rows, key)
    store.reset_if_stale()
    for i in range(store.num_shards(array.shape[0])):
        start, stop = store.shard_range(i, array.shape[0])
        if store.problem(i, stop - start, start) is not None:
            store.write_shard(i, start, array[start:stop])
    store.finalize(array.shape[0])
    print(f"shards: migrated {source or 'a single-file cache entry'} to {store.num_shards(array.shape[0])} "
          f"shards in '{folder}'", file=sys.stderr)
    return ShardStore.open(folder)
