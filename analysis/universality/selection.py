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
        min_activations: only latents firing on at least this many images (in total) are candidates.
    Returns {"universal": highest entropy first, among latents that fire ≥ min_activations times in
    every model, ties by most fires; "specific": H ≤ lo, most fires first, taken round-robin over
    the model each one fires in most, so every backbone's specific latents appear}.
    """
    total = fire_counts.sum(0)
    h = np.nan_to_num(entropy.entropy, nan=-1.0)
    every = (fire_counts >= min_activations).all(0) & ~entropy.dead
    uni = np.flatnonzero(every)
    uni = uni[np.lexsort((-total[uni], -h[uni]))][:count].tolist()
    spec = np.flatnonzero(entropy.specific & (total >= min_activations))
    spec = spec[np.lexsort((-total[spec], h[spec]))]
    owner = fire_counts[:, spec].argmax(0) if spec.size else np.zeros(0, dtype=int)
    queues = [list(spec[owner == m]) for m in range(fire_counts.shape[0])]
    chosen: list[int] = []
    while len(chosen) < count and any(queues):
        for q in queues:
            if q and len(chosen) < count:
                chosen.append(int(q.pop(0)))
    return {"universal": [int(f) for f in uni], "specific": chosen}
