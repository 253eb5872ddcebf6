"""The study notebook runs top to bottom on the quick setting (1 epoch, 2,048 training images)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def test_notebook_executes_on_the_quick_setting(repo_root: Path, monkeypatch):
    monkeypatch.setenv("KSAE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    notebook = nbformat.read(repo_root / "notebooks" / "ksparse_fashion_mnist.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(repo_root / "notebooks")}})
    client.execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "quick run root" in outputs
    assert "codes test accuracy" in outputs and "pixels test accuracy" in outputs
    images = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(images) >= 6
    assert os.environ.get("KSAE_NOTEBOOK_QUICK") == "1"
