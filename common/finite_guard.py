"""``FiniteGuard``: stop a run with one line as soon as its loss or a logged metric is NaN or infinite.

A diverged run otherwise trains on to the end and exports NaN weights with a ``results.json`` that
looks finished. The check syncs with the device only every ``every_n_batches`` training batches
and at the end of each validation/test run and training epoch; parameters that went NaN stay NaN,
so checking every batch would buy nothing but syncs.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from common.errors import UserError

ADVICE = "the run diverged: lower the learning rate (model.init_args.lr) or check the data and its normalisation"


def _loss_of(outputs: Any) -> Tensor | None:
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), Tensor):
        return outputs["loss"]
    return None


class FiniteGuard(Callback):
    """Raise a one-line ``UserError`` naming the metric, epoch and step when a value goes NaN/inf.

    Args:
        every_n_batches: check the training loss every this many training batches
            (``None``: the trainer's ``log_every_n_steps``).
        ignore: metric names (shell patterns, e.g. ``"val/r2_*"``) allowed to be non-finite.
    """

    def __init__(self, every_n_batches: int | None = None, ignore: Sequence[str] = ()) -> None:
        super().__init__()
        if every_n_batches is not None and every_n_batches < 1:
            raise UserError(f"FiniteGuard every_n_batches must be >= 1, got {every_n_batches}")
        self.every_n_batches = every_n_batches
        self.ignore = tuple(ignore)

    def _where(self, trainer: L.Trainer, batch_idx: int | None = None) -> str:
        batch = f", batch {batch_idx}" if batch_idx is not None else ""
        return f"epoch {trainer.current_epoch}{batch}, step {trainer.global_step}"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        every = self.every_n_batches or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))
        if (batch_idx + 1) % every and batch_idx != 0:
            return
        loss = _loss_of(outputs)
        problem = None
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            value = loss.detach().float()
            problem = f"training loss is {float(value[~torch.isfinite(value)].reshape(-1)[0])}"
        self._stop_if_any(trainer, problem or self.metric_problem(trainer), batch_idx)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_metrics(trainer)  # the previous epoch's epoch-level metrics are aggregated by now

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_metrics(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_metrics(trainer)  # before ModelCheckpoint (Lightning runs checkpoint callbacks last)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_metrics(trainer)

    def check_metrics(self, trainer: L.Trainer, batch_idx: int | None = None) -> None:
        """``UserError`` for the first non-finite value in ``trainer.callback_metrics`` (not ignored)."""
        self._stop_if_any(trainer, self.metric_problem(trainer), batch_idx)

    def _stop_if_any(self, trainer: L.Trainer, problem: str | None, batch_idx: int | None) -> None:
        # one collective decision, so that every DDP process stops at the same batch (none hangs)
        stop = problem is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            problem = problem or "a loss or metric is not finite in another process"
            raise UserError(f"{problem} at {self._where(trainer, batch_idx)}; {ADVICE}")

    def metric_problem(self, trainer: L.Trainer) -> str | None:
        """``"metric '<name>' is nan"`` for the first non-finite value in ``trainer.callback_metrics``
        (not ignored), else ``None``."""
        values: dict[str, Tensor] = {}
        for name, value in trainer.callback_metrics.items():
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = torch.tensor(float(value))
            if isinstance(value, Tensor) and value.is_floating_point():
                values[name] = value.detach()
        device = next(iter(values.values())).device if values else None
        if not values or bool(torch.stack([torch.isfinite(v).all().to(device) for v in values.values()]).all()):
            return None  # one sync in the usual, healthy case
        for name, value in values.items():
            bad = value.float()[~torch.isfinite(value.float())].reshape(-1)
            if bad.numel():
                return f"metric '{name}' is {float(bad[0])}"
        return None
