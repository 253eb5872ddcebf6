"""The linear probe: L-BFGS with the L2 weight chosen on validation, Adam, frozen encoder, codes
extracted once, pixel baseline, artifacts, bad input."""

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
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_modules.linear_probe import LBFGSOptions, LinearProbe, classifier_from_state


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
    probe = LinearProbe(encoder_path=str(encoder_file), solver="adam")
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


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_pixel_probe_learns_and_reports_accuracy(repo_root, tmp_path, solver):
    probe = LinearProbe(encoder_path=None, lr=0.01, solver=solver, lbfgs=LBFGSOptions(l2_grid=(1e-3, 1e-4), max_iter=30))
    data = small_data(repo_root)
    trainer = fit(probe, data, tmp_path, epochs=2)
    assert probe.classifier.in_features == 784
    result = trainer.test(probe, datamodule=data, verbose=False)[0]
    assert result["test/acc"] > 0.6  # 10 classes: chance is 0.1


class PresetFeatures(FeatureData):
    """A FeatureData whose splits are given tensors (no images, no featurizer)."""

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__(images=None, batch_size=8)
        self.splits = splits

    def prepare_data(self) -> None: ...

    def setup(self, stage=None) -> None: ...

    def set_featurizer(self, featurizer, full_batch: bool = False) -> None:
        self.full_batch = full_batch

    def features(self, split, device="cpu"):
        return self.splits[split]


def test_lbfgs_separates_a_tiny_set_well_above_chance(tmp_path):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 6, generator=generator) * 3

    def blobs(n):
        labels = torch.arange(4).repeat_interleave(n)
        return centres[labels] + torch.randn(4 * n, 6, generator=generator), labels

    data = PresetFeatures({"train": blobs(30), "val": blobs(20), "test": blobs(20)})
    probe = LinearProbe(encoder_path=None, input_dim=6, num_classes=4, solver="lbfgs", lbfgs=LBFGSOptions(l2_grid=(1e-2, 1e-3)))
    trainer = fit(probe, data, tmp_path, epochs=10)
    assert trainer.current_epoch == 2  # one epoch per L2 weight, then it stops
    assert trainer.test(probe, datamodule=data, verbose=False)[0]["test/acc"] > 0.9  # chance: 0.25


def test_the_l2_weight_is_chosen_on_validation_not_on_test(tmp_path):
    """Train and test follow x0 > 0 ⇒ class 1 (70% class 1). The validation images all have x0 < 0
    and class 1, so the strong weight (W ≈ 0: always the majority class) is best on validation
    while the weak one is best on test. The tested classifier must be the strong one."""
    generator = torch.Generator().manual_seed(0)

    def pattern(n):
        x = torch.randn(n, 2, generator=generator)
        x[:, 0] = torch.where(torch.rand(n, generator=generator) < 0.7, x[:, 0].abs() + 0.5, -x[:, 0].abs() - 0.5)
        return x, (x[:, 0] > 0).long()

    val_x = torch.randn(50, 2, generator=generator)
    val_x[:, 0] = -val_x[:, 0].abs() - 0.5
    data = PresetFeatures({"train": pattern(200), "val": (val_x, torch.ones(50, dtype=torch.long)),
                           "test": pattern(200)})
    strong, weak = 100.0, 1e-4
    probe = LinearProbe(encoder_path=None, input_dim=2, num_classes=2, solver="lbfgs", lbfgs=LBFGSOptions(l2_grid=(strong, weak)))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, callbacks=[checkpoint],
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(probe, datamodule=data)
    last = trainer.test(probe, datamodule=data, verbose=False)[0]  # the weak weight, fitted last
    assert last["test/l2"] == pytest.approx(weak) and last["test/acc"] > 0.95  # it would win on test
    tested = trainer.test(probe, datamodule=data, ckpt_path="best", verbose=False)[0]
    assert float(checkpoint.best_model_score) == 1.0
    assert tested["test/l2"] == pytest.approx(strong) and tested["test/acc"] < 0.8  # the majority class only


def test_too_few_epochs_for_the_l2_grid_is_a_user_error(tmp_path):
    data = PresetFeatures({s: (torch.randn(8, 2), torch.arange(8) % 2) for s in ("train", "val", "test")})
    probe = LinearProbe(encoder_path=None, input_dim=2, num_classes=2, solver="lbfgs", lbfgs=LBFGSOptions(l2_grid=(1e-2, 1e-3, 1e-4)))
    with pytest.raises(UserError, match="trainer.max_epochs=2 is below the 3 L2 weights"):
        fit(probe, data, tmp_path, epochs=2)
    with pytest.raises(UserError, match="l2_grid"):
        LinearProbe(encoder_path=None, solver="lbfgs", lbfgs=LBFGSOptions(l2_grid=()))
    with pytest.raises(UserError, match="must be 'lbfgs' or 'adam'"):
        LinearProbe(encoder_path=None, solver="sgd")


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
            "--model.init_args.solver", "lbfgs", "--model.init_args.lbfgs.l2_grid", "[0.001, 0.0001]", "--model.init_args.lbfgs.max_iter", "20",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--data.init_args.images.init_args.train_subset", "1024",
            "--data.init_args.images.init_args.val_size", "512", "--run.root", str(tmp_path)]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "fashion_mnist_probe" / "main"
    classifier = torch.load(run / "classifier.pth", weights_only=True)
    assert classifier["weight"].shape == (10, 64) and classifier["bias"].shape == (10,)
    test = json.loads((run / "results.json").read_text())["test"]
    assert 0.0 < test["test/acc"] <= 1.0 and test["test/l2"] in (pytest.approx(1e-3), pytest.approx(1e-4))
    metrics = (run / "metrics.csv").read_text()
    assert "train/l2" in metrics and "val/acc" in metrics


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
