"""The sharded activation store: complete shards only, incremental hash checks, damage rebuilt."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import UserError
from features.shards import ShardStore, migrate_single_file


def written(folder, rows: np.ndarray, shard_rows: int = 3) -> ShardStore:
    store = ShardStore(folder, rows.shape[1], "float32", shard_rows, key={"layer": "avgpool"})
    for i in range(store.num_shards(len(rows))):
        start, stop = store.shard_range(i, len(rows))
        store.write_shard(i, start, rows[start:stop])
    store.finalize(len(rows))
    return store


def test_round_trip_keeps_rows_in_order_and_memory_maps(tmp_path):
    rows = np.arange(28, dtype=np.float32).reshape(7, 4)
    written(tmp_path, rows)
    store = ShardStore.open(tmp_path)
    assert store.rows == 7 and store.num_shards(7) == 3
    back = np.concatenate([np.asarray(store.mmap(i)) for i in range(3)])
    np.testing.assert_array_equal(back, rows)
    assert isinstance(store.mmap(2), np.memmap) and store.mmap(2).shape == (1, 4)


def test_unfinished_store_is_not_served(tmp_path):
    rows = np.ones((7, 4), dtype=np.float32)
    store = ShardStore(tmp_path, 4, "float32", 3)
    store.write_shard(0, 0, rows[:3])  # killed before shards 1 and 2 and the index
    with pytest.raises(UserError, match="index.json missing"):
        ShardStore.open(tmp_path)
    with pytest.raises(UserError, match="is missing"):
        store.finalize(7)
    assert store.drop_damaged(7) == ({0}, {})  # the completed shard is kept for the resume


def test_damaged_shard_is_detected_and_dropped_for_rebuild(tmp_path):
    rows = np.arange(28, dtype=np.float32).reshape(7, 4)
    written(tmp_path, rows)
    path = tmp_path / "shard-00001.npy"
    data = bytearray(path.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged"):
        ShardStore.open(tmp_path)
    valid, damaged = ShardStore(tmp_path, 4, "float32", 3).drop_damaged(7)
    assert valid == {0, 2} and set(damaged) == {1} and "SHA-256" in damaged[1]
    assert not path.exists() and not (tmp_path / "index.json").exists()


def test_unchanged_shards_are_not_hashed_again(tmp_path, monkeypatch):
    written(tmp_path, np.ones((7, 4), dtype=np.float32))
    import features.shards as shards

    def no_hash(*_):
        raise AssertionError("an unchanged shard was re-hashed")

    monkeypatch.setattr(shards, "file_sha256", no_hash)
    ShardStore.open(tmp_path)  # size and mtime match the entries: trusted without hashing


def test_rows_of_the_wrong_dimension_are_one_line(tmp_path):
    store = ShardStore(tmp_path, 4, "float32", 3)
    with pytest.raises(UserError, match="holds 4-d features"):
        store.write_shard(0, 0, np.ones((3, 5), dtype=np.float32))
    written(tmp_path / "other", np.ones((3, 5), dtype=np.float32))
    with pytest.raises(UserError, match="5-d rows but the store holds 4-d"):
        ShardStore(tmp_path / "other", 4, "float32", 3).problem(0)


def test_single_file_split_migrates_to_identical_shards(tmp_path, capsys):
    import torch

    features = torch.randn(10, 6)
    store = migrate_single_file(features, tmp_path / "s", key={"k": 1}, shard_rows=4, source="resnet50/train")
    assert "migrated resnet50/train to 3 shards" in capsys.readouterr().err
    back = np.concatenate([np.asarray(store.mmap(i)) for i in range(3)])
    np.testing.assert_array_equal(back, features.numpy())
