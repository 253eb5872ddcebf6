"""Epoch time of Fashion-MNIST loading: one in-memory uint8 tensor + per-batch transform vs PIL per sample.

Both paths read the same real files through torchvision's ``FashionMNIST``, produce the same float
batches (checked), and are timed side by side, alternating, in one run:

    python benchmarks/bench_fashion_loading.py [--image-size 32 --channels 3] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FashionMNIST

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.fashion_mnist import FashionMNISTDataModule  # noqa: E402
from common.hardware import detect  # noqa: E402


def pil_loader(root: str, batch_size: int, image_size: int | None, channels: int, limit: int | None,
               num_workers: int) -> DataLoader:
    """The textbook path: torchvision decodes a PIL image and applies transforms per sample."""
    steps = []
    if channels == 3:
        steps.append(transforms.Grayscale(num_output_channels=3))
    if image_size:
        steps.append(transforms.Resize(image_size, antialias=True))
    steps.append(transforms.ToTensor())
    dataset = FashionMNIST(root, train=True, download=False, transform=transforms.Compose(steps))
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(limit))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))


def epoch_seconds(loader, transform=None) -> float:
    start = time.perf_counter()
    for images, _ in loader:
        if transform is not None:
            images = transform(images, train=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=0, help="PIL path workers")
    parser.add_argument("--quick", action="store_true", help="10k images, one repeat")
    args = parser.parse_args()
    print(detect().line(), flush=True)
    limit = 10_000 if args.quick else None
    repeats = 1 if args.quick else args.repeats

    dm = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=args.batch_size, val_size=1,
                                train_subset=limit, image_size=args.image_size, channels=args.channels)
    dm.prepare_data()
    start = time.perf_counter()
    dm.setup()
    load_once = time.perf_counter() - start
    pil = pil_loader(args.data_dir, args.batch_size, args.image_size, args.channels, limit, args.num_workers)

    raw, _ = dm.split("train")
    ours = dm.transform(raw[:64], train=False)
    pil_transform = pil.dataset.dataset.transform if limit else pil.dataset.transform
    theirs = torch.stack([pil_transform(Image.fromarray(raw[i, 0].numpy(), mode="L")) for i in range(64)])
    max_diff = (ours - theirs).abs().max().item()

    tensor_times, pil_times = [], []
    for _ in range(repeats):
        tensor_times.append(epoch_seconds(dm.train_dataloader(), dm.transform))
        pil_times.append(epoch_seconds(pil))
    n = len(raw)
    t_min, p_min = min(tensor_times), min(pil_times)
    print(f"Fashion-MNIST train epoch, {n} images, batch {args.batch_size}, image_size={args.image_size}, "
          f"channels={args.channels}, torch threads={torch.get_num_threads()}")
    print("| path | epoch s (min) | epoch s (median) | images/s |")
    print("|---|---|---|---|")
    print(f"| in-memory uint8 tensor + batch transform | {t_min:.3f} | {statistics.median(tensor_times):.3f} "
          f"| {n / t_min:,.0f} |")
    print(f"| torchvision PIL per sample (workers={args.num_workers}) | {p_min:.3f} | "
          f"{statistics.median(pil_times):.3f} | {n / p_min:,.0f} |")
    print(f"speed-up (min/min): {p_min / t_min:.1f}x; one-off load of all splits into tensors: {load_once:.2f} s; "
          f"max |pixel difference| between the paths on 64 images: {max_diff:.2e}")


if __name__ == "__main__":
    main()
