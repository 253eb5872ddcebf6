"""``AtomicCheckpointIO``: Lightning checkpoints written beside their path and renamed onto it."""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.io import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic. Lightning's own opens the target and writes into
    it, so a run killed while ``last.ckpt`` is rewritten leaves a truncated file that ``--ckpt_path``
    cannot resume from; here the previous file stays until the new one is complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)
