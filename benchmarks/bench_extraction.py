"""Feature-extraction speed: a plain loop vs ``features.extractor.extract_features``, same images.

    python benchmarks/bench_extraction.py            # 256 images at 224×224 (minutes on 2 CPU cores)
    python benchmarks/bench_extraction.py --quick    # 64 images at 112×112, best of 2 (under a minute)
    python benchmarks/bench_extraction.py --bf16 --compile --repeats 2   # more contestants
    python benchmarks/bench_extraction.py --device cuda --no-plain --bf16 --compile --repeats 3 \
        --images 4096 --batch-size 256 --json out.json                 # on a GPU (scripts/gpu_check.sh)

Contestants, on the same uint8 CIFAR-sized images and the same ResNet50 (``weights=None``, seeded):
  plain  the loop people write first: per-sample torchvision transforms on PIL images (Resize,
         ToTensor, Normalize), batches of 64, ``torch.no_grad``, NCHW, a forward hook on ``avgpool``
         (the whole network runs, ``fc`` included), fp32.
  ours   whole-batch uint8 → float transform, ``torch.inference_mode``, channels-last weights and
         inputs, forward stopped at the feature layer, fp32, batches of --batch-size.
  ours+bf16     the same under ``torch.autocast(dtype=bfloat16)`` (only with --bf16).
  ours+compile  the same through ``compile=True`` (only with --compile; use --repeats 2, the
                first round includes ~30 s of compilation).
Prints the machine line, then images/s (best of --repeats, contestants run round-robin), the ratio
to plain (or to ours with --no-plain), and the relative difference of the features to the
reference contestant. On CUDA every round ends with a synchronisation; plain runs on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.batch_transform import BatchTransform  # noqa: E402
from common.hardware import detect  # noqa: E402
from components.backbones import default_layer  # noqa: E402
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
         compile: bool = False, device: str = "cpu") -> torch.Tensor:
    transform = BatchTransform(size, 3, list(MEAN), list(STD), hflip=False, rotation_degrees=0.0)
    out = extract_features(extractor, images, transform, batch_size, device, precision,
                           channels_last=True, progress=False, compile=compile)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return out


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
    parser.add_argument("--device", default="cpu", help="where ours runs: cpu, cuda, cuda:1, ...")
    parser.add_argument("--arch", default="resnet50", choices=["resnet50", "mobilenet_v3_large", "vgg16"],
                        help="backbone (features at its default layer; plain hooks ResNet50's avgpool only)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain loop (ours is the reference)")
    parser.add_argument("--json", default=None, help="also write {contestant: images/s, ...} to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(detect().line(), flush=True)
    if args.quick:
        args.images, args.image_size, args.repeats = 64, 112, max(args.repeats, 2)

    if args.arch != "resnet50" and not args.no_plain:
        raise SystemExit("error: the plain loop hooks ResNet50's avgpool; add --no-plain for other archs")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8)
    base = getattr(torchvision.models, args.arch)(weights=None).eval()
    layer, dev = default_layer(args.arch), args.device
    contestants = {} if args.no_plain else {"plain": lambda m: plain_loop(m, images, args.image_size)}
    contestants["ours"] = lambda m: ours(m, images, args.image_size, args.batch_size, "32", device=dev)
    if args.bf16:
        contestants["ours+bf16"] = lambda m: ours(m, images, args.image_size, args.batch_size, "bf16", device=dev)
    if args.compile:
        contestants["ours+compile"] = lambda m: ours(m, images, args.image_size, args.batch_size, "32", True, dev)
        if args.bf16:
            contestants["ours+bf16+compile"] = lambda m: ours(m, images, args.image_size, args.batch_size,
                                                              "bf16", True, dev)
    reference = next(iter(contestants))
    # one copy each (ours converts its copy to channels-last); ours' extractors live across rounds
    models = {name: copy.deepcopy(base) if name == "plain" else FeatureExtractor(copy.deepcopy(base), layer, args.arch)
              for name in contestants}
    best, outputs = {}, {}
    for _ in range(args.repeats):
        for name, run in contestants.items():
            start = time.perf_counter()
            outputs[name] = run(models[name])
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)

    print(f"{args.arch} {layer} features, {args.images} images at {args.image_size}×{args.image_size}, "
          f"{torch.get_num_threads()} threads, device {dev} (plain: cpu), best of {args.repeats}")
    print(f"{'contestant':<18s} {'images/s':>9s} {'vs ' + reference:>9s} {'rel. diff':>10s}")
    rates = {}
    for name in contestants:
        rates[name] = args.images / best[name]
        # features differ slightly: PIL's and torch's bilinear resize differ near the borders
        diff = ((outputs[name] - outputs[reference]).norm() / outputs[reference].norm()).item()
        print(f"{name:<18s} {rates[name]:9.2f} {best[reference] / best[name]:8.2f}× {diff:10.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": detect().line(), "arch": args.arch,
                                               "image_size": args.image_size, "images": args.images,
                                               "device": dev, "images_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
