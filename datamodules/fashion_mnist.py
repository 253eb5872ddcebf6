"""Fashion-MNIST (Xiao et al., 2017) through torchvision's loader, held in memory as uint8 tensors."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
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
#: MD5 of the four unpacked idx files as published by Fashion-MNIST's authors (Xiao et al., 2017;
#: the same values tensorflow-datasets lists). Checked on the unpacked bytes: torchvision's
#: ``FashionMNIST.resources`` MD5s are of its own ``.gz`` files, and a repackaged ``.gz`` (Debian's)
#: has other bytes around the same data.
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
#: idx header of each file: magic number (0x0801 = uint8 vector, 0x0803 = uint8 3-d array) and dims.
IDX_HEADERS = {
    "train-images-idx3-ubyte": (0x0803, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (0x0801, (60000,)),
    "t10k-images-idx3-ubyte": (0x0803, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (0x0801, (10000,)),
}
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
                    unpack_checked(source / f"{name}.gz", raw / name)
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


class _Unreadable(Exception):
    """Reading the ``.gz`` failed (truncated, not gzip, bad CRC)."""


def unpack_checked(gz: Path, target: Path) -> Path:
    """Unpack ``gz`` to ``target`` through a temporary file beside it, renamed only once the bytes have
    the official MD5 (``RAW_MD5``); a bad file is a one-line ``UserError`` naming it, and nothing of
    the unpack is left behind."""
    digest = hashlib.md5()

    def chunks(src: gzip.GzipFile):
        while True:
            try:
                chunk = src.read(1 << 20)
            except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
                raise _Unreadable(str(err) or type(err).__name__) from None
            if not chunk:
                return
            yield chunk

    try:
        with gzip.open(gz, "rb") as src, atomic_path(target) as tmp:
            with open(tmp, "wb") as dst:
                for chunk in chunks(src):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != RAW_MD5[target.name]:
                raise UserError(f"'{gz}' unpacks to data that is not the official Fashion-MNIST "
                                f"{target.name} (MD5 {digest.hexdigest()}, expected {RAW_MD5[target.name]}); "
                                f"replace it with the original file")
    except _Unreadable as err:
        raise UserError(f"'{gz}' is truncated or not a gzip file ({err}); replace it with the original "
                        f"Fashion-MNIST file (or reinstall dataset-fashion-mnist)") from None
    except OSError as err:
        raise UserError(f"cannot unpack '{gz}' into '{target.parent}' ({err.strerror or err}); free some "
                        f"space or set data.data_dir to a folder you can write to") from None
    return target


def check_idx_file(path: Path) -> None:
    """A one-line ``UserError`` unless ``path`` has the idx header and size of its Fashion-MNIST file."""
    magic, dims = IDX_HEADERS[path.name]
    expected_size = 4 + 4 * len(dims) + math.prod(dims)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            header = fh.read(4 + 4 * len(dims))
    except OSError as err:
        raise UserError(f"cannot read '{path}' ({err.strerror}); check its permissions") from None
    got = struct.unpack(f">I{len(dims)}I", header) if len(header) == 4 + 4 * len(dims) else None
    if got is None or got[0] != magic or tuple(got[1:]) != dims or size != expected_size:
        shown = f"magic 0x{got[0]:08x}, dims {list(got[1:])}" if got else "no header"
        raise UserError(f"'{path}' is not the Fashion-MNIST {path.name} file ({shown}, {size} bytes; "
                        f"expected magic 0x{magic:08x}, dims {list(dims)}, {expected_size} bytes); delete "
                        f"it, and it is unpacked again from the .gz")


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
        for name in RAW_FILES[:2] if train else RAW_FILES[2:]:
            check_idx_file(Path(root) / "FashionMNIST" / "raw" / name)
        dataset = FashionMNIST(str(root), train=train, download=False)
        return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()
