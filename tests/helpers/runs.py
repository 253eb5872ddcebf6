"""Helpers the tests share (plain functions; the fixtures live in ``tests/conftest.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_script(repo_root: Path, *args: str, env: dict | None = None, timeout: int = 300):
    """Run ``python <args>`` in the repo root as a user would; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


KSAE_CONFIG = str(ROOT / "configs/fashion_mnist/ksae.yaml")


def tiny_ksae_args(root: Path, data_dir: Path, version: str, *extra: str, epochs: int = 2) -> list[str]:
    """A k-sparse AE small enough to fit in about a second: 600 real training images in 6 batches
    per epoch, 128 units, a row in metrics.csv for every step."""
    return ["--config", KSAE_CONFIG, "--run.root", str(root), "--run.version", version,
            "--trainer.max_epochs", str(epochs), "--data.init_args.data_dir", str(data_dir),
            "--data.init_args.train_subset", "600", "--data.init_args.val_size", "300",
            "--data.init_args.batch_size", "100", "--model.init_args.sae.n_latents", "128",
            "--model.init_args.sae.k", "10", "--model.init_args.sae.k_start", "20",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]


def train_in_process(args: list[str], capsys) -> tuple[int, str]:
    """Run train.py's main as its ``__main__`` does; return (exit code, stderr)."""
    import train
    from common.errors import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(args))
    return exit_info.value.code, capsys.readouterr().err


def only_error_line(stderr: str) -> str:
    """The one ``error:`` line, asserting it is the only line on stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


def tree_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (relative path → (contents, mtime_ns)), to prove nothing changed."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}
