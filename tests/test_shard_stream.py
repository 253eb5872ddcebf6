"""Streaming shard stores: DDP row split, seeded order, alignment, bad rows, memory bound, errors,
and the same training as the in-memory path."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.errors import UserError
from components.sparse_coder import SparseCoderConfig
from datamodules.activations import ActivationDataModule, BackboneSpec, DictTensorDataset, FeatureStorage
from datamodules.in_memory import keep_batch
from datamodules.shard_stream import (ShardOrder, ShardRows, group_rows_for, open_split, shard_loader,
                                      stream_normalizers)
from features.activation_cache import FeatureNormalizer
from features.shards import ShardStore
from helpers.shard_stores import id_rows, write_id_stores, write_store
from helpers.tiny_images import TinyImages
from lightning_modules.universal_sae import UniversalSAE

DIMS = {"a": 4, "b": 3}
BAD = {"a": (5, 17), "b": (17, 60)}
GOOD = sorted(set(range(103)) - {5, 17, 60})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """103 rows; backbone a in shards of 10 rows, b in shards of 7; rows 5, 17, 60 bad somewhere."""
    root = write_id_stores(tmp_path_factory.mktemp("shards"), 103, DIMS, {"a": 10, "b": 7}, bad=BAD)
    return open_split(root, list(DIMS), "train", DIMS)


def rows_seen(shards, rank=0, world=1, epoch=0, seed=0, shuffle=True, batch=8, group=16, drop_last=False):
    """Per batch: the global rows the sampler chose and the features the dataset served for them."""
    order = ShardOrder(shards, batch, group, rank=rank, world=world, seed=seed, shuffle=shuffle,
                       drop_last=drop_last)
    order.set_epoch(epoch)
    data = ShardRows(shards)
    return [(key.rows, data[key]) for key in order]


def ids(seen) -> np.ndarray:
    return np.concatenate([rows for rows, _ in seen])


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_ranks_see_disjoint_rows_that_cover_the_split(shards, shuffle):
    per_rank = [ids(rows_seen(shards, rank=r, world=2, shuffle=shuffle)) for r in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    union = sorted(np.concatenate(per_rank).tolist())
    assert union == GOOD  # 100 good rows: nothing left over on two ranks
    if shuffle:
        assert len(per_rank[0]) == len(per_rank[1])
    else:  # eval order: row order, contiguous halves
        assert np.concatenate(per_rank).tolist() == GOOD


def test_three_ranks_get_equal_batches_and_leave_out_under_world_rows(shards):
    batches = [rows_seen(shards, rank=r, world=3) for r in range(3)]
    assert len({len(b) for b in batches}) == 1  # DDP steps stay in lockstep
    seen = np.concatenate([ids(b) for b in batches])
    assert len(seen) == len(set(seen)) == 99 and set(seen) <= set(GOOD)


def test_same_seed_same_order_other_epoch_or_seed_other_order(shards):
    first = ids(rows_seen(shards, epoch=0))
    assert np.array_equal(first, ids(rows_seen(shards, epoch=0)))
    assert not np.array_equal(first, ids(rows_seen(shards, epoch=1)))
    assert not np.array_equal(first, ids(rows_seen(shards, seed=1)))
    assert sorted(ids(rows_seen(shards, epoch=1)).tolist()) == GOOD
    assert not np.array_equal(first, np.sort(first))  # shuffled


def test_rows_are_aligned_across_backbones_and_bad_rows_dropped_for_all(shards):
    for rows, batch in rows_seen(shards, world=2, rank=1):
        assert set(batch) == set(DIMS)
        assert batch["a"].dtype == batch["b"].dtype == torch.float32
        for name, dim in DIMS.items():
            assert batch[name].shape == (len(rows), dim)
            assert torch.equal(batch[name][:, 0], torch.from_numpy(rows).float())
        assert not {5, 17, 60} & set(rows.tolist())


def test_float16_store_is_served_as_float32(tmp_path):
    root = write_id_stores(tmp_path, 30, DIMS, {"a": 8, "b": 8}, dtype="float16")
    ((rows, batch),) = rows_seen(open_split(root, list(DIMS), "train"), batch=32, group=32)
    assert batch["a"].dtype == torch.float32
    assert torch.equal(batch["a"], torch.from_numpy(id_rows(30, 4)[rows]).half().float())


def test_resident_rows_stay_within_the_memory_budget(shards):
    budget_mb = 3000 / 2**20  # one shard and one batch of 8 leave room for about 40 rows
    group = group_rows_for(shards, budget_mb, 8)
    assert group % 8 == 0 and 8 <= group < shards.num_good / 2
    loader = shard_loader(shards, 8, memory_budget_mb=budget_mb)
    data, peak = loader.dataset, 0
    for _ in loader:
        peak = max(peak, max((t.shape[0] for t in data._resident.values()), default=0))
    assert 0 < peak <= group
    assert data._resident == {}  # the last group is dropped after its last batch
    batches = iter(loader)
    next(batches)
    assert data._resident  # a group is held while batches are served ...
    del batches
    assert data._resident == {}  # ... and dropped when the iteration is abandoned (sanity check)
    with pytest.raises(UserError, match="memory_budget_mb") as err:
        group_rows_for(shards, 0.001, 8)
    assert "\n" not in str(err.value)


def test_missing_store_wrong_dim_and_row_mismatch_are_one_line_errors(tmp_path):
    root = write_id_stores(tmp_path, 20, DIMS, {"a": 8, "b": 8})
    cases = [(lambda: open_split(root, ["a", "c"], "train"), "no shard store for backbone 'c'"),
             (lambda: open_split(root, ["a", "b"], "val"), "split 'val'"),
             (lambda: open_split(root, ["a", "b"], "train", {"a": 4, "b": 5}), "3-d rows but backbone 'b'")]
    write_store(tmp_path / "short", "a", "train", id_rows(20, 4), 8)
    write_store(tmp_path / "short", "b", "train", id_rows(19, 3), 8)
    cases.append((lambda: open_split(tmp_path / "short", ["a", "b"], "train"), "different row counts"))
    # one shard rewritten with 5-d rows (its own manifest entry says so): the index says 4
    wide = write_id_stores(tmp_path / "wide", 20, DIMS, {"a": 8, "b": 8})
    ShardStore(wide / "a" / "train", 5, "float32", 8).write_shard(1, 8, np.ones((8, 5), np.float32))
    cases.append((lambda: open_split(wide, ["a", "b"], "train"), "5-d rows but the store holds 4-d"))
    for call, message in cases:
        with pytest.raises(UserError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_normalisation_matches_the_in_memory_cache(tmp_path):
    rng = np.random.default_rng(0)
    raw = {name: rng.normal(size=(40, d)).astype(np.float32) for name, d in DIMS.items()}
    for name in DIMS:
        write_store(tmp_path / "raw", name, "train", raw[name], 16, bad=(3,), key={"normalization": "none"})
    train = open_split(tmp_path / "raw", list(DIMS), "train")
    good = np.setdiff1d(np.arange(40), [3])
    for mode in ("l2", "standardize", "none"):
        norms = stream_normalizers(train, mode)
        loader = shard_loader(train, 64, memory_budget_mb=1, normalizers=norms, shuffle=False)
        (batch,) = list(loader)
        for name in DIMS:
            x = torch.from_numpy(raw[name][good])
            torch.testing.assert_close(batch[name], FeatureNormalizer.fit(mode, x)(x), rtol=1e-5, atol=1e-6)
    l2 = {name: (raw[name] / np.linalg.norm(raw[name], axis=1, keepdims=True)) for name in DIMS}
    for name in DIMS:  # rows normalised when written are served as they are
        write_store(tmp_path / "l2", name, "train", l2[name], 16, key={"normalization": "l2"})
    stored = open_split(tmp_path / "l2", list(DIMS), "train")
    assert stream_normalizers(stored, "l2") == {"a": None, "b": None}
    with pytest.raises(UserError, match="'l2'-normalised rows but data.normalization is 'standardize'"):
        stream_normalizers(stored, "standardize")


def _shard_dm(root, **kwargs) -> ActivationDataModule:
    specs = [BackboneSpec("r18", "resnet18", "unused.pth"), BackboneSpec("mb", "mobilenet_v3_small", "unused.pth")]
    storage = {"kind": "shards", "shards_root": str(root), "memory_budget_mb": 1, **kwargs.pop("storage", {})}
    return ActivationDataModule(specs, TinyImages(), cache_dir=str(root / "no_cache"), batch_size=8,
                                progress=False, precision="32", storage=storage, **kwargs)


def test_datamodule_streams_every_split_from_shards(tmp_path):
    dims = {"r18": 512, "mb": 1024}
    write_id_stores(tmp_path, 30, dims, {"r18": 8, "mb": 16}, bad={"mb": (2,)}, splits=("train", "val", "test"),
                    key={"normalization": "none"})
    dm = _shard_dm(tmp_path, normalization="none")
    dm.prepare_data()
    dm.setup("fit")
    train = [b for b in dm.train_dataloader()]
    assert len(train) == len(dm.train_dataloader()) == 4  # 29 good rows, batches of 8
    rows = torch.cat([b["r18"][:, 0] for b in train])
    assert torch.equal(rows, torch.cat([b["mb"][:, 0] for b in train]))
    assert sorted(rows.long().tolist()) == [i for i in range(30) if i != 2]
    val = torch.cat([b["mb"][:, 0] for b in dm.val_dataloader()])
    assert val.long().tolist() == [i for i in range(30) if i != 2]  # row order
    assert dm.split_features("test")["r18"].shape == (30, 512)  # whole split, row i = image i
    assert not (tmp_path / "no_cache").exists()  # nothing extracted
    assert dm.hparams["storage"]["kind"] == "shards"
    with pytest.raises(UserError, match="2048-d features|512-d"):
        write_id_stores(tmp_path / "other", 30, {"r18": 2048, "mb": 1024}, {"r18": 8, "mb": 8})
        _shard_dm(tmp_path / "other", normalization="none").setup("fit")


@pytest.mark.parametrize("storage, message", [
    ({"kind": "disk"}, "unknown"), ({"kind": "shards"}, "shards_root is not set"),
    ({"kind": "shards", "shards_root": "x", "memory_budget_mb": 0}, "must be positive"),
    ({"kind": "shards", "shard_root": "x"}, "unknown option"),
])
def test_bad_storage_options_are_one_line_errors(storage, message):
    with pytest.raises(UserError, match=message) as err:
        FeatureStorage.coerce(storage)
    assert "\n" not in str(err.value)


class _Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _train(loader, steps: int) -> list[float]:
    model = UniversalSAE({"a": 12, "b": 10}, sae=SparseCoderConfig(n_latents=32, k=4, pre_bias=True,
                                                                  select_dtype="float32"), lr=3e-3)
    losses = _Losses()
    L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, deterministic=True,
              callbacks=[losses]).fit(model, train_dataloaders=loader)
    return losses.losses


def test_streamed_training_matches_in_memory_training_on_the_same_rows(tmp_path, one_thread):
    rng = np.random.default_rng(1)
    raw = {"a": rng.normal(size=(90, 12)).astype(np.float32), "b": rng.normal(size=(90, 10)).astype(np.float32)}
    for name, x in raw.items():
        write_store(tmp_path, name, "train", x, 25, bad=(7,), key={"normalization": "none"})
    shards = open_split(tmp_path, ["a", "b"], "train")
    streamed = shard_loader(shards, 16, memory_budget_mb=0.05, seed=3,
                            normalizers=stream_normalizers(shards, "l2"))
    order = [key.rows for key in streamed.sampler]  # the stream's batches, as global rows
    memory = {n: FeatureNormalizer("l2")(torch.from_numpy(x)) for n, x in raw.items()}
    in_memory = DataLoader(DictTensorDataset(memory), batch_sampler=[r.tolist() for r in order],
                           collate_fn=keep_batch)
    a, b = _train(streamed, 5), _train(in_memory, 5)
    assert len(a) == 5 and a == b
    assert json.dumps(a)  # finite numbers


def test_storage_section_composes_onto_the_study_config(repo_root, tmp_path):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=int)
    parser.add_subclass_arguments(ActivationDataModule, "data")
    study = ["--config", str(repo_root / "configs/fashion_mnist/activations.yaml")]
    default = parser.instantiate(parser.parse_args(study)).data
    assert default.storage.kind == "memory" and default.stream is None
    shards = parser.instantiate(parser.parse_args(study + [
        "--data.init_args.storage.kind", "shards", "--data.init_args.storage.shards_root", str(tmp_path),
        "--data.init_args.storage.memory_budget_mb", "512"])).data
    assert shards.stream is not None and shards.stream.memory_budget_mb == 512
    with pytest.raises(UserError, match="no shard store for backbone 'resnet50'"):
        shards.setup("fit")


def test_trainer_sanity_check_leaves_no_validation_rows_resident(tmp_path, one_thread):
    from datamodules.shard_features import ShardFeatureData

    write_id_stores(tmp_path, 64, {"a": 12, "b": 10}, {"a": 16, "b": 16}, splits=("train", "val"))
    data = ShardFeatureData(tmp_path, ["a", "b"], batch_size=8, normalization="none", memory_budget_mb=0.05)
    held = []

    class ValHeld(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            held.append(len(trainer.val_dataloaders.dataset._resident))

    model = UniversalSAE({"a": 12, "b": 10}, sae=SparseCoderConfig(n_latents=16, k=2, select_dtype="float32"))
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=1, callbacks=[ValHeld()]).fit(model, datamodule=data)
    assert held == [0, 0]


def test_a_training_group_mixes_rows_of_many_shards(tmp_path):
    """Rows written in class order (one class per shard) still meet in every group."""
    from datamodules.shard_stream import GROUP_SPAN

    root = write_id_stores(tmp_path, 2000, {"a": 2, "b": 2}, {"a": 50, "b": 50})
    order = ShardOrder(open_split(root, ["a", "b"], "train"), 16, 160, shuffle=True)
    groups = {}
    for key in order:
        groups.setdefault(key.group, set()).update((key.rows // 50).tolist())
    assert len(groups) == 13  # 2000 rows in groups of 160
    # whole shards in a row would give 4 or 5 per group
    assert min(len(shards) for shards in list(groups.values())[:-1]) >= GROUP_SPAN // 2


def test_release_freed_memory_is_safe_to_call_anywhere():
    from common.memory import release_freed_memory

    import platform

    done = release_freed_memory()  # glibc trims; elsewhere a no-op, never an error
    assert done is (platform.libc_ver()[0] == "glibc")


def test_imagenet_training_config_composes_into_a_streamed_ddp_run(repo_root):
    import subprocess
    import sys

    import yaml

    out = subprocess.run([sys.executable, "train.py", "--config", "configs/imagenet/activations.yaml",
                          "--config", "configs/sae/usae_joint.yaml", "--config", "configs/imagenet/usae.yaml",
                          "--print_config"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    config = yaml.safe_load(out.stdout)
    storage = config["data"]["init_args"]["storage"]
    assert storage["kind"] == "shards" and storage["shards_root"] == "artifacts/activations/imagenet"
    assert set(config["model"]["init_args"]["feature_dims"]) == {
        b["name"] for b in config["data"]["init_args"]["backbones"]}
    assert config["trainer"]["strategy"] == "ddp" and config["model"]["init_args"]["sae"]["n_latents"] == 10000


def test_a_large_dropped_group_is_trimmed_and_a_one_batch_group_is_not(shards, monkeypatch):
    import torch

    from datamodules import shard_stream

    trims = []
    monkeypatch.setattr(shard_stream, "release_freed_memory", lambda: trims.append(1) or True)
    rows = shard_stream.ShardRows(shards)
    rows._resident, rows._key = {"a": torch.zeros(shard_stream.TRIM_BYTES // 4, dtype=torch.float32)}, ("g",)
    rows.release()
    assert trims == [1] and rows._resident == {} and rows._key is None
    rows._resident, rows._key = {"a": torch.zeros(1024, 8)}, ("h",)
    rows.release()
    assert trims == [1] and rows._resident == {}
