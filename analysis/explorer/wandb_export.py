"""The explorer's index table as a ``wandb.Table``, thumbnail columns as ``wandb.Image`` (offline by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from analysis.explorer.sprites import SpriteBook
from common.run_options import WandbOptions


def log_index_table(options: WandbOptions, run_name: str, save_dir: Path, columns: Sequence[dict],
                    rows: Sequence[Sequence[Any]], books: Mapping[str, SpriteBook], max_rows: int) -> str | None:
    """Log the first ``max_rows`` index rows as ``explorer/index`` and as an artifact table (which holds
    the thumbnails; offline, they wait in W&B's staging folder for ``wandb sync``); returns the run's folder."""
    if not options.enabled:
        return None
    import wandb

    save_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(project=options.project, entity=options.entity, name=run_name, tags=list(options.tags),
                  mode=options.mode, dir=str(save_dir), job_type="explorer")
    try:  # a run of its own even if the process holds another one (wandb >= 0.19)
        run = wandb.init(**kwargs, reinit="create_new")
    except (TypeError, ValueError):
        run = wandb.init(**kwargs, reinit=True)

    def value(col: dict, v: Any) -> Any:
        if col["type"] == "thumb":
            if not v:
                return None
            cell = books[v[0]].cells[v[1]]
            return wandb.Image(cell[:, :, 0] if cell.shape[2] == 1 else cell)
        return v if isinstance(v, (int, float, str)) or v is None else str(v)

    try:
        table = wandb.Table(columns=[c["label"] for c in columns],
                            data=[[value(c, v) for c, v in zip(columns, row)] for row in rows[:max_rows]])
        run.log({"explorer/index": table})
        # a run-level table keeps only placeholders for images; an artifact carries the images themselves
        artifact = wandb.Artifact(f"explorer-index-{run.id}", type="explorer-index")
        artifact.add(table, "index")
        run.log_artifact(artifact)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
