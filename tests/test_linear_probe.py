"""The linear probe: frozen encoder, codes extracted once, pixel baseline, artifacts, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from common.errors import UserError
from datamodules.fashion_mnist import FashionMNISTDataModule
from components.sparse_coder import SparseCoder, SparseCoderConfig
from datamodules.feature_data import FeatureData
from lightning_modules.linear_probe import LinearProbe, classifier_from_state


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    """A small random k-sparse encoder saved as encoder.pth (784 → 64, k = 8)."""
    torch.manual_seed(0)
    net = SparseCoder(784, SparseCoderConfig(n_latents=64, k=8, pre_bias=True, decoder_bias=True, sparse_max_density=1.0, select_dtype="float32"))
    net.init_pre_bias_(torch.full((784,), 0.3))
    path = tmp_path_factory.mktemp("enc") / "encoder.pth"
    torch.save(net.encoder.state_dict(), path)
    return path


def small_data(repo_root: Path) -> FeatureData:
    images = FashionMNISTDataModule(data_dir=str(repo_root / "data"), train_subset=1024, val_size=512)
    return FeatureData(images, batch_size=128, seed=0)


def fit(probe: LinearProbe, data: FeatureData, tmp_path: Path, epochs: int = 2) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(probe, datamodule=data)
    return trainer


def test_encoder_stays_frozen_and_codes_are_extracted_once(encoder_file, repo_root, tmp_path):
    probe = LinearProbe(encoder_path=str(encoder_file))
    before = {k: v.clone() for k, v in probe.encoder.state_dict().items()}
    classifier_before = probe.classifier.weight.clone()
    calls = []
    probe.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    data = small_data(repo_root)
    fit(probe, data, tmp_path, epochs=3)
    after = probe.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in probe.encoder.parameters())
    assert not torch.equal(classifier_before, probe.classifier.weight)  # the classifier did learn
    # train (1024) + val (512) images encoded once each, whatever the number of epochs
    assert sum(calls) == 1024 + 512
    features, _ = data.features("train")
    assert features.shape == (1024, 64) and ((features > 0).sum(1) <= 8).all()


def test_encode_k_widens_the_codes_and_leaves_the_encoder_weights(encoder_file, repo_root):
    """Makhzani & Frey's αk encoding: the probe's codes keep ``encode_k`` units, same weights."""
    stored = torch.load(encoder_file, weights_only=True)
    probe = LinearProbe(encoder_path=str(encoder_file), encode_k=24)
    assert torch.equal(probe.encoder.weight, stored["weight"]) and int(stored["k"]) == 8
    data = small_data(repo_root)
    data.set_featurizer(probe.featurize)
    active = (data.features("val")[0] > 0).sum(1)
    assert active.max() <= 24 and active.max() > 8
    assert int(torch.load(encoder_file, weights_only=True)["k"]) == 8  # the file is untouched


@pytest.mark.parametrize("encode_k", [0, 65])
def test_encode_k_outside_the_code_is_a_user_error(encoder_file, encode_k):
    with pytest.raises(UserError, match=f"model.encode_k={encode_k} must be between 1 and the encoder's 64"):
        LinearProbe(encoder_path=str(encoder_file), encode_k=encode_k)


def test_encode_k_without_an_encoder_is_a_user_error():
    with pytest.raises(UserError, match="needs an encoder"):
        LinearProbe(encoder_path=None, encode_k=150)


def test_pixel_probe_learns_and_reports_accuracy(repo_root, tmp_path):
    probe = LinearProbe(encoder_path=None, lr=0.01)
    data = small_data(repo_root)
    trainer = fit(probe, data, tmp_path, epochs=2)
    assert probe.classifier.in_features == 784
    result = trainer.test(probe, datamodule=data, verbose=False)[0]
    assert result["test/acc"] > 0.6  # 10 classes: chance is 0.1


def test_probe_needs_feature_data(encoder_file, repo_root, tmp_path):
    images = FashionMNISTDataModule(data_dir=str(repo_root / "data"), train_subset=256, val_size=128)
    with pytest.raises(UserError, match="FeatureData"):
        fit(LinearProbe(encoder_path=str(encoder_file)), images, tmp_path)


def test_bad_encoder_files_are_one_line_user_errors(encoder_file, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        LinearProbe(encoder_path=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="encodes 784 inputs but the data has 100"):
        LinearProbe(encoder_path=str(encoder_file), input_dim=100)
    torch.save({"state_dict": {"backbone.fc.weight": torch.zeros(3, 3)}, "epoch": 1}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="checkpoint of another model"):
        LinearProbe(encoder_path=str(tmp_path / "other.ckpt"))
    torch.save({"weight": torch.zeros(10, 64), "bias": torch.zeros(10)}, tmp_path / "classifier.pth")
    with pytest.raises(UserError, match="another model|use a matching encoder"):
        LinearProbe(encoder_path=str(tmp_path / "classifier.pth"))
    for error in (UserError("x"),):
        assert "\n" not in str(error)


def test_classifier_from_state_checks_the_code_size():
    linear = torch.nn.Linear(64, 10)
    assert classifier_from_state(linear.state_dict(), "c", 64).out_features == 10
    with pytest.raises(UserError, match="classifies 64 features but the codes have 32"):
        classifier_from_state(linear.state_dict(), "c", 32)


def test_probe_config_end_to_end_exports_classifier(encoder_file, repo_root, tmp_path):
    args = [sys.executable, "train.py", "--config", "configs/fashion_mnist/probe.yaml",
            "--model.init_args.encoder_path", str(encoder_file), "--model.init_args.encode_k", "16",
            "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--data.init_args.images.init_args.train_subset", "1024",
            "--data.init_args.images.init_args.val_size", "512", "--run.root", str(tmp_path)]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "fashion_mnist_probe" / "main"
    classifier = torch.load(run / "classifier.pth", weights_only=True)
    assert classifier["weight"].shape == (10, 64) and classifier["bias"].shape == (10,)
    assert 0.0 < json.loads((run / "results.json").read_text())["test"]["test/acc"] <= 1.0


def probe_cli_error(repo_root: Path, tmp_path: Path, *overrides: str) -> str:
    """Run ``train.py`` with probe.yaml and ``overrides``; assert it exits 2 without a traceback and
    writes no run folder; return its last stderr line."""
    args = [sys.executable, "train.py", "--config", "configs/fashion_mnist/probe.yaml", *overrides,
            "--run.root", str(tmp_path / "runs")]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "fashion_mnist_probe" / "main").exists()
    return done.stderr.strip().splitlines()[-1]


def test_missing_encoder_from_the_command_line_is_one_line_and_writes_nothing(repo_root, tmp_path):
    last = probe_cli_error(repo_root, tmp_path, "--model.init_args.encoder_path",
                           str(tmp_path / "nope" / "encoder.pth"))
    assert last.startswith("error: ") and "does not exist" in last


def test_encode_k_too_large_from_the_command_line_is_one_line_and_writes_nothing(encoder_file, repo_root,
                                                                                 tmp_path):
    last = probe_cli_error(repo_root, tmp_path, "--model.init_args.encoder_path", str(encoder_file),
                           "--model.init_args.encode_k", "999")
    assert last.startswith("error: ") and "model.encode_k=999 must be between 1 and the encoder's 64" in last
