"""Feature-extraction speed: a plain loop vs ``features.extractor.extract_features``, same images.

    python benchmarks/bench_extraction.py            # 256 images at 224×224 (minutes on 2 CPU cores)
    python benchmarks/bench_extraction.py --quick    # 64 images at 112×112, best of 2 (under a minute)
    python benchmarks/bench_extraction.py --bf16 --compile --repeats 2   # more contestants

Contestants, on the same uint8 CIFAR-sized images and the same ResNet50 (``weights=None``, seeded):
  plain  the loop people write first: per-sample torchvision transforms on PIL images (Resize,
         ToTensor, Normalize), batches of 64, ``torch.no_grad``, NCHW, a forward hook on ``avgpool``
         (the whole network runs, ``fc`` included), fp32.
  ours   whole-batch uint8 → float transform, ``torch.inference_mode``, channels-last weights and
         inputs, forward stopped at the feature layer, fp32, batches of --batch-size.
  ours+bf16     the same under ``torch.autocast(dtype=bfloat16)`` (only with --bf16).
  ours+compile  the same through ``compile=True`` (only with --compile; use --repeats 2, the
                first round includes ~30 s of compilation).
Prints images/s (best of --repeats, contestants run round-robin), the ratio to plain, and the
relative difference ‖ours - plain‖ / ‖plain‖ of the features.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.batch_transform import BatchTransform  # noqa: E402
from features.extractor import FeatureExtractor, extract_features  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def plain_loop(model: torch.nn.Module, images: torch.Tensor, size: int, batch_size: int = 64) -> torch.Tensor:
    """The baseline: per-sample PIL preprocessing, no_grad, NCHW, forward hook, full forward pass."""
    preprocess = transforms.Compose([transforms.Resize(size), transforms.ToTensor(),
                                     transforms.Normalize(MEAN, STD)])
    captured = []
    handle = model.avgpool.register_forward_hook(lambda m, i, o: captured.append(o.flatten(1)))
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                pils = [transforms.functional.to_pil_image(img) for img in images[start:start + batch_size]]
                model(torch.stack([preprocess(p) for p in pils]))
    finally:
        handle.remove()
    return torch.cat(captured)


def ours(extractor: FeatureExtractor, images: torch.Tensor, size: int, batch_size: int, precision: str,
         compile: bool = False) -> torch.Tensor:
    transform = BatchTransform(size, 3, list(MEAN), list(STD), hflip=False, rotation_degrees=0.0)
    return extract_features(extractor, images, transform, batch_size, "cpu", precision,
                            channels_last=True, progress=False, compile=compile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="number of images")
    parser.add_argument("--image-size", type=int, default=224, help="side the model sees")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="ours: images per forward pass (on CPU at 224×224, 16-32 beat 64-256: "
                             "smaller activations stay in cache and need fewer page faults)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed rounds, round-robin; the best is reported (the first includes oneDNN's kernel set-up)")
    parser.add_argument("--bf16", action="store_true", help="also time ours under bf16 autocast")
    parser.add_argument("--compile", action="store_true",
                        help="also time ours with compile=True (its first round includes compilation)")
    parser.add_argument("--quick", action="store_true", help="64 images at 112×112")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.image_size, args.repeats = 64, 112, max(args.repeats, 2)

    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    base = torchvision.models.resnet50(weights=None).eval()
    contestants = {
        "plain": lambda m: plain_loop(m, images, args.image_size),
        "ours": lambda m: ours(m, images, args.image_size, args.batch_size, "32"),
    }
    if args.bf16:
        contestants["ours+bf16"] = lambda m: ours(m, images, args.image_size, args.batch_size, "bf16")
    if args.compile:
        contestants["ours+compile"] = lambda m: ours(m, images, args.image_size, args.batch_size, "32", True)
    # one copy each (ours converts its copy to channels-last); ours' extractors live across rounds
    models = {name: copy.deepcopy(base) if name == "plain" else FeatureExtractor(copy.deepcopy(base), "avgpool")
              for name in contestants}
    best, outputs = {}, {}
    for _ in range(args.repeats):
        for name, run in contestants.items():
            start = time.perf_counter()
            outputs[name] = run(models[name])
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)

    print(f"ResNet50 avgpool features, {args.images} images at {args.image_size}×{args.image_size}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, best of {args.repeats}")
    print(f"{'contestant':<12s} {'images/s':>9s} {'vs plain':>9s} {'rel. diff':>10s}")
    for name in contestants:
        rate = args.images / best[name]
        # features differ slightly: PIL's and torch's bilinear resize differ near the borders
        diff = ((outputs[name] - outputs["plain"]).norm() / outputs["plain"].norm()).item()
        print(f"{name:<12s} {rate:9.2f} {best['plain'] / best[name]:8.2f}× {diff:10.1e}")


if __name__ == "__main__":
    main()
