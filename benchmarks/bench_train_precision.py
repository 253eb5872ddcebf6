"""Backbone training step and inference pass in fp32 vs bf16 autocast, side by side, on the CPU.

    python benchmarks/bench_train_precision.py                   # ResNet50 and MobileNetV3-Large, 32 px
    python benchmarks/bench_train_precision.py --quick           # one arch, tiny batch (seconds)
    python benchmarks/bench_train_precision.py --arch vgg16 --image-size 64

The check behind ``trainer.precision: auto`` on CPUs (``common.auto_options.CPU_BF16_TRAINING_FASTER``):
bf16-mixed is chosen for an arch only where it beats fp32 here. Each round times one training step
(AdamW, channels-last, batch --batch-size) and one inference pass over --eval-batch images, in fp32
and under ``torch.autocast("cpu", bfloat16)``, alternating, so background load hits both alike.
Reports process CPU time on one thread (the work done) unless --wall.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.hardware import detect  # noqa: E402


def timed(job, clock) -> float:
    start = clock()
    job()
    return clock() - start


def bench(arch: str, size: int, batch: int, eval_batch: int, rounds: int, clock) -> dict[str, float]:
    """Min over ``rounds`` of the fp32 / bf16 time of a train step and an inference pass; seconds."""
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(num_classes=10).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    xe = torch.randn(eval_batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(bf16: bool) -> None:
        net.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(xe)
        net.train()

    for bf16 in (False, True):  # warm-up: oneDNN primitive creation
        step(bf16)
        infer(bf16)
    times: dict[str, list[float]] = {k: [] for k in ("train fp32", "train bf16", "infer fp32", "infer bf16")}
    for _ in range(rounds):
        for bf16 in (False, True):
            tag = "bf16" if bf16 else "fp32"
            times[f"train {tag}"].append(timed(lambda: step(bf16), clock))
            times[f"infer {tag}"].append(timed(lambda: infer(bf16), clock))
    return {k: min(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", action="append", help="torchvision model (repeatable); default resnet50, "
                   "mobilenet_v3_large")
    p.add_argument("--image-size", type=int, default=32, help="input side (Fashion-MNIST study: 32)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch (the study's: 64)")
    p.add_argument("--eval-batch", type=int, default=250, help="images per inference pass")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wall", action="store_true", help="wall-clock time with torch's threads instead")
    p.add_argument("--quick", action="store_true", help="resnet18, batch 8, 2 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.batch_size, args.eval_batch, args.rounds = args.arch or ["resnet18"], 8, 16, 2
    if not args.wall:
        torch.set_num_threads(1)
    clock = time.perf_counter if args.wall else time.process_time
    print(detect().line(), flush=True)
    print(f"{args.image_size} px, train batch {args.batch_size}, inference batch {args.eval_batch}, min of "
          f"{args.rounds} rounds, {'wall-clock' if args.wall else 'process CPU'} time\n")
    print("| arch | train fp32 s | train bf16 s | train fp32/bf16 | infer fp32 s | infer bf16 s | infer fp32/bf16 |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.arch or ["resnet50", "mobilenet_v3_large"]:
        t = bench(arch, args.image_size, args.batch_size, args.eval_batch, args.rounds, clock)
        print(f"| {arch} | {t['train fp32']:.3f} | {t['train bf16']:.3f} | {t['train fp32'] / t['train bf16']:.2f} | "
              f"{t['infer fp32']:.3f} | {t['infer bf16']:.3f} | {t['infer fp32'] / t['infer bf16']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
