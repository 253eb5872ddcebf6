"""The ``run`` and ``wandb`` config sections every entry point shares, and the loggers they build."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from common.io import atomic_path, atomic_write_text, check_writable_dir
from common.run_folder import check_path_component, move_aside


@dataclass
class RunOptions:
    """Where a run writes: ``<root>/<name>/<version>/`` holds config.yaml, checkpoints/, metrics.csv.

    Attributes:
        root: folder that holds every run.
        name: experiment name (one sub-folder per experiment; one folder name, no ``/`` or ``..``).
        version: run folder name (one folder name); ``None`` picks the next free ``version_N``.
        test_after_fit: run the test split on the best checkpoint after fitting.
    """

    root: str = "runs"
    name: str = "default"
    version: str | None = None
    test_after_fit: bool = True

    def __post_init__(self) -> None:
        check_path_component(self.name, "run.name")
        if self.version is not None:
            check_path_component(self.version, "run.version")


@dataclass
class WandbOptions:
    """Weights & Biases logging, on top of the CSV log that is always written.

    Attributes:
        enabled: add a ``WandbLogger``.
        project: W&B project name.
        mode: ``offline`` writes a local run that ``wandb sync <run folder>/wandb/offline-run-*``
            uploads later; ``online`` streams to the server (needs ``wandb login``).
        entity: W&B team or user; ``None`` uses the logged-in default.
        tags: tags added to the W&B run.
    """

    enabled: bool = False
    project: str = "universal-sae"
    mode: Literal["offline", "online"] = "offline"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


def build_loggers(run: RunOptions, wandb: WandbOptions) -> list[Logger]:
    """CSV logger always (first, so it fixes ``trainer.log_dir``); W&B logger when enabled."""
    check_writable_dir(run.root, "run.root", create=False)
    csv = ResumableCSVLogger(save_dir=run.root, name=run.name, version=run.version)
    loggers: list[Logger] = [csv]
    if wandb.enabled:
        log_dir = Path(csv.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(WandbLogger(
            project=wandb.project, name=f"{run.name}/{log_dir.name}", save_dir=str(log_dir),
            offline=wandb.mode == "offline", entity=wandb.entity, tags=wandb.tags,
        ))
    return loggers


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps the rows of ``metrics.csv`` logged before step
    ``keep_before`` (Lightning's deletes the file) and rewrites the file atomically when columns appear."""

    def __init__(self, log_dir: str, keep_before: int | None) -> None:
        self._keep_before = keep_before
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        """Called by ``__init__``: on a resume, trim ``metrics.csv`` to the rows before the step (in one
        atomic replace, so a kill now loses nothing) instead of deleting it."""
        path = Path(self.metrics_file_path)
        if self._keep_before is None or not path.is_file():
            return super()._check_log_dir_exists()
        kept, keys = read_metric_rows(path, self._keep_before)
        if kept:
            atomic_write_text(path, rows_to_csv(kept, keys))
            self.metrics_keys = keys
        elif keys:
            path.unlink()  # readable, and every row is from after the checkpoint: they are logged again
        else:
            move_aside(path, "corrupt")  # unreadable: kept for the user, out of the way

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        with atomic_path(self.metrics_file_path) as tmp:
            tmp.write_text(rows_to_csv(rows, fieldnames), encoding="utf-8")


def read_metric_rows(path: Path, before_step: int) -> tuple[list[dict[str, str]], list[str]]:
    """The whole rows of ``metrics.csv`` whose ``step`` is below ``before_step``, and its header.

    A line cut short by a kill (no final newline, missing fields) is dropped; so is anything
    unreadable, which only loses history, never the run.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return [], []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    keys = list(reader.fieldnames or [])
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():
                continue
            try:
                if int(row.get("step", "")) < before_step:
                    rows.append(row)
            except ValueError:
                continue
    except csv.Error:
        return [], []
    return rows, keys


def rows_to_csv(rows: list[dict[str, Any]], keys: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that writes every row as soon as it is logged and, on a resume, keeps history.

    Set ``resume_step`` (the checkpoint's ``global_step``) before fitting: the rows already in
    ``metrics.csv`` from before that step stay, those from after it (the resumed run logs them
    again) go, so a run killed and resumed has each epoch's rows once. Without it the file starts
    afresh, as Lightning's does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("flush_logs_every_n_steps", 1)  # a kill loses no logged row
        super().__init__(*args, **kwargs)
        self.resume_step: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.resume_step)
        return self._experiment
