"""Shared fixtures: keep tests offline, quiet and on few threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where train.py lives)."""
    return ROOT


@pytest.fixture(scope="session")
def fashion_data_dir(tmp_path_factory) -> Path:
    """A data_dir holding real Fashion-MNIST, unpacked once per session from Debian's package."""
    from datamodules.fashion_mnist import DEBIAN_DIR, locate_fashion_mnist

    return locate_fashion_mnist(tmp_path_factory.mktemp("fashion"), DEBIAN_DIR, download=False)


def run_script(repo_root: Path, *args: str, env: dict | None = None, timeout: int = 300):
    """Run ``python <args>`` in the repo root as a user would; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
