"""How many code units fire over an evaluation split, under both dead definitions (``docs/metrics.md``)."""

from __future__ import annotations

import torch
from torch import Tensor

from metrics.universality import FiringCounts


class ActiveUnits(FiringCounts):
    """Counts units whose code exceeds ``threshold`` on at least one sample; pooled over the split.

    The state is ``FiringCounts`` for one model (float64 fire counts per unit, summed across
    batches and processes). ``compute`` returns the number of units that fire at least once;
    ``summary`` the whole ``firing_summary`` (both dead fractions, the log10-density histogram),
    taken from the same synced state, so ``dead_fraction`` and ``rare_fraction`` are DDP-correct.
    """

    def __init__(self, n_units: int, threshold: float = 0.0, rare_below: int = 10, **kwargs) -> None:
        super().__init__(n_units, 1, threshold, rare_below, **kwargs)
        self._summary: dict[str, Tensor] | None = None

    def update(self, codes: Tensor) -> None:  # type: ignore[override]
        """codes: (B, n_units)."""
        super().update([codes])

    def compute(self) -> Tensor:
        # runs inside torchmetrics' sync context: the state here is the one summed over processes
        self._summary = super().compute()
        return (~self._summary["never"][0]).sum()

    def summary(self) -> dict[str, Tensor]:
        """``firing_summary`` of the synced state (computes, and syncs, at most once per update)."""
        self.compute()  # cached by torchmetrics until the next update/reset; fills _summary
        assert self._summary is not None
        return self._summary

    def dead_fraction(self) -> Tensor:
        """Share of units that never fire over the split."""
        return self.summary()["dead_fraction"]

    def rare_fraction(self) -> Tensor:
        """Share of units that fire on fewer than ``rare_below`` samples of the split."""
        return self.summary()["rare_fraction"]

    def reset(self) -> None:
        super().reset()
        self._summary = None
