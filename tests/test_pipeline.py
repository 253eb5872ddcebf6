"""Pipeline stages: skip when current, resume after a kill with the same final numbers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def stage_args(root: Path, data_dir: Path, version: str, epochs: int = 3) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / "stage.py"),
            "--config", str(ROOT / "configs/fashion_mnist/ksae.yaml"), "--run.root", str(root),
            "--run.version", version, "--trainer.max_epochs", str(epochs),
            "--data.init_args.data_dir", str(data_dir), "--data.init_args.train_subset", "1500",
            "--data.init_args.val_size", "500", "--trainer.enable_progress_bar", "false"]


def metric_rows(run_dir: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(epoch, step, logged columns) of each metrics.csv row, in order."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [(row["epoch"], row["step"], tuple(sorted(k for k, v in row.items() if v)))
                for row in csv.DictReader(fh)]


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow  # the rule in-process: test_stage.py::test_stage_needs_a_pinned_run_version
def test_stage_needs_a_fixed_run_folder(tmp_path, fashion_data_dir):
    result = run(stage_args(tmp_path, fashion_data_dir, "null"))
    assert result.returncode == 2 and "set run.version" in result.stderr


@pytest.mark.slow  # the same rule in-process: test_stage.py
def test_stage_reruns_when_an_earlier_stage_wrote_its_input_again(tmp_path, fashion_data_dir):
    upstream = tmp_path / "upstream" / "results.json"
    upstream.parent.mkdir()
    upstream.write_text("{}")
    args = [*stage_args(tmp_path, fashion_data_dir, "main", epochs=1), f"--after={upstream}"]
    first = run(args)
    assert first.returncode == 0 and "starting" in first.stdout, first.stderr[-3000:]
    assert "up to date" in run(args).stdout

    later = time.time() + 5  # the earlier stage ran again and rewrote its output
    os.utime(upstream, (later, later))
    rerun = run(args)
    assert rerun.returncode == 0 and "newer input" in rerun.stdout, rerun.stderr[-3000:]
    assert (tmp_path / "fashion_mnist_ksae/main.stale-1/results.json").exists()
    assert (tmp_path / "fashion_mnist_ksae/main/results.json").exists()

    missing = run([*args[:-1], f"--after={tmp_path / 'nothing.json'}"])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "fashion_mnist_ksae/main.stale-2").exists()


@pytest.mark.slow
def test_killed_stage_resumes_to_the_same_numbers(tmp_path, fashion_data_dir):
    whole = run(stage_args(tmp_path, fashion_data_dir, "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    expected = json.loads((tmp_path / "fashion_mnist_ksae/whole/results.json").read_text())["test"]

    killed_dir = tmp_path / "fashion_mnist_ksae/killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(stage_args(tmp_path, fashion_data_dir, "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    # last.ckpt is what a resume needs; it appears whole (AtomicCheckpointIO) after the epoch's best
    while not (killed_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # during epoch 3 at the latest: the whole process group dies
    proc.wait()
    assert not (killed_dir / "results.json").exists(), "the kill came too late to test anything"

    resumed = run(stage_args(tmp_path, fashion_data_dir, "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    got = json.loads((killed_dir / "results.json").read_text())["test"]
    assert got == expected
    # the log history survives the kill: every epoch's rows, once each, as in the unbroken run
    assert metric_rows(killed_dir) == metric_rows(tmp_path / "fashion_mnist_ksae/whole")

    again = run(stage_args(tmp_path, fashion_data_dir, "killed"))
    assert again.returncode == 0 and "up to date" in again.stdout

    changed = run(stage_args(tmp_path, fashion_data_dir, "killed", epochs=1))
    assert changed.returncode == 0 and "config changed" in changed.stdout
    assert (tmp_path / "fashion_mnist_ksae/killed.stale-1/results.json").exists()
