"""Write a synthetic shard store (raw rows, ``normalization: none``) for the streaming benchmark.

    python scripts/make_synthetic_shards.py --out artifacts/shards/synthetic            # 1,000,000 rows
    python scripts/make_synthetic_shards.py --out /tmp/syn --rows 20000 --val-rows 2000 --shard-rows 4096

Every row i has a shared latent z_i ~ N(0, I_rank); backbone j's row is ``z_i W_j + noise · ε``
with its own seeded ``W_j`` (rank, d_j), so the backbones share a low-rank structure. Layout and
manifests are ``features.shards``' (``<out>/<name>/<split>/shard-*.npy``); each shard is generated
and written on its own (RAM: about one shard in float32), and shards already complete are kept, so
a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import UserError, run_cli  # noqa: E402
from features.shards import DEFAULT_SHARD_ROWS, ShardStore  # noqa: E402

DEFAULT_DIMS = ("resnet50=2048", "mobilenet_v3_large=1280")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="store root: <out>/<name>/<split>/")
    p.add_argument("--rows", type=int, default=1_000_000, help="train rows")
    p.add_argument("--val-rows", type=int, default=10_000, help="val rows (0: no val split)")
    p.add_argument("--test-rows", type=int, default=0, help="test rows (0: no test split)")
    p.add_argument("--dims", nargs="+", default=list(DEFAULT_DIMS), help="name=d per backbone")
    p.add_argument("--rank", type=int, default=64, help="rank of the shared structure")
    p.add_argument("--noise", type=float, default=0.1, help="noise scale relative to the signal")
    p.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def parse_dims(items: list[str]) -> dict[str, int]:
    dims = {}
    for item in items:
        name, _, d = item.partition("=")
        if not name or not d.isdigit() or int(d) < 1:
            raise UserError(f"--dims entry '{item}' must be name=d with a positive integer d")
        dims[name] = int(d)
    return dims


def shard_rows(args: argparse.Namespace, mixing: dict[str, np.ndarray], split: int, index: int,
               start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``[start, stop)`` of every backbone for one shard, seeded by (seed, split, shard)."""
    rng = np.random.default_rng([args.seed, split, index])
    z = rng.standard_normal((stop - start, args.rank), dtype=np.float32)
    out = {}
    for name, w in mixing.items():
        x = z @ w
        x += rng.standard_normal(x.shape, dtype=np.float32) * args.noise
        out[name] = x
    return out


def write_split(args: argparse.Namespace, dims: dict[str, int], split: str, rows: int, split_id: int) -> None:
    key = {"synthetic": {"seed": args.seed, "rank": args.rank, "noise": args.noise}, "normalization": "none"}
    mixing = {name: np.random.default_rng([args.seed, 1000 + j]).standard_normal((args.rank, d), dtype=np.float32)
              / np.sqrt(args.rank) for j, (name, d) in enumerate(dims.items())}
    stores = {name: ShardStore(Path(args.out) / name / split, d, args.dtype, args.shard_rows, {**key, "name": name})
              for name, d in dims.items()}
    for store in stores.values():
        store.reset_if_stale()
    first = next(iter(stores.values()))
    began = time.perf_counter()
    for i in range(first.num_shards(rows)):
        start, stop = first.shard_range(i, rows)
        if all(s.problem(i, stop - start, start) is None for s in stores.values()):
            continue  # complete from an earlier run
        for name, x in shard_rows(args, mixing, split_id, i, start, stop).items():
            stores[name].write_shard(i, start, x)
        print(f"{split}: shard {i + 1}/{first.num_shards(rows)} ({stop:,} rows, "
              f"{time.perf_counter() - began:.0f} s)", flush=True)
    for store in stores.values():
        store.finalize(rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    dims = parse_dims(args.dims)
    if args.rows < 1 or min(args.val_rows, args.test_rows) < 0 or args.rank < 1 or args.shard_rows < 1:
        raise UserError("--rows, --rank and --shard-rows must be >= 1, --val-rows and --test-rows >= 0")
    write_split(args, dims, "train", args.rows, 0)
    if args.val_rows:
        write_split(args, dims, "val", args.val_rows, 1)
    if args.test_rows:
        write_split(args, dims, "test", args.test_rows, 2)
    gb = args.rows * sum(dims.values()) * np.dtype(args.dtype).itemsize / 1e9
    print(f"wrote {args.rows:,} train rows ({gb:.2f} GB) of {', '.join(f'{n} {d}-d' for n, d in dims.items())} "
          f"to '{args.out}'")


if __name__ == "__main__":
    run_cli(main)
