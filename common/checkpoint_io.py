"""``AtomicCheckpointIO``: Lightning checkpoints written beside their path and renamed onto it; and the
checks a checkpoint passes before a run resumes from it (weights-only load, keys and shapes)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.errors import UserError
from common.io import atomic_torch_save
from common.safe_load import load_weights


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic. Lightning's own opens the target and writes into
    it, so a run killed while ``last.ckpt`` is rewritten leaves a truncated file that ``--ckpt_path``
    cannot resume from; here the previous file stays until the new one is complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)


def read_checkpoint(path: str | os.PathLike, what: str = "--ckpt_path") -> dict[str, Any]:
    """Load a Lightning checkpoint with ``common.safe_load.load_weights`` (tensors and plain data only,
    so a planted pickle cannot run code); a one-line ``UserError`` if missing, unreadable or not one."""
    checkpoint = load_weights(path, what)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{what} '{path}' is not a Lightning checkpoint (no 'state_dict'); give a "
                        f"<run folder>/checkpoints/*.ckpt file")
    return checkpoint


def check_checkpoint_fits(checkpoint: dict[str, Any], model: torch.nn.Module, path: str | os.PathLike,
                          what: str = "--ckpt_path") -> None:
    """A one-line ``UserError`` unless ``checkpoint['state_dict']`` has ``model``'s keys and shapes.

    A model whose parameters are only built in ``setup``/``configure_model`` (an empty state_dict
    now) is not checked here; Lightning's strict loading still catches a mismatch then.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if not expected:
        return
    got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None
           for k, v in checkpoint["state_dict"].items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or unexpected or wrong):
        return
    if wrong:
        detail = f"'{wrong[0]}' has shape {list(got[wrong[0]] or ())}, the model's {list(expected[wrong[0]])}"
    elif missing:
        detail = f"it lacks '{missing[0]}'" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    else:
        detail = f"it has '{unexpected[0]}', which the model lacks"
    raise UserError(f"{what} '{path}' is a checkpoint of another model ({detail}); resume with a "
                    f"checkpoint of this config's model")


def is_valid_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` loads as a Lightning checkpoint with ``weights_only=True``."""
    try:
        read_checkpoint(path)
    except UserError:
        return False
    return True


def newest_valid_checkpoint(folder: str | os.PathLike, exclude: tuple[str, ...] = ()) -> Path | None:
    """The most recently written ``*.ckpt`` in ``folder`` that loads (``is_valid_checkpoint``), or None."""
    candidates = [p for p in Path(folder).glob("*.ckpt") if p.name not in exclude and p.is_file()]
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True):
        if is_valid_checkpoint(path):
            return path
    return None
