"""Activation maximisation speed: features/second, all features in one batch vs one at a time.

Same backbone, SAE, features, seeds and steps for both contestants, run round-robin in one process
(timings on a shared machine are noisy: compare only numbers from the same run). Each job draws its
initialisation and jitter from its own seed, so both contestants must give the same images up to float
rounding (which a long ascent amplifies: see ``analysis.universality.activation_max``); the largest
pixel difference and the largest relative difference of the reached pre-activation are printed.

    python benchmarks/bench_activation_max.py            # ResNet50 + MobileNetV3-Large at 32 px, 500 steps
    python benchmarks/bench_activation_max.py --steps 100 --threads 1   # a few minutes on a busy 2-core box
    python benchmarks/bench_activation_max.py --quick    # seconds: ResNet18 at 32 px, 5 steps
    python benchmarks/bench_activation_max.py --arch resnet50 --image-size 224 --features 16 --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.universality.activation_max import ActMaxSettings, maximize_latents  # noqa: E402
from analysis.universality.feature_vis import magnitude_template  # noqa: E402
from analysis.universality.feature_model import FeatureHead, L2Normalize, LatentObjective, frozen  # noqa: E402
from components.backbones import FeatureExtractor, build_backbone, default_layer  # noqa: E402
from common.hardware import detect  # noqa: E402
from components.sparse_coder import SparseCoder, SparseCoderConfig  # noqa: E402


def build_objective(arch: str, image_size: int, n_latents: int, channels: int) -> tuple[LatentObjective, list]:
    """Random-weight backbone → default feature layer → L2 → random TopK SAE (speed does not
    depend on the weights). Input: grey or RGB pixels in [0, 1], normalised like the study's data."""
    torch.manual_seed(0)
    net = build_backbone(arch, 10, pretrained=False).eval()
    head = FeatureHead(FeatureExtractor(net, default_layer(arch), arch), L2Normalize()).eval()
    with torch.no_grad():
        dim = head(torch.zeros(1, 3, image_size, image_size)).shape[1]
    sae = SparseCoder(dim, SparseCoderConfig(n_latents=n_latents, k=32), seed=0)
    objective = LatentObjective(lambda x: (x.expand(-1, 3, -1, -1) - 0.286) / 0.353, head, sae)
    return objective, [head, sae]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="torchvision model (repeatable); default resnet50 and "
                   "mobilenet_v3_large")
    p.add_argument("--image-size", type=int, default=32, help="backbone input side (Fashion-MNIST study: 32)")
    p.add_argument("--channels", type=int, default=1, help="image channels optimised (1: grey, as Fashion-MNIST)")
    p.add_argument("--features", type=int, default=8, help="latents optimised")
    p.add_argument("--steps", type=int, default=500, help="gradient steps per feature")
    p.add_argument("--method", choices=["fourier", "pixel", "maco"], default="fourier",
                   help="accentuation needs seed images: see benchmarks/bench_feature_vis.py")
    p.add_argument("--n-latents", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=2, help="rounds; min and median reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="ResNet18, 4 features, 5 steps, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.features, args.steps, args.repeats = args.arch or ["resnet18"], 4, 5, 1
    archs = args.arch or ["resnet50", "mobilenet_v3_large"]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(detect().line(), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.features} features, "
          f"{args.steps} steps, {args.image_size}px, {args.channels} channel(s), {args.method}")
    print(f"{'arch':<22}{'contestant':<18}{'min s':>9}{'median s':>10}{'features/s':>12}{'speed-up':>10}")
    latents = list(range(args.features))
    shape = (args.channels, args.image_size, args.image_size)
    # maco's amplitude template: from random images here (speed does not depend on it)
    magnitude = magnitude_template(torch.rand(64, *shape, generator=torch.Generator().manual_seed(0)), shape)
    for arch in archs:
        objective, modules = build_objective(arch, args.image_size, args.n_latents, args.channels)
        contestants = {"batched": args.features, "one-at-a-time": 1}
        times = {name: [] for name in contestants}
        images = {}
        with frozen(*modules):
            for batch in contestants.values():  # warm-up: first calls pay for allocation and kernel choice
                maximize_latents(objective, latents[:batch], shape,
                                 ActMaxSettings(method=args.method, steps=1, batch_size=batch), magnitude=magnitude)
            for _ in range(args.repeats):
                for name, batch in contestants.items():
                    settings = ActMaxSettings(steps=args.steps, method=args.method,
                                              batch_size=batch, seed=0)
                    start = time.perf_counter()
                    res = maximize_latents(objective, latents, shape, settings, magnitude=magnitude)
                    times[name].append(time.perf_counter() - start)
                    images[name] = res
        base = min(times["one-at-a-time"])
        for name in contestants:
            best = min(times[name])
            print(f"{arch:<22}{name:<18}{best:>9.2f}{statistics.median(times[name]):>10.2f}"
                  f"{args.features / best:>12.3f}{base / best:>9.2f}×")
        a, b = images["batched"], images["one-at-a-time"]
        pixels = (a.images - b.images).abs().max().item()
        reached = ((a.final - b.final).abs() / b.final.abs().clamp_min(1e-6)).max().item()
        print(f"{arch:<22}batched vs one-at-a-time: largest pixel difference {pixels:.2e}, "
              f"reached pre-activation differs by at most {reached:.1%} (mean {b.final.mean():.3f})")


if __name__ == "__main__":
    main()
