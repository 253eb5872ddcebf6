"""Send the report's figures, tables and headline numbers to Weights & Biases (offline by default).

The report folder is the record; W&B is a copy for browsing, written after the report is in place,
so a W&B failure never costs the report. ``wandb sync <dir>/wandb/offline-run-*`` uploads later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from common.run_options import WandbOptions


def log_report(options: WandbOptions, run_name: str, save_dir: Path, figures: dict[str, Path],
               tables: dict[str, tuple[Sequence[str], Sequence[Sequence[Any]]]], numbers: dict[str, float],
               config: dict[str, Any]) -> str | None:
    """One W&B run holding ``figures`` (key -> PNG), ``tables`` (key -> (headers, rows)) and flat
    ``numbers``; returns the run's local folder, or None when W&B is off."""
    if not options.enabled:
        return None
    import wandb

    save_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(project=options.project, entity=options.entity, name=run_name, tags=list(options.tags),
                  mode=options.mode, dir=str(save_dir), config=config, job_type="analysis")
    try:  # a run of its own even if the process holds another one (wandb >= 0.19)
        run = wandb.init(**kwargs, reinit="create_new")
    except (TypeError, ValueError):
        run = wandb.init(**kwargs, reinit=True)
    try:
        payload: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in figures.items()}
        for key, (headers, rows) in tables.items():
            payload[key] = wandb.Table(columns=[str(h) for h in headers],
                                       data=[[c if isinstance(c, (int, float, str)) or c is None else str(c)
                                              for c in row] for row in rows])
        payload.update({k: v for k, v in numbers.items() if isinstance(v, (int, float))})
        run.log(payload)
        return str(Path(run.dir).parent)
    finally:
        run.finish()
