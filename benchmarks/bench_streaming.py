"""USAE training streamed from a shard store vs from in-memory tensors, 2 gloo DDP ranks each.

    python scripts/make_synthetic_shards.py --out artifacts/shards/synthetic
    python benchmarks/bench_streaming.py --store artifacts/shards/synthetic --out docs/bench/streaming.json
    python benchmarks/bench_streaming.py --store /tmp/syn --rows-in-memory 10000 --steps 20 \\
        --memory-budget-mb 64 --n-latents 512 --out /tmp/bench_streaming.json          # seconds

Two runs of ``UniversalSAE`` (joint mode) through Lightning's ``Trainer(strategy="ddp",
accelerator="cpu", devices=2)``, one after the other, each in its own processes (this script runs
itself with ``--phase``; Lightning starts rank 1): ``stream`` reads the store's train split through
``ShardFeatureData`` (l2 per batch, ``--memory-budget-mb`` per rank); ``memory`` loads the first
``--rows-in-memory`` good rows into float32 tensors on every rank (l2 once, as the single-file
cache holds them) and trains from ``DictTensorDataset`` with Lightning's distributed sampler.
Per rank: peak RSS (``getrusage`` ru_maxrss), RSS when training starts, and steps/s after
``--warmup`` steps; the ratio is streamed / in-memory steps/s. The stream run also re-reads every
``--check-every``-th batch's rows from each backbone's store by global row id and compares them
with the batch, and the ranks' row ids are checked to be disjoint.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROW_KEY = "_row"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True, help="shard store root (<store>/<name>/train/index.json)")
    p.add_argument("--names", nargs="+", default=["resnet50", "mobilenet_v3_large"], help="backbones in it")
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--warmup", type=int, default=None,
                   help="steps left out of steps/s (default: steps // 10, at least 1)")
    p.add_argument("--batch-size", type=int, default=1024, help="rows per rank per step")
    p.add_argument("--memory-budget-mb", type=float, default=512.0, help="stream: feature data per rank (MiB)")
    p.add_argument("--rows-in-memory", type=int, default=100_000,
                   help="memory: rows loaded on every rank (each trains on its half)")
    p.add_argument("--n-latents", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: cores // 2)")
    p.add_argument("--check-every", type=int, default=25, help="stream: re-read every n-th batch's rows")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--phase", choices=["stream", "memory"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def rss_mb() -> float:
    """Current resident set size of this process in MiB (``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_phase(args: argparse.Namespace) -> None:
    """One DDP training run (this process is one rank); writes ``<work>/<phase>_rank<r>.json``."""
    import lightning as L
    import numpy as np
    import torch

    from components.sparse_coder import SparseCoderConfig
    from datamodules.activations import DictTensorDataset
    from datamodules.in_memory import in_memory_loader
    from datamodules.shard_features import ShardFeatureData
    from datamodules.shard_stream import gather_rows
    from lightning_modules.universal_sae import UniversalSAE

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // 2))
    work = Path(args.work)
    warmup = max(1, args.warmup if args.warmup is not None else args.steps // 10)
    stream = ShardFeatureData(args.store, args.names, batch_size=args.batch_size, seed=0, normalization="l2",
                              memory_budget_mb=args.memory_budget_mb, row_key=ROW_KEY)
    shards = stream.split("train")
    dims = {name: s.dim for name, s in shards.stores.items()}

    class Measure(L.Callback):
        def __init__(self) -> None:
            self.t0 = self.t1 = None
            self.start_rss = 0.0
            self.rows: list[np.ndarray] = []
            self.checked, self.aligned = 0, True

        def on_train_start(self, trainer, pl_module) -> None:
            self.start_rss = rss_mb()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            rows = batch.pop(ROW_KEY, None)
            if rows is None:
                return
            rows = rows.numpy()
            self.rows.append(rows)
            if batch_idx % args.check_every == 0:  # the batch is what each store holds at those rows
                order = np.argsort(rows)
                for name, store in shards.stores.items():
                    back = torch.empty(len(rows), store.dim)
                    back[torch.from_numpy(order)] = torch.from_numpy(gather_rows(store, rows[order])).float()
                    self.aligned &= bool(torch.equal(stream.normalizer(name)(back), batch[name]))
                self.checked += 1

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                self.t0 = time.perf_counter()
            self.t1 = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            rank = trainer.global_rank
            if self.rows:
                np.save(work / f"rows_rank{rank}.npy", np.concatenate(self.rows))
            timed = trainer.global_step - warmup
            (work / f"{args.phase}_rank{rank}.json").write_text(json.dumps({
                "rank": rank, "world": trainer.world_size, "steps": trainer.global_step,
                "steps_per_s": timed / (self.t1 - self.t0) if self.t0 and self.t1 > self.t0 else None,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_at_train_start_mb": self.start_rss,
                "peak_over_start_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.start_rss,
                "batches_checked": self.checked,
                "aligned": self.aligned}))

    if args.phase == "stream":
        data = stream
    else:
        rows = np.concatenate([shards.block_rows(b) for b in range(len(shards.good))])[:args.rows_in_memory]
        features = {name: stream.normalizer(name)(torch.from_numpy(gather_rows(store, rows)).float())
                    for name, store in shards.stores.items()}

        class InMemory(L.LightningDataModule):
            def train_dataloader(self):
                return in_memory_loader(DictTensorDataset(features), args.batch_size, shuffle=True, seed=0)

        data = InMemory()
    model = UniversalSAE(dims, sae=SparseCoderConfig(n_latents=args.n_latents, k=args.k, select_dtype="float32"),
                         lr=1e-3)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=args.steps, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Measure()])
    trainer.fit(model, datamodule=data)


def summary(work: Path, phase: str) -> dict:
    ranks = [json.loads((work / f"{phase}_rank{r}.json").read_text()) for r in range(2)]
    rates = [r["steps_per_s"] for r in ranks]
    return {"ranks": ranks, "steps_per_s": min(rates) if None not in rates else None,
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in ranks)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.phase:
        run_phase(args)
        return
    from common.hardware import detect
    from common.io import atomic_write_json

    import numpy as np

    print(detect().line(), flush=True)
    results = {"machine": detect().line(), "args": {k: v for k, v in vars(args).items() if k not in ("phase", "work")}}
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as work:
        for phase in ("stream", "memory"):
            cmd = [sys.executable, str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:]),
                   "--phase", phase, "--work", work]
            began = time.perf_counter()
            subprocess.run(cmd, check=True)
            results[phase] = {**summary(Path(work), phase), "wall_s": time.perf_counter() - began}
        rows = [np.load(Path(work) / f"rows_rank{r}.npy") for r in range(2)]
    results["rows_seen_per_rank"] = [int(len(r)) for r in rows]
    results["ranks_disjoint_within_epoch"] = disjoint_per_epoch(rows, args)
    ranks = results["stream"]["ranks"]
    results["aligned"] = all(r["aligned"] for r in ranks) and all(r["batches_checked"] > 0 for r in ranks)
    s, m = results["stream"]["steps_per_s"], results["memory"]["steps_per_s"]
    results["throughput_ratio_stream_over_memory"] = s / m if s and m else None
    print(f"{'run':<8}{'steps/s':>10}{'peak RSS MiB (rank 0, 1)':>28}{'RSS at start':>16}{'peak - start':>16}")
    for phase in ("stream", "memory"):
        r = results[phase]
        peaks = ", ".join(f"{x['peak_rss_mb']:.0f}" for x in r["ranks"])
        starts = ", ".join(f"{x['rss_at_train_start_mb']:.0f}" for x in r["ranks"])
        over = ", ".join(f"{x['peak_over_start_mb']:.0f}" for x in r["ranks"])
        print(f"{phase:<8}{r['steps_per_s'] or float('nan'):>10.2f}{peaks:>28}{starts:>16}{over:>16}")
    print(f"ratio stream/memory steps/s: {results['throughput_ratio_stream_over_memory'] or float('nan'):.3f}; "
          f"rows aligned across backbones: {results['aligned']} "
          f"({sum(r['batches_checked'] for r in ranks)} batches re-read); "
          f"ranks disjoint within each epoch: {results['ranks_disjoint_within_epoch']}")
    if args.out:
        atomic_write_json(args.out, results)


def disjoint_per_epoch(rows: list, args: argparse.Namespace) -> bool:
    """Within every epoch the two ranks' rows share nothing (an epoch: the batches of one pass)."""
    from datamodules.shard_features import ShardFeatureData

    stream = ShardFeatureData(args.store, args.names, batch_size=args.batch_size, normalization="l2",
                              memory_budget_mb=args.memory_budget_mb)
    lo, hi = stream.loader("train", True, 0, 2).sampler.span()
    per_epoch = hi - lo
    n = min(len(r) for r in rows)
    for lo in range(0, n, per_epoch):
        if set(rows[0][lo:lo + per_epoch].tolist()) & set(rows[1][lo:lo + per_epoch].tolist()):
            return False
    return True


if __name__ == "__main__":
    from common.errors import run_cli

    run_cli(main)
