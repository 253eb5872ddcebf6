"""A tiny CIFAR-100 set in the real ``cifar-100-python`` on-disk format, for offline tests.

torchvision's ``CIFAR100`` reads three pickles from ``<root>/cifar-100-python/``: ``train`` and
``test`` (dicts with ``data`` uint8 (N, 3072) in CHW order, ``fine_labels``, ``coarse_labels``,
``filenames``, ``batch_label``) and ``meta`` (``fine_label_names``, ``coarse_label_names``).
The official md5 sums will not match, so load it with ``CIFAR100DataModule(verify_checksums=False)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def class_images(labels: np.ndarray, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """uint8 (N, 3, side, side) images whose colour and stripe period depend on the label (separable)."""
    n = len(labels)
    hue = (labels[:, None] * np.array([37, 91, 53])[None, :]) % 256  # (N, 3) per-class colour
    xs = np.arange(side)
    stripes = ((xs[None, :] // (1 + labels[:, None] % 4)) % 2).astype(np.float32)  # (N, side)
    images = hue[:, :, None, None] * (0.6 + 0.4 * stripes[:, None, None, :])
    images = images + rng.normal(0, 8, size=(n, 3, side, side))
    return np.clip(images, 0, 255).astype(np.uint8)


def write_tiny_cifar100(root: str | Path, n_train: int = 60, n_test: int = 20, seed: int = 0,
                        num_classes: int = 100) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}``; labels cycle through ``num_classes``.

    Returns ``root`` (what ``CIFAR100DataModule(data_dir=...)`` takes).
    """
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        data = class_images(labels, rng).reshape(n, 3 * 32 * 32)
        entry = {"batch_label": f"tiny {name} batch", "data": data,
                 "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                 "filenames": [f"{name}_{i:05d}.png" for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=2)
    meta = {"fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"super_{i:02d}" for i in range(20)]}
    with open(folder / "meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return root
