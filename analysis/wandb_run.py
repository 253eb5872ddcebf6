"""The one W&B writer of the analyses: a run of its own (offline unless ``wandb.mode: online``) in
``<report folder's parent>/wandb``, so it outlives the report folder being replaced.

The report folder is the record; W&B is a copy for browsing, written after the report is in place,
so a W&B failure never costs the report. ``wandb sync <parent>/wandb/wandb/offline-run-*`` uploads
it later.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from common.run_options import WandbOptions


def wandb_dir(report_dir: Path) -> Path:
    """Where the W&B runs of the analysis writing ``report_dir`` go: ``<report_dir>/../wandb``."""
    return Path(report_dir).parent / "wandb"


@contextlib.contextmanager
def analysis_run(options: WandbOptions, name: str, report_dir: Path, job_type: str,
                 config: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """Yield a new ``wandb`` run (finished on exit) for the analysis writing ``report_dir``."""
    import wandb

    save_dir = wandb_dir(report_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(project=options.project, entity=options.entity, name=name, tags=list(options.tags),
                  mode=options.mode, dir=str(save_dir), job_type=job_type, config=dict(config or {}))
    try:  # a run of its own even if the process holds another one (wandb >= 0.19)
        run = wandb.init(**kwargs, reinit="create_new")
    except (TypeError, ValueError):
        run = wandb.init(**kwargs, reinit=True)
    try:
        yield run
    finally:
        run.finish()


def plain_cell(value: Any) -> Any:
    """A table cell W&B stores as is: numbers, strings and None unchanged, anything else as ``str``."""
    return value if isinstance(value, (int, float, str)) or value is None else str(value)


def table(headers: Sequence[Any], rows: Sequence[Sequence[Any]],
          cell: Callable[[int, Any], Any] | None = None) -> Any:
    """A ``wandb.Table``; ``cell(column index, value)`` converts each cell (default ``plain_cell``)."""
    import wandb

    convert = cell or (lambda _, value: plain_cell(value))
    return wandb.Table(columns=[str(h) for h in headers],
                       data=[[convert(i, v) for i, v in enumerate(row)] for row in rows])


def log_analysis(options: WandbOptions, name: str, report_dir: Path, job_type: str,
                 figures: Mapping[str, Path] | None = None, tables: Mapping[str, tuple[Sequence, Sequence]] | None = None,
                 numbers: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> str | None:
    """One run holding ``figures`` (key -> PNG), ``tables`` (key -> (headers, rows)) and the numeric
    entries of flat ``numbers``; returns the run's local folder, or None when W&B is off."""
    if not options.enabled:
        return None
    import wandb

    with analysis_run(options, name, report_dir, job_type, config) as run:
        payload: dict[str, Any] = {key: wandb.Image(str(path)) for key, path in (figures or {}).items()}
        payload.update({key: table(headers, rows) for key, (headers, rows) in (tables or {}).items()})
        payload.update({k: v for k, v in (numbers or {}).items() if isinstance(v, (int, float))})
        run.log(payload)
        return str(Path(run.dir).parent)
