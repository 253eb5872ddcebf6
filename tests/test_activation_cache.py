"""The activation cache: alignment, reuse, invalidation, corruption and crash recovery."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import datamodules.activations as activations_module
from common.errors import UserError
from features.activation_cache import FeatureNormalizer
from helpers.tiny_images import TinyImages, save_random_backbone, tiny_activation_dm, tiny_backbones
from components.backbones import FeatureExtractor, load_backbone

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture
def count_extractions(monkeypatch) -> list[str]:
    """Record every ``extract_features`` call as ``"name/split"``."""
    calls: list[str] = []
    real = activations_module.extract_features

    def counted(*args, **kwargs):
        calls.append(kwargs["desc"])
        return real(*args, **kwargs)

    monkeypatch.setattr(activations_module, "extract_features", counted)
    return calls


def file_digests(folder: Path) -> dict[str, tuple[str, int]]:
    """name → (sha256, mtime_ns) of every cache file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def actions(dm) -> dict[str, str]:
    return {f"{s.name}/{s.split}": s.action for s in dm.last_build}


def test_rows_are_aligned_with_images_for_every_backbone(tmp_path, checkpoints):
    dm = tiny_activation_dm(tmp_path / "cache", checkpoints, extract_batch_size=5)
    dm.prepare_data()
    for name, arch in (("r18", "resnet18"), ("mb", "mobilenet_v3_small")):
        extractor = FeatureExtractor(load_backbone(arch, 4, checkpoints[name]), dm._layer(dm.specs[name])).eval()
        for split in SPLITS:
            images, _ = dm.images.split(split)
            cached, manifest = dm.cache.load(name, split)
            assert cached.shape == (len(images), dm.feature_dims[name]) == tuple(manifest["shape"])
            assert torch.load(dm.cache.paths(name, split)[0], weights_only=True).dtype == torch.float32
            for i in (0, 3, len(images) - 1):  # one image alone, NCHW, no inference_mode: same row
                with torch.no_grad():
                    alone = extractor(dm.images.transform(images[i:i + 1], train=False))
                torch.testing.assert_close(cached[i:i + 1], FeatureNormalizer("l2")(alone),
                                           atol=1e-4, rtol=1e-3)
            torch.testing.assert_close(cached.norm(dim=1), torch.ones(len(images)))


def test_second_run_reuses_the_cache(tmp_path, checkpoints, count_extractions):
    tiny_activation_dm(tmp_path / "cache", checkpoints).prepare_data()
    assert sorted(count_extractions) == sorted(f"{n}/{s}" for n in ("r18", "mb") for s in SPLITS)
    before = file_digests(tmp_path / "cache")
    count_extractions.clear()
    dm = tiny_activation_dm(tmp_path / "cache", checkpoints)
    dm.prepare_data()
    dm.setup()
    assert count_extractions == [] and set(actions(dm).values()) == {"reused"}
    assert file_digests(tmp_path / "cache") == before


@pytest.mark.parametrize("change, field", [
    ({"layer": "layer4"}, "layer"),
    ({"checkpoint": "other"}, "checkpoint_sha256"),
    ({"normalization": "standardize"}, "normalization"),
    ({"images": "other"}, "images_sha256"),
    ({"precision": "bf16"}, "precision"),
])
def test_any_change_rebuilds(tmp_path, checkpoints, count_extractions, change, field):
    tiny_activation_dm(tmp_path / "cache", checkpoints, names=("r18",)).prepare_data()
    count_extractions.clear()
    kwargs, ckpts = {}, dict(checkpoints)
    if "layer" in change:
        spec = activations_module.BackboneSpec("r18", "resnet18", str(checkpoints["r18"]), layer="layer4")
        dm = activations_module.ActivationDataModule([spec], TinyImages(), cache_dir=str(tmp_path / "cache"),
                                                     progress=False)
    else:
        if "checkpoint" in change:
            ckpts["r18"] = save_random_backbone(tmp_path / "r18_other.pth", "resnet18", 4, seed=5)
        if "images" in change:
            kwargs["images"] = TinyImages(data_seed=1)
        if "normalization" in change:
            kwargs["normalization"] = "standardize"
        if "precision" in change:
            kwargs["precision"] = "bf16"
        dm = tiny_activation_dm(tmp_path / "cache", ckpts, names=("r18",), **kwargs)
    dm.prepare_data()
    assert sorted(count_extractions) == ["r18/test", "r18/train", "r18/val"]
    assert all(field in s.reason for s in dm.last_build), [s.reason for s in dm.last_build]
    manifest = json.loads((tmp_path / "cache" / "r18" / "val.json").read_text())
    assert manifest["key"]["split"] == "val" and manifest["rows"] == len(dm.images.split("val")[1])
    if "precision" in change:  # precision: auto accepts a cache of any precision (GPU-built, CPU-read)
        count_extractions.clear()
        tiny_activation_dm(tmp_path / "cache", ckpts, names=("r18",), precision="auto").prepare_data()
        assert count_extractions == []


def test_standardize_uses_train_statistics(tmp_path, checkpoints):
    dm = tiny_activation_dm(tmp_path / "cache", checkpoints, names=("r18",), normalization="standardize")
    dm.setup()
    train = dm.split_features("train")["r18"]
    varying = train.std(0, unbiased=False) > 1e-3
    torch.testing.assert_close(train.mean(0), torch.zeros(train.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False)[varying], torch.ones(int(varying.sum())),
                               atol=1e-3, rtol=0)
    normalizer = dm.normalizer("r18")
    assert normalizer.mode == "standardize" and normalizer.mean.shape == (train.shape[1],)
    test_manifest = json.loads((tmp_path / "cache" / "r18" / "test.json").read_text())
    assert test_manifest["stats"]["mean"] == normalizer.mean.tolist()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_is_detected_and_never_used(tmp_path, checkpoints, count_extractions, damage):
    tiny_activation_dm(tmp_path / "cache", checkpoints, names=("r18",)).prepare_data()
    path = tmp_path / "cache" / "r18" / "train.pt"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    damaged = path.read_bytes()
    strict = tiny_activation_dm(tmp_path / "cache", checkpoints, names=("r18",), rebuild="never")
    with pytest.raises(UserError) as err:
        strict.setup()
    assert "\n" not in str(err.value)
    assert ("truncated" if damage == "truncate" else "corrupted") in str(err.value)
    assert path.read_bytes() == damaged  # never mode touches nothing
    with pytest.raises(UserError, match="unusable"):
        strict.cache.load("r18", "train")
    count_extractions.clear()
    dm = tiny_activation_dm(tmp_path / "cache", checkpoints, names=("r18",))
    dm.setup()
    assert count_extractions == ["r18/train"] and actions(dm)["r18/val"] == "reused"
    assert dm.split_features("train")["r18"].norm(dim=1).allclose(torch.ones(1))


def test_cache_of_another_backbone_is_refused_and_kept(tmp_path, checkpoints):
    tiny_activation_dm(tmp_path / "cache", checkpoints, names=("r18",)).prepare_data()
    before = file_digests(tmp_path / "cache")
    spec = activations_module.BackboneSpec("r18", "mobilenet_v3_small", str(checkpoints["mb"]))
    dm = activations_module.ActivationDataModule([spec], TinyImages(), cache_dir=str(tmp_path / "cache"),
                                                 progress=False)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    assert "\n" not in str(err.value) and "belongs to another backbone" in str(err.value)
    assert file_digests(tmp_path / "cache") == before


def test_checkpoint_of_another_architecture_overwrites_nothing(tmp_path, checkpoints):
    tiny_activation_dm(tmp_path / "cache", checkpoints, names=("r18",)).prepare_data()
    before = file_digests(tmp_path / "cache")
    wrong = {"r18": checkpoints["mb"]}  # a mobilenet file given as the resnet18 checkpoint
    with pytest.raises(UserError) as err:
        tiny_activation_dm(tmp_path / "cache", wrong, names=("r18",)).prepare_data()
    assert "does not fit resnet18" in str(err.value) and "\n" not in str(err.value)
    assert file_digests(tmp_path / "cache") == before


def test_exception_mid_build_then_recovery(tmp_path, checkpoints, monkeypatch):
    real = activations_module.extract_features

    def failing(*args, **kwargs):
        if kwargs["desc"] == "r18/test":
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(activations_module, "extract_features", failing)
    with pytest.raises(RuntimeError, match="injected"):
        tiny_activation_dm(tmp_path / "cache", checkpoints).prepare_data()
    assert not (tmp_path / "cache" / "r18" / "test.json").exists()
    monkeypatch.setattr(activations_module, "extract_features", real)
    dm = tiny_activation_dm(tmp_path / "cache", checkpoints)
    dm.setup()
    assert actions(dm) == {"r18/train": "reused", "r18/val": "reused", "r18/test": "built",
                           "mb/train": "built", "mb/val": "built", "mb/test": "built"}


CHILD = """
import os, signal, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
from helpers.tiny_images import tiny_activation_dm
real_save = torch.save

def dying_save(obj, path, *args, **kwargs):
    real_save(obj, path, *args, **kwargs)
    if ".val.pt." in str(path):  # half-written temporary file of r18/val, then killed
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

torch.save = dying_save
checkpoints = {{"r18": {r18!r}, "mb": {mb!r}}}
tiny_activation_dm({cache!r}, checkpoints).prepare_data()
"""


def test_killed_extraction_recovers_on_next_run(tmp_path, checkpoints, repo_root):
    """SIGKILL while the val tensor of the first backbone is being written, over an older cache."""
    cache = tmp_path / "cache"
    old = {**checkpoints, "r18": save_random_backbone(tmp_path / "r18_old.pth", "resnet18", 4, seed=7)}
    tiny_activation_dm(cache, old).prepare_data()  # a complete cache of an older r18 checkpoint
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(
        repo=str(repo_root), tests=str(repo_root / "tests"), r18=str(checkpoints["r18"]),
        mb=str(checkpoints["mb"]), cache=str(cache))))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    folder = cache / "r18"
    assert list(folder.glob(".val.pt.*.tmp")), "the kill should leave a partial temporary file"
    assert not (folder / "val.json").exists()  # the old val tensor lost its manifest before the write

    dm = tiny_activation_dm(cache, checkpoints)
    dm.setup()
    assert actions(dm) == {"r18/train": "reused", "r18/val": "built", "r18/test": "built",
                           "mb/train": "reused", "mb/val": "reused", "mb/test": "reused"}
    assert not list(folder.glob("*.tmp"))
    clean = tiny_activation_dm(tmp_path / "clean", checkpoints)
    clean.setup()
    for split in SPLITS:
        for name in ("r18", "mb"):
            assert torch.equal(dm.split_features(split)[name], clean.split_features(split)[name])


@pytest.mark.slow
def test_compiled_extraction_matches_eager(checkpoints):
    """compile=True (inductor, frozen weights, zero-padded last batch) gives the eager features."""
    from features.extractor import extract_features

    images = TinyImages(n_train=24, val_size=4)
    raw, _ = images.split("train")
    results = {}
    for compile in (False, True):
        extractor = FeatureExtractor(load_backbone("resnet18", 4, checkpoints["r18"]), "penultimate")
        results[compile] = extract_features(extractor, raw, images.transform, batch_size=8,
                                            progress=False, compile=compile)
    assert results[True].shape == (20, 512)  # 8 + 8 + 4 (padded to 8)
    torch.testing.assert_close(results[True], results[False], atol=1e-4, rtol=1e-3)
