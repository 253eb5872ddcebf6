"""Export parts of the trained model as plain state_dicts (``torch.load(weights_only=True)``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from common.errors import UserError
from common.io import atomic_torch_save
from common.safe_load import load_weights


def resolve_attribute(module: torch.nn.Module, dotted: str) -> torch.nn.Module:
    """``resolve_attribute(model, "net.encoder")`` → ``model.net.encoder``; a clear error if absent."""
    target = module
    for part in dotted.split("."):
        if not hasattr(target, part):
            raise AttributeError(f"{type(module).__name__} has no '{dotted}' (stopped at '{part}')")
        target = getattr(target, part)
    return target


def best_state_dict(path: str) -> dict:
    """The ``state_dict`` of the Lightning checkpoint at ``path``, loaded with ``weights_only=True``
    (a one-line ``UserError`` if the file holds anything else)."""
    checkpoint = load_weights(path, "best checkpoint")
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"best checkpoint '{path}' has no state_dict; it is not a Lightning checkpoint")
    return checkpoint["state_dict"]


class ExportWeights(Callback):
    """After fitting, save named sub-modules of the best checkpoint as state_dicts in the run folder.

    Args:
        exports: file name → dotted attribute of the LightningModule, e.g.
            ``{"encoder.pth": "net.encoder", "decoder.pth": "net.decoder"}``; ``"."`` is the whole module.
        use_best: load the best checkpoint of the ``ModelCheckpoint`` callback first (else the last weights).
    """

    def __init__(self, exports: dict[str, str], use_best: bool = True) -> None:
        super().__init__()
        self.exports = exports
        self.use_best = use_best

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = None
        checkpoint = trainer.checkpoint_callback
        if self.use_best and isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
            state = best_state_dict(checkpoint.best_model_path)
        if trainer.is_global_zero:
            self.export(pl_module, Path(trainer.log_dir or "."), state)

    def export(self, pl_module: L.LightningModule, folder: Path, state: dict | None = None) -> list[Path]:
        """Write every export into ``folder``; ``state`` (a full state_dict) overrides the live weights."""
        written = []
        for filename, dotted in self.exports.items():
            prefix = "" if dotted == "." else dotted + "."
            if state is not None:
                part = {k[len(prefix):]: v.cpu() for k, v in state.items() if k.startswith(prefix)}
            else:
                module = pl_module if dotted == "." else resolve_attribute(pl_module, dotted)
                part = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            written.append(atomic_torch_save(part, folder / filename))
        return written
