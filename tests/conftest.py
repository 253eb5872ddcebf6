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


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (tiny tensors: more threads only contend on 2 cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
