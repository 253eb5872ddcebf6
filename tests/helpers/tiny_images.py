"""A tiny in-memory image datamodule and backbone checkpoints, for fast offline tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules.batch_transform import BatchTransform
from datamodules.image_datamodule import ImageDataModule
from helpers.cifar100_fixture import class_images
from components.backbones import build_backbone


class TinyImages(ImageDataModule):
    """Separable synthetic images (colour + stripes per class), uint8 (N, 3, side, side).

    Args:
        n_train: images in the official-train part (val is taken from it).
        n_test: images in the test split.
        num_classes: classes (labels cycle through them).
        side: stored image side; ``image_size`` resizes for the model.
        val_size, train_subset, seed, batch_size: as in ``ImageDataModule``.
        image_size: model input side (``None`` keeps ``side``).
        data_seed: seeds the pixel noise (another value = other images).
    """

    def __init__(self, n_train: int = 40, n_test: int = 16, num_classes: int = 4, side: int = 32,
                 val_size: int = 8, train_subset: int | None = None, seed: int = 0,
                 batch_size: int = 16, image_size: int | None = None, data_seed: int = 0) -> None:
        transform = BatchTransform(image_size, 3, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], False, 0.0)
        super().__init__(batch_size, val_size, train_subset, seed, transform)
        self.save_hyperparameters()
        self.num_classes = num_classes
        self.class_names = tuple(f"c{i}" for i in range(num_classes))

    def load_split_tensors(self, train: bool) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        n = hp.n_train if train else hp.n_test
        rng = np.random.default_rng(hp.data_seed * 2 + int(train))
        labels = np.arange(n) % hp.num_classes
        rng.shuffle(labels)
        images = torch.from_numpy(class_images(labels, rng, hp.side))
        return images, torch.from_numpy(labels).long()


def save_random_backbone(path: str | Path, arch: str, num_classes: int, seed: int = 0) -> Path:
    """Save a seeded random-init ``arch`` state_dict (what ExportWeights writes) to ``path``."""
    torch.manual_seed(seed)
    model = build_backbone(arch, num_classes, pretrained=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def tiny_backbones(folder: str | Path) -> dict[str, Path]:
    """Seeded random checkpoints of two small, different CNNs (resnet18, mobilenet_v3_small), 4 classes."""
    folder = Path(folder)
    return {"r18": save_random_backbone(folder / "r18.pth", "resnet18", 4, seed=0),
            "mb": save_random_backbone(folder / "mb.pth", "mobilenet_v3_small", 4, seed=1)}


def tiny_activation_dm(cache_dir: str | Path, checkpoints: dict[str, Path], names=("r18", "mb"),
                       images: TinyImages | None = None, **kwargs):
    """An ``ActivationDataModule`` over ``TinyImages`` for the named tiny backbones (quiet)."""
    from datamodules.activations import ActivationDataModule, BackboneSpec

    arch = {"r18": "resnet18", "mb": "mobilenet_v3_small"}
    specs = [BackboneSpec(name, arch[name], str(checkpoints[name])) for name in names]
    # precision 32: the same cache on every machine (auto would pick bf16 where it is native)
    kwargs = {"batch_size": 8, "extract_batch_size": 16, "progress": False, "precision": "32", **kwargs}
    return ActivationDataModule(specs, images or TinyImages(), cache_dir=str(cache_dir), **kwargs)
