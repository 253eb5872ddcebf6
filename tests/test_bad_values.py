"""Invalid values are one-line errors up front; a non-finite loss/metric stops the run; strict JSON;
a full disk while saving changes nothing; atomically written files and report folders get the umask."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

import common.io
from common.errors import UserError, run_cli
from common.finite_guard import FiniteGuard
from common.io import atomic_torch_save, atomic_write_json, atomic_write_text, shared_mkdtemp
from common.validate import check_trainer_options, finite, in_range, non_negative, positive
from datamodules.cifar100 import CIFAR100DataModule
from datamodules.fashion_mnist import FashionMNISTDataModule
from helpers.tiny_images import TinyImages

ROOT = Path(__file__).resolve().parents[1]
KSAE = str(ROOT / "configs/fashion_mnist/ksae.yaml")


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ----- common.validate ---------------------------------------------------------------------------
def test_validate_checks_pass_good_values_and_name_bad_ones():
    assert positive("model.lr", 1e-3) == 1e-3 and positive("data.std", [0.2, 0.3]) == [0.2, 0.3]
    assert non_negative("x", 0) == 0 and in_range("p", 0.5, 0.0, 1.0) == 0.5 and finite("m", [1, 2]) == [1, 2]
    for check, value, expected in [
        (lambda v: positive("model.lr", v), -1.0, "model.lr must be > 0, got -1.0"),
        (lambda v: positive("model.lr", v), 0, "model.lr must be > 0, got 0"),
        (lambda v: positive("model.lr", v), math.nan, "model.lr must be a finite number"),
        (lambda v: positive("data.std", v), [0.5, 0.0], r"data.std must be > 0, got \[0.5, 0.0\]"),
        (lambda v: non_negative("x", v), -0.1, "x must be >= 0"),
        (lambda v: finite("x", v), math.inf, "x must be a finite number"),
        (lambda v: finite("x", v), "abc", "x must be a finite number"),
        (lambda v: positive("x", v), True, "x must be a finite number"),
        (lambda v: in_range("p", v, 0.0, 1.0), 1.5, r"p must be in \[0.0, 1.0\], got 1.5"),
        (lambda v: in_range("p", v, 0.0, 1.0, low_open=True), 0.0, r"p must be in \(0.0, 1.0\]"),
    ]:
        with pytest.raises(UserError, match=expected) as err:
            check(value)
        one_line(err)


@pytest.mark.parametrize("options, expected", [
    ({"max_epochs": -3}, "trainer.max_epochs must be a positive integer or -1"),
    ({"max_epochs": 0}, "trainer.max_epochs must be a positive integer or -1"),
    ({"max_steps": -5}, "trainer.max_steps must be a positive integer or -1"),
    ({"max_steps": 0}, "trainer.max_steps"),
    ({"min_epochs": -2}, "trainer.min_epochs must be an integer >= 0"),
    ({"min_epochs": 5, "max_epochs": 2}, "must not exceed trainer.max_epochs"),
    ({"accumulate_grad_batches": 0}, "trainer.accumulate_grad_batches must be an integer >= 1"),
    ({"log_every_n_steps": 0}, "trainer.log_every_n_steps"),
    ({"check_val_every_n_epoch": 0}, "trainer.check_val_every_n_epoch"),
    ({"num_sanity_val_steps": -2}, "trainer.num_sanity_val_steps"),
    ({"gradient_clip_val": -1.0}, "trainer.gradient_clip_val must be >= 0"),
    ({"limit_train_batches": 0}, "trainer.limit_train_batches must be a number of batches >= 1"),
    ({"limit_train_batches": -1}, "trainer.limit_train_batches"),
    ({"limit_val_batches": 1.5}, r"trainer.limit_val_batches must be in \[0.0, 1.0\]"),
    ({"val_check_interval": 0.0}, "trainer.val_check_interval"),
])
def test_trainer_options_that_make_no_sense(options, expected):
    with pytest.raises(UserError, match=expected) as err:
        check_trainer_options(options)
    one_line(err)


def test_trainer_options_that_make_sense_pass():
    check_trainer_options(None)
    check_trainer_options({"max_epochs": -1, "max_steps": -1, "min_epochs": None, "limit_val_batches": 0,
                           "limit_train_batches": 0.25, "val_check_interval": 1.0, "num_sanity_val_steps": -1,
                           "gradient_clip_val": 0, "accumulate_grad_batches": 2, "log_every_n_steps": 1})
    check_trainer_options({"max_epochs": 8, "min_epochs": 8, "limit_test_batches": 3})


# ----- datamodule values, up front ---------------------------------------------------------------
@pytest.mark.parametrize("options, expected", [
    ({"train_subset": 0}, "data.train_subset must be an integer >= 1, got 0"),
    ({"train_subset": -5}, "data.train_subset must be an integer >= 1, got -5"),
    ({"batch_size": 0}, "data.batch_size must be an integer >= 1, got 0"),
    ({"val_size": 0}, "data.val_size must be an integer >= 1, got 0"),
    ({"val_size": -1}, "data.val_size"),
    ({"mean": [0.5], "std": [0.0]}, r"data.std must be > 0, got \[0.0\]"),
    ({"mean": [0.5], "std": [-0.3]}, "data.std must be > 0"),
    ({"mean": [math.nan], "std": [0.3]}, "data.mean must be a finite number"),
    ({"mean": [0.5], "std": [math.inf]}, "data.std must be a finite number"),
    ({"mean": [0.5]}, "give both data.mean and data.std"),
    ({"mean": [0.5, 0.5], "std": [0.3, 0.3]}, "data.mean needs 1 values"),
    ({"image_size": 0}, "data.image_size must be an integer >= 1"),
    ({"rotation_degrees": -10.0}, r"data.rotation_degrees must be in \[0.0, 180.0\]"),
])
def test_fashion_mnist_invalid_values_are_one_line(tmp_path, options, expected):
    with pytest.raises(UserError, match=expected) as err:
        FashionMNISTDataModule(data_dir=str(tmp_path / "never_read"), **options)
    one_line(err)
    assert not (tmp_path / "never_read").exists()


def test_cifar100_invalid_values_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"data.std must be > 0, got \[0.2, 0.0, 0.2\]"):
        CIFAR100DataModule(data_dir=str(tmp_path), std=[0.2, 0.0, 0.2])
    with pytest.raises(UserError, match="data.train_subset"):
        CIFAR100DataModule(data_dir=str(tmp_path), train_subset=0)


@pytest.mark.parametrize("options, expected", [
    ({"val_size": 40}, "data.val_size=40 leaves no training images: the training set has 40"),
    ({"val_size": 500}, "data.val_size=500 leaves no training images"),
    ({"val_size": 8, "train_subset": 33}, "data.train_subset=33 is more than the 32 training images"),
])
def test_sizes_larger_than_the_data_are_one_line_at_setup(options, expected):
    dm = TinyImages(n_train=40, n_test=8, **options)
    with pytest.raises(UserError, match=expected) as err:
        dm.setup()
    one_line(err)


def test_sizes_that_fit_still_split():
    dm = TinyImages(n_train=40, n_test=8, val_size=8, train_subset=32)
    assert dm.split("train")[0].shape[0] == 32 and dm.split("val")[0].shape[0] == 8


# ----- NaN weights given to a model that loads them ------------------------------------------------
def test_nan_encoder_weights_given_to_the_probe(tmp_path):
    from components.ksparse import TopKEncoder
    from lightning_modules.linear_probe import LinearProbe

    encoder = TopKEncoder(784, 32, 4)
    state = encoder.state_dict()
    state["weight"][3, 5] = math.nan
    torch.save(state, tmp_path / "encoder.pth")
    with pytest.raises(UserError, match=r"'weight' holds 1 NaN/inf values; the model diverged") as err:
        LinearProbe(encoder_path=str(tmp_path / "encoder.pth"))
    assert str(tmp_path / "encoder.pth") in one_line(err)
    state["weight"][3, 5] = 0.0
    torch.save(state, tmp_path / "encoder.pth")
    assert LinearProbe(encoder_path=str(tmp_path / "encoder.pth")).encoder.n_units == 32


def test_nan_backbone_checkpoint(tmp_path):
    from components.backbones import build_backbone, load_backbone

    state = build_backbone("resnet18", 4).state_dict()
    state["fc.bias"][0] = math.inf
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(UserError, match="'fc.bias' holds 1 NaN/inf values") as err:
        load_backbone("resnet18", 4, tmp_path / "r18.pth")
    one_line(err)


# ----- FiniteGuard ---------------------------------------------------------------------------------
class Diverging(L.LightningModule):
    """A linear regression whose loss becomes ``bad`` from training batch ``at`` on (or in validation)."""

    def __init__(self, at: int = 3, bad: float = math.nan, in_validation: bool = False) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.at, self.bad, self.in_validation = at, bad, in_validation
        self.batches = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = (self.net(x) - y).square().mean()
        self.batches += 1
        if not self.in_validation and self.batches > self.at:
            loss = loss * self.bad
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = (self.net(x) - y).square().mean()
        self.log("val/loss", loss * self.bad if self.in_validation else loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(model: L.LightningModule, guard: FiniteGuard, epochs: int = 3) -> L.Trainer:
    x = torch.randn(64, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        log_every_n_steps=1, callbacks=[guard])
    trainer.fit(model, data, data)
    return trainer


def test_finite_guard_stops_at_a_nan_training_loss():
    with pytest.raises(UserError) as err:
        _fit(Diverging(at=3), FiniteGuard(every_n_batches=1))
    message = one_line(err)
    assert message.startswith("training loss is nan at epoch 0, batch 3, step 4")
    assert "lower the learning rate" in message


def test_finite_guard_checks_every_n_batches_and_at_the_epoch_end():
    with pytest.raises(UserError, match="training loss is (inf|nan) at epoch 1, batch 3, step 12") as err:
        _fit(Diverging(at=9, bad=math.inf), FiniteGuard(every_n_batches=4))  # bad from batch 9 (epoch 1, batch 1)
    one_line(err)


def test_finite_guard_stops_at_a_nan_validation_metric_and_can_ignore_one():
    with pytest.raises(UserError, match="metric 'val/loss' is nan at epoch 0") as err:
        _fit(Diverging(in_validation=True), FiniteGuard())
    one_line(err)
    trainer = _fit(Diverging(in_validation=True), FiniteGuard(ignore=["val/*"]), epochs=1)
    assert math.isnan(float(trainer.callback_metrics["val/loss"]))


def test_finite_guard_lets_a_healthy_run_finish():
    trainer = _fit(Diverging(at=10**9), FiniteGuard(every_n_batches=1), epochs=2)
    assert trainer.current_epoch == 2 and math.isfinite(float(trainer.callback_metrics["val/loss"]))


# ----- through train.py: one line, exit 2, nothing written ------------------------------------------
def run_train(args: list[str], capsys) -> tuple[int, str]:
    import train

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(args))
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-1500:]
    return exit_info.value.code, errors[0]


@pytest.mark.parametrize("extra, expected", [
    (["--trainer.max_epochs", "-3"], "trainer.max_epochs must be a positive integer or -1 (no limit)"),
    (["--trainer.max_steps", "-7"], "trainer.max_steps must be a positive integer or -1 (no limit)"),
    (["--data.init_args.train_subset", "0"], "data.train_subset must be an integer >= 1, got 0"),
    (["--data.init_args.batch_size", "0"], "data.batch_size must be an integer >= 1, got 0"),
    (["--data.init_args.mean", "[0.5]", "--data.init_args.std", "[0.0]"], "data.std must be > 0"),
])
def test_invalid_values_from_the_command_line(tmp_path, capsys, extra, expected):
    code, error = run_train(["--config", KSAE, "--run.root", str(tmp_path / "runs"), *extra], capsys)
    assert code == 2 and expected in error
    assert not (tmp_path / "runs").exists()


def test_val_size_larger_than_the_data_from_the_command_line(tmp_path, capsys, fashion_data_dir):
    code, error = run_train(["--config", KSAE, "--run.root", str(tmp_path / "runs"), "--run.version", "v",
                             "--data.init_args.data_dir", str(fashion_data_dir),
                             "--data.init_args.val_size", "70000"], capsys)
    assert code == 2 and "data.val_size=70000 leaves no training images: the training set has 60000" in error
    assert not (tmp_path / "runs" / "fashion_mnist_ksae" / "v").exists()


def test_a_diverging_run_stops_with_one_line_and_no_results(tmp_path, capsys, fashion_data_dir):
    """A tiny positive std (denormal) is a valid number but makes every pixel infinite."""
    run = tmp_path / "runs" / "fashion_mnist_ksae" / "v"
    code, error = run_train(["--config", KSAE, "--run.root", str(tmp_path / "runs"), "--run.version", "v",
                             "--data.init_args.data_dir", str(fashion_data_dir),
                             "--data.init_args.train_subset", "256", "--data.init_args.val_size", "256",
                             "--data.init_args.mean", "[0.5]", "--data.init_args.std", "[1e-45]",
                             "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                             "--trainer.enable_model_summary", "false"], capsys)
    assert code == 2 and ("is nan" in error or "is inf" in error)
    assert "at epoch 0" in error and "lower the learning rate" in error
    assert not (run / "results.json").exists() and not (run / "encoder.pth").exists()


# ----- strict JSON -----------------------------------------------------------------------------------
def test_json_with_nan_is_refused_naming_the_file_and_key(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"old": 1}\n')
    with pytest.raises(UserError) as err:
        atomic_write_json(path, {"best_checkpoint": "x", "test": {"test/acc": 0.5, "test/loss": math.nan}})
    message = one_line(err)
    assert str(path) in message and "'test.test/loss' is nan" in message
    with pytest.raises(UserError, match=r"'curve\[2\]' is inf"):
        atomic_write_json(path, {"curve": [1.0, 2.0, math.inf]})
    assert path.read_text() == '{"old": 1}\n' and os.listdir(tmp_path) == ["results.json"]
    atomic_write_json(path, {"a": 1.5, "b": [None, 2]})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [None, 2]}


# ----- disk full while saving --------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", ["json", "text", "torch"])
def test_disk_full_while_saving_is_one_line_and_changes_nothing(tmp_path, monkeypatch, writer):
    path = tmp_path / "out" / "file"
    path.parent.mkdir()
    path.write_bytes(b"previous content")
    if writer == "torch":
        def half_then_full(obj, target):  # torch's zip writer reports ENOSPC as a RuntimeError
            Path(target).write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        monkeypatch.setattr(common.io.torch, "save", half_then_full)
        monkeypatch.setattr(common.io.shutil, "disk_usage", lambda folder: SimpleNamespace(free=0))
        save = lambda: atomic_torch_save({"w": torch.zeros(3)}, path)  # noqa: E731
    else:
        monkeypatch.setattr(common.io.os, "fsync", _enospc)  # the data hits the disk at fsync
        save = (lambda: atomic_write_json(path, {"a": 1})) if writer == "json" else \
            (lambda: atomic_write_text(path, "new"))
    with pytest.raises(UserError) as err:
        save()
    message = one_line(err)
    assert f"cannot write '{path}' (No space left on device)" in message and "free some disk space" in message
    assert path.read_bytes() == b"previous content"
    assert os.listdir(path.parent) == ["file"]  # no temporary file left


def test_other_errors_in_the_body_still_propagate(tmp_path):
    with pytest.raises(KeyError):
        with common.io.atomic_path(tmp_path / "x") as tmp:
            tmp.write_text("partial")
            raise KeyError("boom")
    assert os.listdir(tmp_path) == []


# ----- modes: the user's umask, not mkstemp's / mkdtemp's private ones ----------------------------------
@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775),
                                                       (0o077, 0o600, 0o700)])
def test_atomic_files_and_report_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    from analysis.universality.report import atomic_dir

    umask(mask)
    assert common.io.current_umask() == mask
    for name, write in (("a.json", lambda p: atomic_write_json(p, {"a": 1})),
                        ("b.txt", lambda p: atomic_write_text(p, "b")),
                        ("c.pt", lambda p: atomic_torch_save({"c": torch.zeros(1)}, p))):
        write(tmp_path / name)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    folder = shared_mkdtemp(prefix=".report.", dir=tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
    with atomic_dir(tmp_path / "report") as staging:
        (staging / "index.html").write_text("x")
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == dir_mode


def test_rewriting_a_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "config.yaml"
    path.write_text("a")
    path.chmod(0o640)
    atomic_write_text(path, "b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "b"


class DivergingOnRankOne(Diverging):
    """Only DDP rank 1's loss turns NaN (from batch 3): rank 0 must stop at the same batch too."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = (self.net(x) - y).square().mean()
        if self.trainer.global_rank == 1 and batch_idx >= 3:
            loss = loss * math.nan
        return loss


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_finite_guard_stops_every_ddp_process_together(monkeypatch):
    """Two gloo processes: the decision is collective, so neither waits for the other forever."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    x = torch.randn(64, 4)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[FiniteGuard(every_n_batches=1)])
    with pytest.raises(Exception) as err:
        trainer.fit(DivergingOnRankOne(), data)
    text = str(err.value)
    assert ("training loss is nan at epoch 0, batch 3" in text
            or "not finite in another process at epoch 0, batch 3" in text), text
