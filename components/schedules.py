"""The learning-rate schedule shared by every system: linear warm-up, hold, cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: float, total: float, warmup: float = 0.0, hold: float = 0.0,
                  final: float = 0.0, cosine: bool = True) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup`` for ``step < warmup``; then 1 until step ``hold``
    (``hold >= warmup``; pass ``hold=warmup`` for no plateau); then, with ``cosine``, a half cosine
    from 1 at ``hold`` to ``final`` at ``total`` steps and ``final`` after (Loshchilov & Hutter 2017,
    "SGDR"); without ``cosine`` it stays 1. Steps may be fractional (epochs × steps per epoch).
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if not cosine or total <= hold:
        return 1.0
    progress = min(max(step - hold, 0.0) / max(1.0, total - hold), 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
