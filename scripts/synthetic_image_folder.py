"""Write a synthetic ImageFolder tree of small JPEGs (for tests and the extraction benchmark).

    python scripts/synthetic_image_folder.py OUT --images 20000 --classes 10 --side 32

Layout: ``OUT/train/c000/000000.jpg ...`` and ``OUT/val/c000/...`` (one image in ``val_fraction``
goes to ``val``); each image is seeded noise on a per-class colour, so classes differ. A finished
tree is marked by ``OUT/complete.json`` (written last, atomically), and an existing complete tree
with the same settings is kept as is.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.io import atomic_path, atomic_write_json  # noqa: E402


def write_image_folder(out: str | Path, images: int, classes: int = 10, side: int = 32,
                       val_fraction: float = 0.2, seed: int = 0, quality: int = 90) -> Path:
    """Write (or keep, if already complete with these settings) ``images`` JPEGs under ``out``."""
    from PIL import Image

    out = Path(out)
    settings = {"images": images, "classes": classes, "side": side, "val_fraction": val_fraction,
                "seed": seed, "quality": quality}
    marker = out / "complete.json"
    try:
        if json.loads(marker.read_text()) == settings:
            return out
    except (OSError, ValueError):
        pass
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(classes, 3))
    every = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
    for i in range(images):
        label = i % classes
        split = "val" if every and (i // classes) % every == every - 1 else "train"
        pixels = np.clip(colours[label] + rng.normal(0, 40, size=(side, side, 3)), 0, 255).astype(np.uint8)
        path = out / split / f"c{label:03d}" / f"{i:06d}.jpg"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    atomic_write_json(marker, settings)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_image_folder(args.out, args.images, args.classes, args.side, seed=args.seed))


if __name__ == "__main__":
    main()
