"""Disk and memory of a sharded extraction, computed from shapes (nothing is extracted).

    python scripts/shard_sizes.py                      # ImageNet-1k, the study's three backbones
    python scripts/shard_sizes.py --train 1281167 --test 50000 --val-size 10000 --shard-rows 65536 \
        --batch-size 256 --workers 8 --crop 224 --arch resnet50 vgg16

Disk per (backbone, split) = rows × d × bytes per value (float16: 2, float32: 4), plus one JSON
entry per shard. Memory per rank = the one open shard buffer (shard_rows × d × bytes) + decoded
batches in flight (workers × 2 prefetched × batch × 3 × crop² uint8 bytes) + the backbone's weights.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.backbones import build_backbone, default_layer, feature_dim  # noqa: E402

GIB = 1024 ** 3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=1_281_167, help="images in the train folder")
    p.add_argument("--test", type=int, default=50_000, help="images in the test folder")
    p.add_argument("--val-size", type=int, default=10_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--shard-rows", type=int, default=65_536)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--arch", nargs="+", default=["resnet50", "mobilenet_v3_large", "vgg16"])
    args = p.parse_args(argv)
    rows = {"train": args.train - args.val_size, "val": args.val_size, "test": args.test}
    total = sum(rows.values())
    inflight = args.workers * 2 * args.batch_size * 3 * args.crop ** 2
    print(f"rows: train {rows['train']:,}, val {rows['val']:,}, test {rows['test']:,} (total {total:,}); "
          f"shards of {args.shard_rows:,} rows: {sum(-(-n // args.shard_rows) for n in rows.values())} per backbone")
    print()
    print("| backbone | d | disk float16 (GiB) | disk float32 (GiB) | shard float16 (MiB) | "
          "memory per rank, float16 (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch in args.arch:
        d = feature_dim(arch, default_layer(arch), args.classes, (3, args.crop, args.crop))
        with torch.device("meta"):
            weights = sum(t.numel() * 4 for t in build_backbone(arch, args.classes).state_dict().values())
        memory = args.shard_rows * d * 2 + inflight + weights
        print(f"| {arch} | {d} | {total * d * 2 / GIB:.2f} | {total * d * 4 / GIB:.2f} | "
              f"{args.shard_rows * d * 2 / 2 ** 20:.0f} | {memory / GIB:.2f} |")
    print()
    print(f"decoded batches in flight per rank: {args.workers} workers × 2 × {args.batch_size} × 3 × "
          f"{args.crop}² bytes = {inflight / GIB:.2f} GiB (pinned host memory on GPUs)")


if __name__ == "__main__":
    main()
