"""The explorer's index table as a ``wandb.Table``, thumbnail columns as ``wandb.Image`` (offline by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.explorer.sprites import SpriteBook
from analysis.wandb_run import analysis_run, plain_cell, table
from common.run_options import WandbOptions


def log_index_table(options: WandbOptions, run_name: str, site_dir: Path, columns: Sequence[dict],
                    rows: Sequence[Sequence[Any]], books: Mapping[str, SpriteBook], max_rows: int) -> str | None:
    """Log the first ``max_rows`` index rows as ``explorer/index`` and as an artifact table (which holds
    the thumbnails; offline, they wait in W&B's staging folder for ``wandb sync``); returns the run's folder."""
    if not options.enabled:
        return None
    import wandb

    def cell(i: int, v: Any) -> Any:
        if columns[i]["type"] == "thumb":
            if not v:
                return None
            image = books[v[0]].cells[v[1]]
            return wandb.Image(image[:, :, 0] if image.shape[2] == 1 else image)
        return plain_cell(v)

    with analysis_run(options, run_name, site_dir, "explorer") as run:
        index = table([c["label"] for c in columns], rows[:max_rows], cell)
        run.log({"explorer/index": index})
        # a run-level table keeps only placeholders for images; an artifact carries the images themselves
        artifact = wandb.Artifact(f"explorer-index-{run.id}", type="explorer-index")
        artifact.add(index, "index")
        run.log_artifact(artifact)
        return str(Path(run.dir).parent)
