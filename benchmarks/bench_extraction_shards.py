"""Sharded extraction on Lightning's DDP: images/s with 1 and 2 processes, and a killed run resumed.

    python benchmarks/bench_extraction_shards.py --out artifacts/bench/extraction_shards.json
    python benchmarks/bench_extraction_shards.py --images 400 --shard-rows 32 --out /tmp/x.json  # seconds

Creates (once, cached under --work) a synthetic ImageFolder of --images small JPEGs in random-colour
class folders, and a seeded random-init backbone (--arch, ``weights=None``). Then, through
``build_cache.py --store shards`` in fresh processes (the real entry point, as a user runs it):
  1. extracts every split with 1 process, then with 2 processes (``--trainer.strategy ddp``, gloo
     on CPU), each process on --threads torch threads and --workers decoding workers;
  2. starts the 2-process extraction again into an empty store, kills its process group once
     --kill-after train shards exist, and runs it again to resume;
  3. checks that the SHA-256 of every shard agrees between the unbroken 1-process, 2-process and
     killed-and-resumed stores.
Prints the machine line, images/s of both runs (from the entry point's own timing of the predict
run, without interpreter start-up) and their ratio, what the resume extracted, and the checks;
writes them as JSON to --out.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.hardware import detect  # noqa: E402
from common.io import atomic_write_json, atomic_write_text  # noqa: E402
from components.backbones import build_backbone  # noqa: E402
from features.shards import file_sha256  # noqa: E402
from scripts.synthetic_image_folder import write_image_folder  # noqa: E402

RATE = re.compile(r"extracted (\d+) rows on (\d+) processes in ([\d.]+) s")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=20_000, help="JPEGs in the synthetic folder (>= 20,000 for the real run)")
    p.add_argument("--side", type=int, default=32, help="image side in pixels")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--arch", default="resnet18", help="torchvision model, random weights")
    p.add_argument("--shard-rows", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--workers", type=int, default=1, help="decoding workers per process")
    p.add_argument("--kill-after", type=int, default=None, help="train shards to wait for before the kill (default: a third)")
    p.add_argument("--work", default="artifacts/bench_extraction_shards", help="folder for images, weights and stores")
    p.add_argument("--out", required=True, help="JSON results file")
    return p.parse_args(argv)


def write_config(args, work: Path, folder: Path, checkpoint: Path, cache: Path) -> Path:
    val_size = max(1, args.images // 20)
    data = {"class_path": "datamodules.activations.ActivationDataModule", "init_args": {
        "backbones": [{"name": args.arch, "arch": args.arch, "checkpoint": str(checkpoint),
                       "num_classes": args.classes}],
        "images": {"class_path": "datamodules.image_folder.ImageFolderDataModule", "init_args": {
            "root": str(folder), "val_size": val_size, "resize": None, "crop": args.side,
            "num_workers": args.workers, "batch_size": args.batch_size}},
        "cache_dir": str(cache), "extract_batch_size": args.batch_size, "precision": "32",
        "device": "cpu", "progress": False}}
    path = work / f"{cache.name}.yaml"
    atomic_write_text(path, yaml.safe_dump({"data": data}))
    return path


def command(config: Path, args, devices: int) -> list[str]:
    return [sys.executable, str(ROOT / "build_cache.py"), "--config", str(config), "--store", "shards",
            "--shards.rows", str(args.shard_rows), "--shards.dtype", "float32",
            "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.strategy", "ddp"]


def env(args) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
            "PYTHONPATH": str(ROOT)}


def run(cmd: list[str], args) -> dict:
    """Run one extraction; ``{"rows", "processes", "seconds", "images_per_s"}`` from its own timing line."""
    done = subprocess.run(cmd, env=env(args), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"extraction failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = processes = 0
    seconds = 0.0
    for match in RATE.finditer(done.stdout):
        rows, processes, seconds = rows + int(match[1]), int(match[2]), seconds + float(match[3])
    return {"rows": rows, "processes": processes, "seconds": round(seconds, 3),
            "images_per_s": round(rows / seconds, 1) if seconds else 0.0}


def shard_hashes(cache: Path) -> dict[str, str]:
    return {str(p.relative_to(cache)): file_sha256(p) for p in sorted(cache.rglob("shard-*.npy"))}


def main(args: argparse.Namespace) -> None:
    print(detect().line(), flush=True)
    work = ROOT / args.work
    folder = write_image_folder(work / f"images_{args.images}_{args.side}px_{args.classes}c", args.images,
                                args.classes, args.side)
    torch.manual_seed(0)
    checkpoint = work / f"{args.arch}_{args.classes}.pth"
    if not checkpoint.exists():
        torch.save(build_backbone(args.arch, args.classes).state_dict(), checkpoint)
    caches = {name: work / "stores" / name for name in ("one", "two", "killed")}
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    configs = {name: write_config(args, work, folder, checkpoint, cache) for name, cache in caches.items()}

    one = run(command(configs["one"], args, 1), args)
    two = run(command(configs["two"], args, 2), args)
    ratio = two["images_per_s"] / one["images_per_s"] if one["images_per_s"] else 0.0
    print(f"1 process : {one['images_per_s']:9.1f} images/s ({one['rows']} rows in {one['seconds']:.1f} s)")
    print(f"2 processes: {two['images_per_s']:9.1f} images/s ({two['rows']} rows in {two['seconds']:.1f} s)")
    print(f"ratio 2/1  : {ratio:.2f}x")

    train = caches["killed"] / args.arch / "train"
    total_train = len(list((caches["one"] / args.arch / "train").glob("shard-*.json")))
    kill_after = args.kill_after or max(1, total_train // 3)
    proc = subprocess.Popen(command(configs["killed"], args, 2), env=env(args), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None and len(list(train.glob("shard-*.json"))) < kill_after:
        time.sleep(0.05)
    killed_at = len(list(train.glob("shard-*.json")))
    finished_first = proc.poll() is not None
    if not finished_first:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    left = list(caches["killed"].rglob("*.tmp"))  # a shard the kill interrupted (never served)
    resumed = run(command(configs["killed"], args, 2), args)
    reference, hashes = shard_hashes(caches["one"]), {n: shard_hashes(c) for n, c in caches.items()}
    checks = {"two_equals_one": hashes["two"] == reference, "resumed_equals_unbroken": hashes["killed"] == reference,
              "resume_extracted_less": resumed["rows"] < one["rows"]}
    print(f"killed with {killed_at}/{total_train} train shards written"
          f"{' (the run had already finished)' if finished_first else ''}; temp files left: {len(left)}; "
          f"resume extracted {resumed['rows']} of {one['rows']} rows in {resumed['seconds']:.1f} s")
    print(f"shards identical (sha256 of all {len(reference)}): 2 processes vs 1: {checks['two_equals_one']}; "
          f"killed+resumed vs unbroken: {checks['resumed_equals_unbroken']}")
    atomic_write_json(Path(args.out), {
        "machine": detect().line(), "images": args.images, "side": args.side, "arch": args.arch,
        "shard_rows": args.shard_rows, "batch_size": args.batch_size, "threads_per_process": args.threads,
        "workers_per_process": args.workers, "one_process": one, "two_processes": two,
        "ratio_two_over_one": round(ratio, 3),
        "kill": {"train_shards_before_kill": killed_at, "train_shards": total_train,
                 "run_finished_before_kill": finished_first, "resume": resumed},
        "checks": checks, "shards": len(reference)})
    if not all(checks.values()):
        sys.exit("a check failed: " + ", ".join(k for k, v in checks.items() if not v))


if __name__ == "__main__":
    main(parse_args())
