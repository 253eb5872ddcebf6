"""No file runs code: a planted pickle at every entry point that takes a path is refused with one
line, and the code in it never runs; real checkpoints of this project still load."""

from __future__ import annotations

import hashlib
import json
import pathlib
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from common.errors import UserError, run_cli
from common.safe_load import load_numpy_pickle, load_weights


class Planted:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for ``os.system`` that leaves evidence."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def plant(path: Path, marker: Path, wrap=None) -> Path:
    """``torch.save`` a file whose unpickling would create ``marker`` (inside ``wrap(obj)`` if given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = Planted(marker)
    torch.save(wrap(obj) if wrap else obj, path)
    return path


def as_checkpoint(obj) -> dict:
    """A Lightning-looking checkpoint with real tensors and the planted object in its hparams."""
    return {"state_dict": {"net.weight": torch.zeros(2, 2)}, "hyper_parameters": {"x": obj},
            "epoch": 0, "global_step": 0}


def refused(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    assert "not a plain weights/checkpoint file" in message and "could run code" in message, message
    return message


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "CODE_RAN"


def test_the_planted_pickle_is_live(tmp_path, marker):
    """The plant really runs code under an unrestricted load (so the tests below could fail)."""
    path = plant(tmp_path / "evil.ckpt", marker, as_checkpoint)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("wrap", [None, as_checkpoint, lambda o: [torch.zeros(1), {"a": o}]])
def test_load_weights_refuses_a_planted_pickle(tmp_path, marker, wrap):
    path = plant(tmp_path / "evil.ckpt", marker, wrap)
    with pytest.raises(UserError) as err:
        load_weights(path, "some_option")
    assert refused(err, path).startswith("some_option ")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_load_weights_refuses_a_raw_pickle(tmp_path, marker, protocol):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"a": Planted(marker)}, protocol=protocol))
    with pytest.raises(UserError) as err:
        load_weights(path, "x")
    if protocol == 2:
        refused(err, path)
    else:  # the restricted unpickler stops at the first protocol-4 opcode
        assert "not a readable PyTorch weights file (Unsupported operand" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("content, expected", [(b"", "EOFError"), (b"hello world", "not a readable"),
                                               (b"PK\x03\x04garbage", "not a readable")])
def test_load_weights_garbage_and_missing_files_are_one_line(tmp_path, content, expected):
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected) as err:
        load_weights(path, "x")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="does not exist"):
        load_weights(tmp_path / "missing.pth", "x")


def test_load_weights_reads_tensors_and_containers(tmp_path):
    obj = {"w": torch.arange(3.0), "meta": {"k": 4, "name": "x", "sizes": [1, 2], "t": (1.5, None)}}
    torch.save(obj, tmp_path / "ok.pth")
    loaded = load_weights(tmp_path / "ok.pth", "x")
    assert torch.equal(loaded["w"], obj["w"]) and loaded["meta"] == obj["meta"]


# ----- entry points -----------------------------------------------------------------------------
def test_backbone_checkpoint_pth_and_ckpt(tmp_path, marker):
    from components.backbones import load_backbone

    for name in ("evil.pth", "evil.ckpt"):  # the .ckpt used to fall back to weights_only=False
        path = plant(tmp_path / name, marker, as_checkpoint)
        with pytest.raises(UserError) as err:
            load_backbone("resnet18", 4, path)
        refused(err, path)
    assert not marker.exists()


def test_backbone_checkpoint_of_the_activation_cache(tmp_path, marker):
    from helpers.tiny_images import TinyImages, save_random_backbone, tiny_activation_dm

    good = save_random_backbone(tmp_path / "r18.pth", "resnet18", 4)
    evil = plant(tmp_path / "mb.ckpt", marker, as_checkpoint)
    dm = tiny_activation_dm(tmp_path / "cache", {"r18": good, "mb": evil}, images=TinyImages(n_train=16, n_test=8,
                                                                                               val_size=4))
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    refused(err, evil)
    assert not marker.exists()


def test_pretrained_weights_planted_in_the_hub_cache(tmp_path, marker, monkeypatch):
    """torchvision loads its cached weights with weights_only=False; ours forces weights_only."""
    from components.backbones import build_backbone

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    path = plant(hub / "checkpoints" / "resnet18-f37072fd.pth", marker, lambda o: {"conv1.weight": o})
    with pytest.raises(UserError) as err:
        build_backbone("resnet18", 10, pretrained=True)
    refused(err, path)
    assert not marker.exists()
    import os
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the override does not leak


def test_universality_checkpoints(tmp_path, marker):
    from analysis.universality.inputs import load_system

    for kind in ("usae", "independent"):
        path = plant(tmp_path / f"{kind}.ckpt", marker, as_checkpoint)
        with pytest.raises(UserError) as err:
            load_system(path, kind)
        assert refused(err, path).startswith(f"{kind}_checkpoint ")
    assert not marker.exists()


def test_universality_checkpoint_naming_foreign_code_is_refused(tmp_path):
    """A weights-only-clean checkpoint can still name a class/instantiator Lightning would import."""
    from analysis.universality.inputs import load_system

    hparams = {"feature_dims": {"a": 4}, "_class_path": "evil_module.UniversalSAE",
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, tmp_path / "a.ckpt")
    with pytest.raises(UserError, match="names code from outside this project"):
        load_system(tmp_path / "a.ckpt", "usae")
    hparams = {**hparams, "_class_path": "lightning_modules.universal_sae.UniversalSAE",
               "_instantiator": "builtins.exec"}
    torch.save({"state_dict": {}, "hyper_parameters": hparams}, tmp_path / "b.ckpt")
    with pytest.raises(UserError, match="builtins.exec"):
        load_system(tmp_path / "b.ckpt", "usae")


def test_universality_analysis_command_line(tmp_path, marker, capsys, repo_root, monkeypatch):
    import analyze

    monkeypatch.chdir(tmp_path)
    path = plant(tmp_path / "evil.ckpt", marker, as_checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: analyze.main([
            "--config", str(repo_root / "configs/fashion_mnist/analysis_universality.yaml"),
            "--analysis.init_args.inputs.usae_checkpoint", str(path),
            "--analysis.init_args.output_dir", str(tmp_path / "report")]))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a plain weights/checkpoint file" in errors[0]
    assert not marker.exists() and not (tmp_path / "report").exists()


def test_ksparse_encoder_path_probe_and_analysis(tmp_path, marker):
    from analysis.ksparse import load_probed_autoencoder
    from components.ksparse import read_state_dict
    from lightning_modules.linear_probe import LinearProbe

    evil = plant(tmp_path / "ksae" / "encoder.pth", marker, lambda o: {"weight": torch.zeros(4, 4), "k": o})
    for loader in (lambda: read_state_dict(evil, "net.encoder.", "model.encoder_path"),
                   lambda: LinearProbe(encoder_path=str(evil))):
        with pytest.raises(UserError) as err:
            loader()
        refused(err, evil)
    plant(tmp_path / "ksae" / "decoder.pth", marker)
    plant(tmp_path / "probe" / "classifier.pth", marker)
    with pytest.raises(UserError) as err:
        load_probed_autoencoder(tmp_path / "ksae", tmp_path / "probe")
    refused(err, evil)
    assert not marker.exists()


def test_export_weights_best_checkpoint(tmp_path, marker):
    from callbacks.export_weights import ExportWeights

    evil = plant(tmp_path / "best.ckpt", marker, as_checkpoint)
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    checkpoint.best_model_path = str(evil)
    trainer = SimpleNamespace(checkpoint_callback=checkpoint, is_global_zero=True, log_dir=str(tmp_path / "run"))
    with pytest.raises(UserError) as err:
        ExportWeights({"encoder.pth": "net"}).on_fit_end(trainer, torch.nn.Module())
    refused(err, evil)
    assert not marker.exists() and not (tmp_path / "run").exists()


def _forge_entry(cache, name: str, split: str, payload: Path, key: dict) -> None:
    """Put ``payload`` at the entry's tensor path with a manifest whose size and SHA-256 match it."""
    tensor_path, manifest_path = cache.paths(name, split)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    tensor_path.write_bytes(payload.read_bytes())
    manifest_path.write_text(json.dumps({
        "format": 1, "key": key, "file": tensor_path.name, "rows": 4, "dim": 3, "shape": [4, 3],
        "dtype": "float32", "bytes": tensor_path.stat().st_size,
        "sha256": hashlib.sha256(tensor_path.read_bytes()).hexdigest(), "stats": None}))


def test_activation_cache_tensor_file(tmp_path, marker):
    from features.activation_cache import ActivationCache

    cache = ActivationCache(tmp_path / "cache", verbose=False)
    _forge_entry(cache, "net", "test", plant(tmp_path / "evil.pt", marker), {"arch": "resnet18"})
    with pytest.raises(UserError) as err:
        cache.load("net", "test")
    refused(err, cache.paths("net", "test")[0])
    assert not marker.exists()


@pytest.mark.parametrize("payload, expected", [
    (b"just some text", "not a readable PyTorch weights file"),
    ("dict", "holds a dict, not a tensor"),
    ("int8", "holds a (4, 3) torch.int8 tensor"),
])
def test_forged_cache_manifest_pointing_at_a_non_tensor_file(tmp_path, payload, expected):
    from features.activation_cache import ActivationCache

    source = tmp_path / "payload"
    if payload == "dict":
        torch.save({"a": torch.zeros(4, 3)}, source)
    elif payload == "int8":
        torch.save(torch.zeros(4, 3, dtype=torch.int8), source)
    else:
        source.write_bytes(payload)
    cache = ActivationCache(tmp_path / "cache", verbose=False)
    _forge_entry(cache, "net", "test", source, {"arch": "resnet18"})
    with pytest.raises(UserError, match=re.escape(expected)) as err:
        cache.load("net", "test")
    assert "\n" not in str(err.value) and str(cache.paths("net", "test")[0]) in str(err.value)


def test_forged_standardize_statistics_are_one_line():
    from features.activation_cache import FeatureNormalizer

    for stats in (None, {"mean": [0.0], "std": [0.0]}, {"mean": "x", "std": [1.0]},
                  {"mean": [0.0, 1.0], "std": [1.0]}):
        with pytest.raises(UserError, match="standardisation statistics"):
            FeatureNormalizer.from_manifest({"key": {"normalization": "standardize"}, "stats": stats}, "m.json")


def test_cifar100_pickles_unverified_copy(tmp_path, marker):
    from datamodules.cifar100 import CIFAR100DataModule
    from helpers.cifar100_fixture import write_tiny_cifar100

    root = write_tiny_cifar100(tmp_path / "data", n_train=20, n_test=10)
    dm = CIFAR100DataModule(data_dir=str(root), val_size=4, verify_checksums=False, download=False,
                            image_size=None)
    assert dm.split("train")[0].shape == (16, 3, 32, 32) and len(dm.class_names) == 100
    with open(root / "cifar-100-python" / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": Planted(marker)}, fh, protocol=2)
    dm = CIFAR100DataModule(data_dir=str(root), val_size=4, verify_checksums=False, download=False)
    with pytest.raises(UserError, match="could run code") as err:
        dm.setup()
    assert "\n" not in str(err.value) and "meta" in str(err.value)
    assert not marker.exists()


def test_load_numpy_pickle_allows_arrays_only(tmp_path, marker):
    import numpy as np

    (tmp_path / "ok").write_bytes(pickle.dumps({"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, protocol=2))
    assert load_numpy_pickle(tmp_path / "ok", "f")["data"].tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "evil").write_bytes(pickle.dumps([Planted(marker)], protocol=4))
    with pytest.raises(UserError, match="pathlib"):
        load_numpy_pickle(tmp_path / "evil", "f")
    assert not marker.exists()


# ----- this project's own checkpoints load with weights_only=True --------------------------------
def test_checkpoints_of_a_real_fit_load_with_weights_only(tmp_path):
    """A fit with the callbacks train.py adds (RNG state, atomic IO, FiniteGuard, ModelCheckpoint,
    EarlyStopping) writes checkpoints that load_weights reads and load_backbone uses."""
    from lightning.pytorch.callbacks import EarlyStopping

    from common.checkpoint_io import AtomicCheckpointIO
    from common.finite_guard import FiniteGuard
    from common.rng_state import RNGStateInCheckpoint
    from components.backbones import load_backbone
    from helpers.tiny_images import TinyImages
    from lightning_modules.backbone_classifier import BackboneClassifier

    L.seed_everything(0, workers=True)
    model = BackboneClassifier(arch="resnet18", num_classes=4, pretrained=False, lr=1e-3,
                               scheduler="none", channels_last=False)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/loss", save_last=True)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_train_batches=2,
                        plugins=[AtomicCheckpointIO()], num_sanity_val_steps=0,
                        callbacks=[checkpoint, EarlyStopping("val/loss"), RNGStateInCheckpoint(), FiniteGuard()])
    trainer.fit(model, datamodule=TinyImages(n_train=40, n_test=8, val_size=8, batch_size=8, side=16))
    paths = list((tmp_path / "checkpoints").glob("*.ckpt"))
    assert len(paths) == 2
    for path in paths:
        loaded = load_weights(path, "checkpoint")
        assert {"state_dict", "callbacks", "loops", "optimizer_states", "hyper_parameters"} <= set(loaded)
        net = load_backbone("resnet18", 4, path)
        torch.testing.assert_close(net.fc.weight, model.net.fc.weight)


def test_no_other_unrestricted_load_in_the_code(repo_root):
    """Every load goes through common.safe_load: no raw torch.load / pickle.load / allow_pickle elsewhere."""
    import re as regex

    pattern = regex.compile(r"torch\.load\(|pickle\.loads?\(|allow_pickle\s*=\s*True|weights_only\s*=\s*False")
    offenders = []
    for path in repo_root.rglob("*.py"):
        rel = path.relative_to(repo_root)
        if rel.parts[0] in ("tests", "runs", "data") or rel.parts[0].startswith(".") \
                or "site-packages" in rel.parts or rel.as_posix() == "common/safe_load.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and "``" not in code:
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, offenders
