"""Carry the random-number generators' state in checkpoints, so a resumed run repeats an unbroken one."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback


class RNGStateInCheckpoint(Callback):
    """Save the torch / numpy / python RNG states with each checkpoint and restore them on resume.

    Lightning restores weights, optimizer and loop counters but not the global generators, so dropout
    and augmentation after a resume would draw different numbers than the uninterrupted run did.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = _collect_rng_states(include_cuda=False)
        if "numpy" in states:  # ndarray → list, so checkpoints still load with weights_only=True
            kind, keys, pos, has_gauss, cached = states["numpy"]
            states["numpy"] = (kind, keys.tolist(), pos, has_gauss, cached)
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            states = dict(checkpoint["rng_states"])
            if "numpy" in states:
                kind, keys, pos, has_gauss, cached = states["numpy"]
                states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
            _set_rng_states(states)
