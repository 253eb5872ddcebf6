"""How many code units fire at least once over an evaluation split."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class ActiveUnits(Metric):
    """Counts units whose code exceeds ``threshold`` on at least one sample; pooled over the split.

    State is a float64 fire count per unit summed across batches and processes (DDP-correct);
    ``compute`` returns the number of active units, ``dead_fraction`` the share that never fired.
    """

    full_state_update = False

    def __init__(self, n_units: int, threshold: float = 0.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.add_state("fires", default=torch.zeros(n_units, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        """codes: (B, n_units)."""
        self.fires += (codes > self.threshold).sum(0, dtype=torch.float64)

    def compute(self) -> Tensor:
        return (self.fires > 0).sum()

    def dead_fraction(self) -> Tensor:
        """Share of units that never fired (call after ``compute`` has synced the state)."""
        return (self.fires == 0).double().mean()
