"""Fashion-MNIST (Xiao et al., 2017) through torchvision's loader, held in memory as uint8 tensors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from torch import Tensor
from torchvision.datasets import FashionMNIST

from common.errors import UserError
from common.io import atomic_path, check_writable_dir
from datamodules.batch_transform import BatchTransform
from datamodules.image_datamodule import ImageDataModule, check_image_options

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _gz_folder(folder: Path) -> bool:
    return all((folder / f"{name}.gz").is_file() for name in RAW_FILES)


def locate_fashion_mnist(data_dir: str | Path, debian_dir: str | Path, download: bool) -> Path:
    """Make ``data_dir/FashionMNIST/raw`` hold the four idx files and return ``data_dir``.

    Looks in this order: idx files already in ``data_dir`` (as torchvision lays them out, or the four
    ``.gz`` files in ``data_dir`` itself); Debian's ``dataset-fashion-mnist`` folder; torchvision's
    download. Each ``.gz`` is unpacked atomically, so an interrupted unpack is never mistaken for data.
    """
    data_dir = Path(data_dir)
    raw = data_dir / "FashionMNIST" / "raw"
    if all((raw / name).is_file() for name in RAW_FILES):
        return data_dir
    for source in (raw, data_dir, Path(debian_dir)):
        if _gz_folder(source):
            check_writable_dir(raw, "data_dir")
            for name in RAW_FILES:
                if not (raw / name).is_file():
                    with gzip.open(source / f"{name}.gz", "rb") as src, atomic_path(raw / name) as tmp:
                        with open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            return data_dir
    if download:
        check_writable_dir(data_dir, "data_dir")
        try:
            FashionMNIST(str(data_dir), train=True, download=True)
            FashionMNIST(str(data_dir), train=False, download=True)
            return data_dir
        except Exception:  # any network failure ends in the one message below
            pass
    raise UserError(
        f"Fashion-MNIST not found in '{data_dir}'. Fix one of: put the four idx files "
        f"(train/t10k images/labels, .gz or unpacked) in '{raw}'; on Debian/Ubuntu run "
        f"'apt-get install dataset-fashion-mnist' (files in {debian_dir}); or allow the download "
        f"(data.download: true) on a machine with internet"
    )


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST: 60k train (split seeded into train/val), official 10k test; 10 classes.

    Pixels are in [0, 1] unless ``mean``/``std`` are given. ``channels: 3`` and ``image_size`` let
    ImageNet-style CNN backbones take the 28×28 grey images.

    Args:
        data_dir: folder searched first and written to (unpacked idx files, downloads).
        batch_size: samples per batch.
        val_size: images held out of the 60k training images for validation / early stopping.
        train_subset: train on only this many of the remaining images (seeded choice); ``None`` = all.
        seed: seeds the train/val split and the per-epoch shuffling.
        image_size: side of the images the model sees (``None`` keeps 28).
        channels: 1 (grey) or 3 (grey repeated, for ImageNet backbones).
        mean: per-channel mean to subtract after scaling to [0, 1], or ``None``.
        std: per-channel std to divide by, or ``None``.
        hflip: random left-right flips while training.
        rotation_degrees: random rotations within ± this many degrees while training (0 = off).
        debian_dir: where Debian's ``dataset-fashion-mnist`` package puts the ``.gz`` files.
        download: try torchvision's download when the files are found nowhere else.
    """

    num_classes = 10
    class_names = CLASS_NAMES

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 256,
        val_size: int = 5000,
        train_subset: int | None = None,
        seed: int = 0,
        image_size: int | None = None,
        channels: int = 1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        hflip: bool = False,
        rotation_degrees: float = 0.0,
        debian_dir: str = str(DEBIAN_DIR),
        download: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise UserError(f"data.channels must be 1 or 3, got {channels}")
        check_image_options(image_size, channels, mean, std, rotation_degrees)
        transform = BatchTransform(image_size, channels, mean, std, hflip, rotation_degrees)
        super().__init__(batch_size, val_size, train_subset, seed, transform)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.debian_dir = debian_dir
        self.download = download

    def prepare_data(self) -> None:
        locate_fashion_mnist(self.data_dir, self.debian_dir, self.download)

    def load_split_tensors(self, train: bool) -> tuple[Tensor, Tensor]:
        root = locate_fashion_mnist(self.data_dir, self.debian_dir, self.download)
        dataset = FashionMNIST(str(root), train=train, download=False)
        return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()
