"""The study notebook runs top to bottom on the quick setting (1 epoch, 2,048 training images)."""

from __future__ import annotations

import json
import re
import shutil
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
    found = re.search(r"quick run root: (\S+)", outputs)
    assert found, outputs[:2000]
    root = Path(found.group(1))
    try:
        # the quick run wrote its runs and report outside the repository, and the report explains
        # the codes the headline probe reads (the autoencoder's k = 50)
        assert repo_root not in root.parents
        numbers = json.loads((root / "fashion_mnist_ksae" / "main" / "report" / "results.json").read_text())
        assert numbers["probe_k"] == numbers["k"] == 50
        assert "analysed codes: top 50 units per image" in outputs and "decoder-side:" in outputs
        assert "codes test accuracy" in outputs and "pixels test accuracy" in outputs
        images = [out for cell in notebook.cells if cell.cell_type == "code"
                  for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
        assert len(images) >= 6
    finally:
        shutil.rmtree(root, ignore_errors=True)
