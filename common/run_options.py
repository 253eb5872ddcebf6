"""The ``run`` and ``wandb`` config sections every entry point shares, and the loggers they build."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from common.io import check_writable_dir


@dataclass
class RunOptions:
    """Where a run writes: ``<root>/<name>/<version>/`` holds config.yaml, checkpoints/, metrics.csv.

    Attributes:
        root: folder that holds every run.
        name: experiment name (one sub-folder per experiment).
        version: run folder name; ``None`` picks the next free ``version_N``.
        test_after_fit: run the test split on the best checkpoint after fitting.
    """

    root: str = "runs"
    name: str = "default"
    version: str | None = None
    test_after_fit: bool = True


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
    csv = CSVLogger(save_dir=run.root, name=run.name, version=run.version)
    loggers: list[Logger] = [csv]
    if wandb.enabled:
        log_dir = Path(csv.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(WandbLogger(
            project=wandb.project, name=f"{run.name}/{log_dir.name}", save_dir=str(log_dir),
            offline=wandb.mode == "offline", entity=wandb.entity, tags=wandb.tags,
        ))
    return loggers
