"""Resolve the engine's ``select_dtype`` at start-up and record it (and the engine options) in the run."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from components.sparse_coder import SparseCoderConfig, resolve_select_dtype


def resolve_and_record(module: L.LightningModule, config: SparseCoderConfig) -> torch.dtype:
    """``config.select_dtype`` resolved for ``module.device`` (``auto`` → bfloat16 only where native),
    logged in one line, and stored with the engine options in ``module.hparams`` (checkpoints) and
    in the attached trainer's logger (``hparams.yaml``) as ``sae`` and ``select_dtype_resolved``."""
    resolved, line = resolve_select_dtype(config.select_dtype, module.device)
    if module.hparams.get("select_dtype_resolved") != resolved:
        rank_zero_info(line)
    values = {"sae": config.as_dict(), "select_dtype_resolved": resolved}
    module.hparams.update(values)
    try:
        logger = module.trainer.logger
    except RuntimeError:  # not attached to a Trainer (direct use, tests)
        logger = None
    if logger is not None:
        logger.log_hyperparams(values)
    return getattr(torch, resolved)
