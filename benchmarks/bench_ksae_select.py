"""k-sparse AE training epochs with the encoder matmul in float32 vs bfloat16, paired within one fit.

    python benchmarks/bench_ksae_select.py            # 16 epochs of the default model, real Fashion-MNIST
    python benchmarks/bench_ksae_select.py --quick    # 8 epochs on 10,000 images (seconds)

This machine's speed drifts by tens of percent over minutes, more than the gap measured here, so
two fits run one after the other do not compare. Instead one fit of ``configs/fashion_mnist/ksae.yaml``
(the same Lightning Trainer as ``bench_ksae.py``: validation every epoch, no checkpoint files)
switches ``select_dtype`` between epochs. Once the k schedule has reached k = 50, epochs are taken in
pairs, one float32 and one bfloat16, the order alternating from pair to pair; the table gives each
pair's training seconds and their ratio, then the median ratio and the median epoch of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from benchmarks.bench_ksae import build_model, default_model_args, images, trainer  # noqa: E402
from common.hardware import detect  # noqa: E402


class AlternateSelectDtype(Callback):
    """From epoch ``start`` on, sets ``net.select_dtype`` per epoch (pairs float32/bfloat16, order
    alternating) and records each epoch's training seconds by dtype."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.seconds: dict[int, tuple[torch.dtype, float]] = {}
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if epoch >= self.start:
            pair, second = divmod(epoch - self.start, 2)
            pl_module.net.select_dtype = torch.bfloat16 if (pair + second) % 2 else torch.float32
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch >= self.start:
            self.seconds[trainer.current_epoch] = (pl_module.net.select_dtype, time.perf_counter() - self._t0)


def main(argv=None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="8 epochs on 10,000 images")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1] / "data"))
    args = p.parse_args(argv)
    print(detect().line(), flush=True)
    args.train_subset = 10_000 if args.quick else None
    epochs = 8 if args.quick else args.epochs
    options = default_model_args()
    start = options["k_anneal_epochs"] if options["k_start"] is not None else 0
    if epochs < start + 2:
        raise SystemExit(f"--epochs must be at least {start + 2} (the k schedule takes {start})")
    L.seed_everything(0, workers=True, verbose=False)
    timer = AlternateSelectDtype(start)
    trainer(epochs, [timer]).fit(build_model(options), datamodule=images(args))
    print(f"torch threads {torch.get_num_threads()}; epochs {start}..{epochs - 1} at k = {options['k']}, "
          f"{'10,000 images' if args.quick else 'all training images'}")
    print("| pair | float32 s | bfloat16 s | float32 / bfloat16 |\n|---|---|---|---|")
    ratios, by_dtype = [], {torch.float32: [], torch.bfloat16: []}
    for first in range(start, epochs - 1, 2):
        pair = dict(timer.seconds[e] for e in (first, first + 1))
        f32, bf16 = pair[torch.float32], pair[torch.bfloat16]
        ratios.append(f32 / bf16)
        by_dtype[torch.float32].append(f32)
        by_dtype[torch.bfloat16].append(bf16)
        print(f"| {first}-{first + 1} | {f32:.2f} | {bf16:.2f} | {f32 / bf16:.3f} |")
    print(f"median ratio {statistics.median(ratios):.3f} ({sum(r > 1 for r in ratios)} of {len(ratios)} "
          f"pairs faster in bfloat16); median epoch float32 {statistics.median(by_dtype[torch.float32]):.2f} s, "
          f"bfloat16 {statistics.median(by_dtype[torch.bfloat16]):.2f} s")
    return ratios


if __name__ == "__main__":
    main()
