"""Hostile and broken inputs to train.py / analyze.py: names that leave run.root, reruns that would
damage a finished run, resumes that would lose history, bad checkpoints, configs and data files."""

from __future__ import annotations

import csv
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers.runs import KSAE_CONFIG, ROOT, only_error_line, tiny_ksae_args, train_in_process, tree_state


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv as a list of rows without their empty cells."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fashion_data_dir) -> tuple[Path, list[str]]:
    """A finished tiny k-sparse run (2 epochs, tested): its folder and the arguments that made it."""
    import train

    root = tmp_path_factory.mktemp("finished")
    args = tiny_ksae_args(root, fashion_data_dir, "main")
    train.main(args)
    return root / "fashion_mnist_ksae" / "main", args


# ----- §3 names and versions are single folder names -------------------------------------------
@pytest.mark.parametrize("key, value", [
    ("--run.name", "../../x"), ("--run.version", "../../../x"), ("--run.name", "a/b"),
    ("--run.version", ".."), ("--run.version", "."), ("--run.name", "-x"), ("--run.name", "a\\b"),
    ("--run.version", "/tmp/abs"),
])
def test_run_name_and_version_outside_the_root_are_refused(tmp_path, capsys, key, value):
    root = tmp_path / "a" / "b" / "c" / "runs"
    root.mkdir(parents=True)
    code, stderr = train_in_process(["--config", KSAE_CONFIG, "--run.root", str(root), f"{key}={value}"], capsys)
    assert code == 2
    assert key.lstrip("-") in only_error_line(stderr) and "one folder name" in stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [] and list(root.iterdir()) == []


def test_the_folder_name_rule_is_shared_with_backbone_names():
    from common.errors import UserError
    from common.run_folder import check_path_component
    from datamodules.activations import ActivationDataModule, BackboneSpec

    for good in ("main", "version_3", "resnet50.layer4", "_scratch", "v1-2"):
        assert check_path_component(good, "x") == good
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "-rf", "/abs", "a b"):
        with pytest.raises(UserError, match="one folder name"):
            check_path_component(bad, "x")
    with pytest.raises(UserError, match=r"backbones\[0\].name '\.\./evil' must be letters.*one folder name"):
        ActivationDataModule(images=None, backbones=[BackboneSpec(name="../evil", arch="resnet18")])


# ----- §2 a failing rerun never touches a finished run ------------------------------------------
def test_failing_rerun_leaves_the_finished_run_untouched(finished_run, capsys):
    run_dir, args = finished_run
    before = tree_state(run_dir)
    code, stderr = train_in_process([*args, "--data.init_args.image_size", "32"], capsys)
    assert code == 2
    assert "images have 1024 pixels but the model expects 784" in only_error_line(stderr)
    assert tree_state(run_dir) == before  # config.yaml, hparams.yaml, metrics.csv, checkpoints: as they were
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["main"]


def test_results_json_records_the_config_digest(finished_run):
    from common.run_folder import config_digest

    run_dir, _ = finished_run
    import json

    results = json.loads((run_dir / "results.json").read_text())
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert results["config_sha256"] == config_digest(saved)
    saved["data"]["init_args"]["image_size"] = 32
    assert config_digest(saved) != results["config_sha256"]


# ----- §2 a resume keeps the log history ---------------------------------------------------------
def test_resume_after_a_crash_keeps_every_epochs_rows(tmp_path, fashion_data_dir, monkeypatch):
    """Crash in epoch 2 after rows of that epoch were written, resume from last.ckpt: metrics.csv
    equals the unbroken run's, row for row (earlier rows kept, the crashed epoch's not doubled)."""
    import lightning.pytorch as pl

    import train
    from lightning_modules.ksparse_autoencoder import KSparseAutoencoder

    train.main(tiny_ksae_args(tmp_path, fashion_data_dir, "whole", epochs=3))
    whole = metric_rows(tmp_path / "fashion_mnist_ksae" / "whole")

    step = KSparseAutoencoder.training_step

    def crashes_at_step_8(self, batch, batch_idx):
        if self.global_step == 8:
            raise RuntimeError("simulated crash")
        return step(self, batch, batch_idx)

    crashed = tmp_path / "fashion_mnist_ksae" / "crashed"
    monkeypatch.setattr(KSparseAutoencoder, "training_step", crashes_at_step_8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main(tiny_ksae_args(tmp_path, fashion_data_dir, "crashed", epochs=3))
    monkeypatch.undo()
    assert {int(r["step"]) for r in metric_rows(crashed)} >= {6, 7}, "rows after the checkpoint were on disk"

    fit = pl.Trainer.fit
    seen = {}

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "fit", spy)
    train.main([*tiny_ksae_args(tmp_path, fashion_data_dir, "crashed", epochs=3),
                "--ckpt_path", str(crashed / "checkpoints" / "last.ckpt")])
    assert seen["weights_only"] is True and seen["ckpt_path"].endswith("last.ckpt")
    resumed = metric_rows(crashed)
    assert [(r["epoch"], r["step"]) for r in resumed] == [(r["epoch"], r["step"]) for r in whole]
    assert resumed == whole


def test_metric_rows_cut_by_a_kill_are_dropped(tmp_path):
    from common.run_options import read_metric_rows

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss\r\n0,0,0.5\r\n0,1,0.4\r\n1,2,0.3\r\n1,3,0.")
    rows, keys = read_metric_rows(path, before_step=3)
    assert keys == ["epoch", "step", "train/loss"] and [r["step"] for r in rows] == ["0", "1", "2"]
    assert [r["step"] for r in read_metric_rows(path, before_step=2)[0]] == ["0", "1"]


def test_resumed_log_trims_in_place_and_moves_an_unreadable_log_aside(tmp_path):
    from common.run_options import ResumableCSVLogger

    run_dir = tmp_path / "n" / "v"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,step,val/loss\r\n0,4,0.5\r\n1,9,0.4\r\n")
    logger = ResumableCSVLogger(save_dir=tmp_path, name="n", version="v")
    logger.resume_step = 6
    logger.log_metrics({"val/loss": 0.3, "epoch": 1}, step=7)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv", newline="")))
    assert [(r["step"], r["val/loss"]) for r in rows] == [("4", "0.5"), ("7", "0.3")]

    (run_dir / "metrics.csv").write_bytes(b"\xff\xfe garbage")
    logger = ResumableCSVLogger(save_dir=tmp_path, name="n", version="v")
    logger.resume_step = 6
    logger.log_metrics({"val/loss": 0.2}, step=8)
    assert (run_dir / "metrics.csv.corrupt-1").read_bytes() == b"\xff\xfe garbage"
    assert [r["step"] for r in csv.DictReader(open(run_dir / "metrics.csv", newline=""))] == ["8"]


# ----- §5 --ckpt_path: missing, not a checkpoint, another model's, a planted pickle -----------------
class Planted:
    """Unpickling this creates ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_checkpoint(kind: str, folder: Path) -> tuple[Path, str]:
    path = folder / f"{kind}.ckpt"
    if kind == "text":
        path.write_text("this is not a checkpoint\n")
        return path, "not a readable PyTorch"
    if kind == "other_model":
        torch.save({"state_dict": {"net.encoder.weight": torch.zeros(64, 784)}, "global_step": 3}, path)
        return path, "is a checkpoint of another model"
    if kind == "not_lightning":
        torch.save({"weights": torch.zeros(3)}, path)
        return path, "not a Lightning checkpoint"
    if kind == "planted":
        torch.save({"state_dict": {}, "payload": Planted(folder / "code_ran")}, path)
        return path, "holds Python objects"
    return path, "does not exist"


@pytest.mark.parametrize("kind", ["missing", "text", "other_model", "not_lightning", "planted"])
def test_bad_ckpt_path_is_one_line_and_runs_nothing(tmp_path, fashion_data_dir, capsys, kind):
    files = tmp_path / "files"
    files.mkdir()
    path, expected = bad_checkpoint(kind, files)
    code, stderr = train_in_process([*tiny_ksae_args(tmp_path / "runs", fashion_data_dir, "v"),
                                     "--ckpt_path", str(path)], capsys)
    assert code == 2
    error = only_error_line(stderr)
    assert expected in error and str(path) in error
    assert not (files / "code_ran").exists()
    assert not (tmp_path / "runs").exists(), "no (empty) run folder is left behind"


def test_bad_ckpt_path_with_wandb_leaves_no_empty_run_folder(tmp_path, fashion_data_dir, capsys, monkeypatch):
    """The W&B logger makes the run folder when it is built; a refused run still leaves none."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    code, stderr = train_in_process([*tiny_ksae_args(tmp_path / "runs", fashion_data_dir, "v"),
                                     "--config", str(ROOT / "configs/logger/wandb.yaml"),
                                     "--ckpt_path", str(tmp_path / "missing.ckpt")], capsys)
    assert code == 2 and "does not exist" in only_error_line(stderr)
    assert not (tmp_path / "runs" / "fashion_mnist_ksae" / "v").exists()


def test_a_planted_pickle_never_runs_through_lightnings_own_loading(tmp_path):
    """Lightning's checkpoint loading with ``weights_only=True`` (what train.py passes) refuses it too."""
    from lightning.fabric.utilities.cloud_io import _load

    path, _ = bad_checkpoint("planted", tmp_path)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        _load(path, map_location="cpu", weights_only=True)
    assert not (tmp_path / "code_ran").exists()


# ----- §5 config files that are not YAML text ------------------------------------------------------
@pytest.mark.parametrize("content, expected", [
    (bytes(range(256)) * 8, "is not text"),
    (b"model: [1,\n  trainer: {\n", "is not valid YAML at line"),
])
def test_config_file_that_is_not_yaml_is_one_line(tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    code, stderr = train_in_process(["--config", KSAE_CONFIG, "--config", str(bad),
                                     "--run.root", str(tmp_path / "runs")], capsys)
    assert code == 2
    assert expected in only_error_line(stderr) and str(bad) in stderr
    assert not (tmp_path / "runs").exists()


def test_analyze_and_build_cache_refuse_a_binary_config_in_one_line(tmp_path, capsys):
    import analyze
    import build_cache
    from common.errors import run_cli

    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 50)
    for main in (analyze.main, build_cache.main):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: main(["--config", str(bad)]))
        assert exit_info.value.code == 2
        assert "is not text" in only_error_line(capsys.readouterr().err)


# ----- §6 stderr holds only the error line --------------------------------------------------------
def test_failing_command_has_only_the_error_line_on_stderr(tmp_path):
    """The seed message and Lightning's device banner go to stdout; stderr is the one error line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    result = subprocess.run([sys.executable, "train.py", "--config", KSAE_CONFIG, "--run.root", str(tmp_path),
                             "--ckpt_path", str(tmp_path / "missing.ckpt")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [only_error_line(result.stderr)]
    assert "Seed set to 0" in result.stdout and "GPU available" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_info_logs_go_to_stdout(capsys):
    """Lightning's loggers carry a stderr StreamHandler (outside pytest, whose root handler makes
    them propagate instead); the replacement sends INFO to stdout and warnings to stderr."""
    import logging

    from common.cli import info_logs_to_stdout

    logger = logging.getLogger("test_run_folders.fake_lightning")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(logging.StreamHandler())  # what lightning/__init__.py does
    info_logs_to_stdout(names=(logger.name,))
    info_logs_to_stdout(names=(logger.name,))  # idempotent
    assert len(logger.handlers) == 1
    logger.info("Seed set to 0")
    logger.warning("a warning line")
    out, err = capsys.readouterr()
    assert out == "Seed set to 0\n" and err == "a warning line\n"


# ----- §5 Fashion-MNIST files: truncated, corrupt, wrong header ------------------------------------
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def gz_folder(tmp_path: Path) -> Path:
    """A data_dir holding the four official .gz files (copied), as a user would lay them out."""
    folder = tmp_path / "data"
    folder.mkdir()
    for gz in DEBIAN.glob("*.gz"):
        (folder / gz.name).write_bytes(gz.read_bytes())
    return folder


def leftovers(folder: Path) -> list[str]:
    raw = folder / "FashionMNIST" / "raw"
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="needs Debian's dataset-fashion-mnist")
@pytest.mark.parametrize("damage, expected", [
    ("truncated", "is truncated or not a gzip file"),
    ("not_gzip", "is truncated or not a gzip file"),
    ("other_data", "is not the official Fashion-MNIST t10k-labels-idx1-ubyte"),
])
def test_bad_gz_is_one_line_and_leaves_no_partial_unpack(tmp_path, damage, expected):
    from common.errors import UserError
    from datamodules.fashion_mnist import locate_fashion_mnist

    data = gz_folder(tmp_path)
    bad = data / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:2000])
    elif damage == "not_gzip":
        bad.write_bytes(b"<html>404 not found</html>")
    else:
        labels = bytearray(gzip.decompress(bad.read_bytes()))
        labels[100] = (labels[100] + 1) % 10
        bad.write_bytes(gzip.compress(bytes(labels)))
    with pytest.raises(UserError, match=expected) as err:
        locate_fashion_mnist(data, tmp_path / "no_debian", download=False)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    # the files before it in order are whole and checked; nothing of the bad one, no temporary file
    assert leftovers(data) == ["t10k-images-idx3-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_good_gz_unpacks_and_verifies(tmp_path):
    from datamodules.fashion_mnist import RAW_FILES, locate_fashion_mnist

    data = gz_folder(tmp_path)
    locate_fashion_mnist(data, tmp_path / "no_debian", download=False)
    assert leftovers(data) == sorted(RAW_FILES)


@pytest.mark.parametrize("damage, expected", [
    ("magic", "magic 0x00000802"),
    ("dims", "dims [10000, 28, 27]"),
    ("size", "7839916 bytes"),
    ("empty", "no header"),
])
def test_idx_file_with_a_wrong_header_is_one_line(tmp_path, fashion_data_dir, damage, expected):
    from common.errors import UserError
    from datamodules.fashion_mnist import FashionMNISTDataModule

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (fashion_data_dir / "FashionMNIST" / "raw").iterdir():
        (raw / path.name).write_bytes(path.read_bytes())
    bad = raw / "t10k-images-idx3-ubyte"
    content = bytearray(bad.read_bytes())
    if damage == "magic":
        content[3] = 0x02
    elif damage == "dims":
        content[15] = 27
    elif damage == "size":
        content = content[:-100]
    else:
        content = bytearray()
    bad.write_bytes(bytes(content))
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), download=False, debian_dir=str(tmp_path / "none"))
    with pytest.raises(UserError, match="is not the Fashion-MNIST t10k-images-idx3-ubyte file") as err:
        dm.load_split_tensors(train=False)
    assert expected in str(err.value) and str(bad) in str(err.value)


def test_truncated_gz_through_train_is_one_line_and_writes_no_run(tmp_path, capsys):
    if not DEBIAN.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    data = gz_folder(tmp_path)
    gz = data / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:500])
    code, stderr = train_in_process(["--config", KSAE_CONFIG, "--run.root", str(tmp_path / "runs"),
                                     "--data.init_args.data_dir", str(data), "--data.init_args.download", "false",
                                     "--data.init_args.debian_dir", str(tmp_path / "none")], capsys)
    assert code == 2 and str(gz) in only_error_line(stderr)
    assert not (tmp_path / "runs").exists()
    assert "train-labels-idx1-ubyte" not in leftovers(data)


# ----- §2 analyze.py never replaces a folder it did not write ---------------------------------------
def test_analyze_output_dir_on_a_run_folder_is_refused(finished_run, tmp_path, capsys):
    import analyze
    from common.errors import run_cli

    run_dir, _ = finished_run
    before = tree_state(run_dir)
    for output_dir in (run_dir, run_dir.parent, tmp_path):  # the run, a folder holding it, a user's
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: analyze.main([
                "--config", str(ROOT / "configs/fashion_mnist/analysis.yaml"),
                "--analysis.init_args.inputs.ksae_run", str(run_dir), "--analysis.init_args.inputs.probe_run", str(run_dir),
                "--analysis.init_args.pixel_probe_run", "null",
                "--analysis.init_args.output_dir", str(output_dir)]))
        assert exit_info.value.code == 2
        error = only_error_line(capsys.readouterr().err)
        assert str(output_dir) in error and ("holds an input" in error or "not written by analyze.py" in error)
    assert tree_state(run_dir) == before and (tmp_path / "notes.txt").read_text() == "mine"


def test_universality_output_dir_holding_a_checkpoint_is_refused(finished_run):
    from analysis.options import SaeInputs
    from analysis.universality.study import UniversalityStudy
    from common.errors import UserError

    run_dir, _ = finished_run
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    before = tree_state(run_dir)
    study = UniversalityStudy(SaeInputs(usae_checkpoint=str(checkpoint), independent_checkpoint=str(checkpoint)),
                              output_dir=str(run_dir))
    with pytest.raises(UserError, match="holds an input of this analysis"):
        study.run()
    assert tree_state(run_dir) == before


def test_report_dir_replaces_only_its_own_folders(tmp_path):
    from analysis.base import REPORT_MARKER, report_dir
    from common.errors import UserError

    out = tmp_path / "report"
    with report_dir(out, []) as staging:
        (staging / "a.txt").write_text("1")
    assert (out / REPORT_MARKER).is_file()
    with report_dir(out, []) as staging:  # a report replaces the earlier report
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == sorted([REPORT_MARKER, "b.txt"])

    (out / REPORT_MARKER).unlink()  # a folder without the marker is not ours
    with pytest.raises(UserError, match="not written by analyze.py"):
        with report_dir(out, []):
            pass
    (out / REPORT_MARKER).write_text("")
    (out / "input.ckpt").write_text("x")
    with pytest.raises(UserError, match="holds an input"):  # ours, but it holds an input now
        with report_dir(out, [out / "input.ckpt"]):
            pass
    assert sorted(p.name for p in out.iterdir()) == sorted([REPORT_MARKER, "b.txt", "input.ckpt"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
