"""Which latents to visualise: the most universal and the most model-specific ones, or given ones."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from analysis.universality.entropy import EntropySummary
from common.errors import UserError


def check_latents(latents: Sequence[int], n_latents: int, what: str) -> list[int]:
    """``latents`` as ints, or a one-line ``UserError`` naming the first one outside [0, n_latents)."""
    out = [int(f) for f in latents]
    bad = [f for f in out if not 0 <= f < n_latents]
    if bad:
        raise UserError(f"{what}: latent index {bad[0]} is out of range; the SAEs have {n_latents} latents "
                        f"(valid: 0..{n_latents - 1})")
    return out


def select_latents(entropy: EntropySummary, fire_counts: np.ndarray, count: int,
                   min_activations: int) -> dict[str, list[int]]:
    """Up to ``count`` universal and ``count`` model-specific latents of a universal SAE.

    Args:
        entropy: the USAE's firing-entropy summary. fire_counts: (M, n) fires per model and latent.
        min_activations: candidates fire on at least this many images (in every model for
            universal latents, in total for specific ones).
    Returns {"universal": H ≥ hi, most active first (by their fires in the model where they fire
    least: rare latents with exactly equal counts have H = 1 but say little); "specific": H ≤ lo,
    most fires first, taken round-robin over the model each one fires in most, so every backbone's
    specific latents appear}.
    """
    total = fire_counts.sum(0)
    least = fire_counts.min(0)
    uni = np.flatnonzero(entropy.universal & (least >= min_activations))
    uni = uni[np.argsort(-least[uni], kind="stable")][:count].tolist()
    spec = np.flatnonzero(entropy.specific & (total >= min_activations))
    spec = spec[np.argsort(-total[spec], kind="stable")]
    owner = fire_counts[:, spec].argmax(0) if spec.size else np.zeros(0, dtype=int)
    queues = [list(spec[owner == m]) for m in range(fire_counts.shape[0])]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for q in queues:
            if q and len(chosen) < count:
                chosen.append(int(q.pop(0)))
    return {"universal": [int(f) for f in uni], "specific": chosen}
