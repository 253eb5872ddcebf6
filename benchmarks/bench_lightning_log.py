"""What one ``self.log`` call costs per training step on CPU (why ``KSparseAutoencoder`` logs only on
the steps Lightning writes).

    python benchmarks/bench_lightning_log.py            # 3 rounds of 1,000 steps per contestant

A tiny model (one 4 → 1 linear layer) makes each step almost all loop overhead. Contestants, run
round-robin in one process: a plain PyTorch loop, the Lightning loop with 0, 1 and 2 ``self.log``
calls per step. The table gives the median ms per step and the cost per ``self.log`` call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from benchmarks.bench_ksae import FitTimer  # noqa: E402
from common.hardware import detect  # noqa: E402


class Tiny(L.LightningModule):
    """One linear layer; ``logs`` ``self.log`` calls per training step."""

    def __init__(self, logs: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.logs = logs

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        for i in range(self.logs):
            self.log(f"train/value{i}", loss, prog_bar=i == 0)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters())


def lightning_ms(loader: DataLoader, logs: int) -> float:
    timer = FitTimer()
    L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
              num_sanity_val_steps=0).fit(Tiny(logs), loader)
    return 1e3 * timer.train_epoch_s[0] / len(loader)


def plain_ms(loader: DataLoader) -> float:
    model = Tiny(0)
    optimizer = torch.optim.Adam(model.parameters())
    start = time.perf_counter()
    for (batch,) in loader:
        loss = model.layer(batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return 1e3 * (time.perf_counter() - start) / len(loader)


def main(argv=None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(detect().line(), flush=True)
    warnings.filterwarnings("ignore")
    loader = DataLoader(TensorDataset(torch.randn(args.steps * 8, 4)), batch_size=8)
    contestants = {"plain PyTorch loop": lambda: plain_ms(loader),
                   **{f"Lightning, {n} self.log per step": (lambda n=n: lightning_ms(loader, n)) for n in (0, 1, 2)}}
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(args.rounds):
        for name, run in contestants.items():
            times[name].append(run())
    medians = {name: statistics.median(v) for name, v in times.items()}
    print("| contestant | ms per step |\n|---|---|")
    for name, ms in medians.items():
        print(f"| {name} | {ms:.3f} |")
    per_call = (medians["Lightning, 2 self.log per step"] - medians["Lightning, 0 self.log per step"]) / 2
    print(f"\none self.log call: {per_call:.3f} ms per step")
    return medians


if __name__ == "__main__":
    main()
