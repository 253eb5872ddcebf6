"""``build_cache.py --store shards``: a Lightning predict run writing a sharded store from an image
folder; equal to the in-memory extraction, resumable shard by shard, bad files and widths refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from build_cache import main as build_cache_main
from common.errors import UserError
from features.shards import ShardStore, file_sha256
from helpers.tiny_images import tiny_backbones
from scripts.synthetic_image_folder import write_image_folder

ARCH = {"r18": "resnet18", "mb": "mobilenet_v3_small"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "tree", images=30, classes=3, side=8)


def config(tmp_path: Path, root: Path, checkpoints, names=("r18",), **images) -> str:
    """A build_cache config over the image folder ``root``, cache in ``tmp_path/cache``."""
    data = {"class_path": "datamodules.activations.ActivationDataModule", "init_args": {
        "backbones": [{"name": n, "arch": ARCH[n], "checkpoint": str(checkpoints[n]), "num_classes": 4}
                      for n in names],
        "images": {"class_path": "datamodules.image_folder.ImageFolderDataModule", "init_args": {
            "root": str(root), "val_size": 4, "resize": None, "crop": 8, "num_workers": 0, **images}},
        "cache_dir": str(tmp_path / "cache"), "extract_batch_size": 3, "precision": "32",
        "progress": False, "device": "cpu"}}
    path = tmp_path / "activations.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return str(path)


SHARDS = ["--store", "shards", "--shards.rows", "4", "--shards.dtype", "float32", "--trainer.accelerator", "cpu"]


def shards(cache: Path, name: str, split: str) -> tuple[np.ndarray, ShardStore]:
    store = ShardStore.open(cache / name / split)
    return np.concatenate([np.asarray(store.mmap(i)) for i in range(len(store.entries))]), store


def fingerprints(cache: Path) -> dict[str, tuple[str, int]]:
    """Every shard file → (sha256, mtime_ns)."""
    return {str(p.relative_to(cache)): (file_sha256(p), p.stat().st_mtime_ns)
            for p in sorted(cache.rglob("shard-*.npy"))}


def test_shards_equal_the_in_memory_extraction(tmp_path, folder, checkpoints):
    cfg = config(tmp_path, folder, checkpoints)
    build_cache_main(["--config", cfg, *SHARDS])
    single = build_cache_main(["--config", cfg])  # the single-file cache of the same images
    for split in ("train", "val", "test"):
        rows, store = shards(tmp_path / "cache", "r18", split)
        expected, _ = single.cache.load("r18", split)
        assert store.rows == len(single.images.samples(split)) == len(expected)
        assert len(store.entries) == -(-store.rows // 4) and store.entries[-1].rows == store.rows - 4 * (len(store.entries) - 1)
        np.testing.assert_allclose(rows, expected.numpy(), rtol=0, atol=1e-6)
        assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)  # l2 rows, as the cache stores them


def test_resume_rebuilds_only_missing_or_damaged_shards(tmp_path, folder, checkpoints, capsys):
    cfg = config(tmp_path, folder, checkpoints)
    build_cache_main(["--config", cfg, *SHARDS])
    cache = tmp_path / "cache"
    before = fingerprints(cache)
    (cache / "r18" / "train" / "shard-00001.npy").unlink()  # a run killed before this shard
    damaged = cache / "r18" / "test" / "shard-00000.npy"
    data = bytearray(damaged.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    build_cache_main(["--config", cfg, *SHARDS])
    assert "r18/test/shard-00000.npy' damaged" in capsys.readouterr().err
    after = fingerprints(cache)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # identical store
    rewritten = {k for k in after if after[k][1] != before[k][1]}
    assert rewritten == {"r18/train/shard-00001.npy", "r18/test/shard-00000.npy"}


def test_a_shard_of_another_width_is_one_line(tmp_path, folder, checkpoints):
    cfg = config(tmp_path, folder, checkpoints)
    build_cache_main(["--config", cfg, *SHARDS])
    folder_of = tmp_path / "cache" / "r18" / "val"
    other = ShardStore(folder_of, 7, "float32", 4)  # a shard of a 7-d layer dropped into the folder
    other.write_shard(0, 0, np.ones((4, 7), dtype=np.float32))
    with pytest.raises(UserError) as err:
        build_cache_main(["--config", cfg, *SHARDS])
    assert "\n" not in str(err.value) and "holds 7-d rows but the store holds 512-d" in str(err.value)


def test_undecodable_image_is_skipped_in_step_across_backbones_or_named(tmp_path, folder, checkpoints):
    root = tmp_path / "tree"
    shutil.copytree(folder, root)
    victim = sorted((root / "val" / "c001").glob("*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8 truncated")
    cfg = config(tmp_path, root, checkpoints, names=("r18", "mb"), on_bad_image="error")
    with pytest.raises(UserError, match=f"cannot decode image '{victim}'"):
        build_cache_main(["--config", cfg, *SHARDS])
    cfg = config(tmp_path, root, checkpoints, names=("r18", "mb"), on_bad_image="skip")
    build_cache_main(["--config", cfg, *SHARDS])
    bad = {}
    for name in ("r18", "mb"):
        rows, store = shards(tmp_path / "cache", name, "test")
        bad[name] = [e.start + b for e in store.entries for b in e.bad_rows]
        assert len(bad[name]) == 1 and not rows[bad[name][0]].any() and rows.shape[0] == store.rows
        assert rows[np.arange(len(rows)) != bad[name][0]].any(1).all()
    assert bad["r18"] == bad["mb"]  # the same row in every backbone: rows stay aligned
    images = yaml.safe_load(Path(cfg).read_text())["data"]["init_args"]["images"]["init_args"]
    from datamodules.image_folder import ImageFolderDataModule

    assert ImageFolderDataModule(**images).samples("test")[bad["r18"][0]][0] == str(victim)


@pytest.mark.slow
def test_two_gloo_processes_write_the_store_one_process_writes(tmp_path, folder, checkpoints, repo_root):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    for where, devices in ((one, "1"), (two, "2")):
        cfg = config(where, folder, checkpoints)
        subprocess.run([sys.executable, str(repo_root / "build_cache.py"), "--config", cfg, *SHARDS,
                        "--trainer.devices", devices, "--trainer.strategy", "ddp"],
                       check=True, env=env, cwd=repo_root, timeout=300, capture_output=True)
    a, b = fingerprints(one / "cache"), fingerprints(two / "cache")
    assert len(a) == len(list((one / "cache").rglob("shard-*.json"))) > 3 and {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
