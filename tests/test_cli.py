"""train.py end to end: composition, overrides, run folder, W&B on/off, reproducibility, bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.runs import run_script

ROOT = Path(__file__).resolve().parents[1]
KSAE = str(ROOT / "configs/fashion_mnist/ksae.yaml")


def quick_args(root: Path, data_dir: Path, *extra: str) -> list[str]:
    """A one-epoch k-sparse AE run on 2,000 real Fashion-MNIST training images."""
    return ["--config", KSAE, "--run.root", str(root), "--trainer.max_epochs", "1",
            "--data.init_args.data_dir", str(data_dir), "--data.init_args.train_subset", "2000",
            "--data.init_args.val_size", "1000", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


def last_metrics(run_dir: Path) -> dict[str, float]:
    """Merge the rows of metrics.csv into one dict of the last value seen per column."""
    merged: dict[str, float] = {}
    with open(run_dir / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return merged


def test_fit_and_test_write_one_run_folder(tmp_path, fashion_data_dir, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)
    cli = train.main(quick_args(tmp_path / "runs", fashion_data_dir, "--run.version", "v1"))
    run_dir = tmp_path / "runs" / "fashion_mnist_ksae" / "v1"
    assert Path(cli.trainer.log_dir) == run_dir
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 1
    assert saved["data"]["init_args"]["train_subset"] == 2000
    assert list((run_dir / "checkpoints").glob("epoch*.ckpt")) and (run_dir / "checkpoints" / "last.ckpt").exists()
    metrics = last_metrics(run_dir)
    assert 0 < metrics["test/loss"] < 0.05
    assert metrics["test/active_units"] > 900
    assert not (run_dir / "wandb").exists()
    assert not (tmp_path / "lightning_logs").exists()


def test_same_config_twice_gives_same_numbers(tmp_path, fashion_data_dir):
    import train

    for version in ("a", "b"):
        train.main(quick_args(tmp_path, fashion_data_dir, "--run.version", version,
                              "--data.init_args.train_subset", "1000"))
    a = last_metrics(tmp_path / "fashion_mnist_ksae" / "a")
    b = last_metrics(tmp_path / "fashion_mnist_ksae" / "b")
    assert a["test/loss"] == b["test/loss"] and a["val/loss"] == b["val/loss"]
    c_dir = "c"
    train.main(quick_args(tmp_path, fashion_data_dir, "--run.version", c_dir, "--seed_everything", "1",
                          "--data.init_args.train_subset", "1000"))
    assert last_metrics(tmp_path / "fashion_mnist_ksae" / c_dir)["test/loss"] != a["test/loss"]


def test_wandb_fragment_writes_an_offline_run(tmp_path, fashion_data_dir):
    result = run_script(Path(__file__).parents[1], "train.py",
                        *quick_args(tmp_path, fashion_data_dir, "--config", str(ROOT / "configs/logger/wandb.yaml"),
                                    "--run.version", "w", "--data.init_args.train_subset", "500"),
                        env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-2000:]
    runs = list((tmp_path / "fashion_mnist_ksae" / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), "no offline W&B run file"
    assert (tmp_path / "fashion_mnist_ksae" / "w" / "metrics.csv").exists(), "CSV log must stay on"


def test_training_needs_no_wandb_without_the_fragment(tmp_path, fashion_data_dir, repo_root):
    code = (f"import sys; sys.path.insert(0, {str(repo_root)!r}); sys.modules['wandb'] = None; import train; "
            f"train.main({quick_args(tmp_path, fashion_data_dir, '--data.init_args.train_subset', '500')!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(tmp_path.glob("fashion_mnist_ksae/*/metrics.csv"))


def test_configs_compose_and_print(repo_root):
    result = run_script(repo_root, "train.py", "--config", KSAE, "--config", "configs/trainer/cpu.yaml",
                        "--trainer.max_epochs", "3", "--print_config")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["trainer"]["max_epochs"] == 3
    assert printed["trainer"]["accelerator"] == "cpu"
    assert printed["model"]["init_args"]["sae"]["k"] == 50


def test_seed_everything_seeds_the_datamodule(tmp_path):
    from common.cli import StudyCLI

    cli = StudyCLI(subclass_mode_model=True, subclass_mode_data=True, run=False,
                   args=["--config", KSAE, "--seed_everything", "7", "--run.root", str(tmp_path)],
                   parser_kwargs={"exit_on_error": False})
    assert cli.datamodule.seed == 7


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """The CLI's trainers save through AtomicCheckpointIO: a save that dies midway leaves the previous
    checkpoint whole (Lightning's own IO would leave the truncated new one)."""
    import torch

    import common.io
    from common.checkpoint_io import AtomicCheckpointIO
    from common.cli import StudyCLI

    cli = StudyCLI(subclass_mode_model=True, subclass_mode_data=True, run=False,
                   args=["--config", KSAE, "--run.root", str(tmp_path)], parser_kwargs={"exit_on_error": False})
    io = cli.trainer.strategy.checkpoint_io
    assert isinstance(io, AtomicCheckpointIO)
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, path)

    def dies_midway(obj, target):
        Path(target).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(common.io.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 1 and list(path.parent.iterdir()) == [path]


def run_in_process(args: list[str], capsys) -> tuple[int, str]:
    """Run train.py's main as its ``__main__`` does; return (exit code, stderr)."""
    import train
    from common.errors import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(args))
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-1500:]
    assert "Traceback" not in stderr
    return errors[0]


def test_bad_config_from_the_real_command_line(tmp_path, repo_root):
    result = run_script(repo_root, "train.py", "--config", KSAE, "--run.root", str(tmp_path / "runs"),
                        "--model.init_args.bogus", "3")
    assert result.returncode == 2
    assert "Option 'bogus' is not accepted" in one_error_line(result.stderr)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, expected", [
    (["--trainer.max_epochs", "abc"], "config key 'trainer.max_epochs'"),
    (["--config", "configs/does_not_exist.yaml"], "does_not_exist.yaml"),
    (["--data.class_path", "datamodules.nope.NopeDataModule"], "config key 'data'"),
    (["--model.init_args.sae.k", "5000"], "k=5000"),
])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, capsys, extra, expected):
    code, stderr = run_in_process(["--config", KSAE, "--run.root", str(tmp_path / "runs"), *extra], capsys)
    assert code == 2
    assert expected in one_error_line(stderr)
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_offline_is_one_line_and_writes_nothing(tmp_path, capsys):
    code, stderr = run_in_process(["--config", KSAE, "--run.root", str(tmp_path / "runs"),
                                   "--data.init_args.data_dir", str(tmp_path / "empty"),
                                   "--data.init_args.debian_dir", str(tmp_path / "no_debian"),
                                   "--data.init_args.download", "false"], capsys)
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in one_error_line(stderr)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "empty").exists()


@pytest.mark.parametrize("key", ["--run.root", "--data.init_args.data_dir"])
def test_unwritable_folder_is_one_line(tmp_path, capsys, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, stderr = run_in_process(["--config", KSAE, "--run.root", str(tmp_path / "runs"),
                                   "--data.init_args.debian_dir", "/usr/share/datasets/fashion-mnist",
                                   key, str(blocker / "sub")], capsys)
    assert code == 2
    error = one_error_line(stderr)
    assert "not writable" in error and str(blocker) in error
    assert blocker.read_text() == "not a folder"
    assert not (tmp_path / "runs").exists()
