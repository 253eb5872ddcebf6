"""CIFAR-100 (Krizhevsky, 2009) through torchvision's loader, held in memory as uint8 tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR100, VisionDataset
from torchvision.datasets.utils import check_integrity

from common.errors import UserError
from common.io import check_writable_dir
from common.safe_load import load_numpy_pickle
from datamodules.batch_transform import BatchTransform
from datamodules.image_datamodule import ImageDataModule, check_image_options

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _SafeCIFAR100(CIFAR100):
    """torchvision's CIFAR100, unpickled with ``load_numpy_pickle`` (arrays and lists only, so nothing
    in a file can run code) and, with ``verify=False``, without the md5 checks (for copies that are
    not the official files)."""

    def __init__(self, root: str, train: bool = True, download: bool = False, verify: bool = True) -> None:
        self.verify = verify
        VisionDataset.__init__(self, root)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted")
        folder = Path(self.root) / self.base_folder
        data, targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            entry = load_numpy_pickle(folder / name, "CIFAR-100 file")
            if not isinstance(entry, dict) or "data" not in entry or "fine_labels" not in entry:
                raise UserError(f"CIFAR-100 file '{folder / name}' has no 'data'/'fine_labels'; restore "
                                f"the official cifar-100-python files")
            data.append(entry["data"])
            targets.extend(entry["fine_labels"])
        try:
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        except ValueError:
            raise UserError(f"CIFAR-100 files in '{folder}' do not hold 3x32x32 images; restore the "
                            f"official cifar-100-python files") from None
        self.targets = targets
        self._load_meta()

    def _check_integrity(self) -> bool:
        if self.verify:
            return super()._check_integrity()
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if self.verify and not check_integrity(str(path), self.meta["md5"]):
            raise RuntimeError("Dataset metadata file not found or corrupted")
        data = load_numpy_pickle(path, "CIFAR-100 meta file")
        if not isinstance(data, dict) or self.meta["key"] not in data:
            raise UserError(f"CIFAR-100 meta file '{path}' has no '{self.meta['key']}'; restore it")
        self.classes = data[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR100DataModule(ImageDataModule):
    """CIFAR-100: 50k train (split seeded into train/val), official 10k test; 100 classes.

    Defaults are the ImageNet-backbone recipe: resize to 224, ImageNet mean/std, random flips and
    small rotations while training.

    Args:
        data_dir: folder holding (or receiving) ``cifar-100-python/``.
        batch_size: samples per batch.
        val_size: images held out of the 50k training images for validation / early stopping.
        train_subset: train on only this many of the remaining images (seeded choice); ``None`` = all.
        seed: seeds the train/val split and the per-epoch shuffling.
        image_size: side of the images the model sees (224 for ImageNet-pretrained backbones).
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel std divided.
        hflip: random left-right flips while training.
        rotation_degrees: random rotations within ± this many degrees while training (0 = off).
        download: let torchvision download the archive when it is not in ``data_dir``.
        verify_checksums: check the official md5 sums (turn off only for custom copies).
    """

    num_classes = 100

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        val_size: int = 5000,
        train_subset: int | None = None,
        seed: int = 0,
        image_size: int | None = 224,
        mean: list[float] | None = list(IMAGENET_MEAN),
        std: list[float] | None = list(IMAGENET_STD),
        hflip: bool = True,
        rotation_degrees: float = 15.0,
        download: bool = True,
        verify_checksums: bool = True,
    ) -> None:
        check_image_options(image_size, 3, mean, std, rotation_degrees)
        transform = BatchTransform(image_size, 3, mean, std, hflip, rotation_degrees)
        super().__init__(batch_size, val_size, train_subset, seed, transform)
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.download = download
        self.verify_checksums = verify_checksums
        self.class_names: tuple[str, ...] = ()

    def _dataset(self, train: bool) -> CIFAR100:
        try:
            return _SafeCIFAR100(self.data_dir, train=train, download=False, verify=self.verify_checksums)
        except RuntimeError:
            pass
        if self.download:
            check_writable_dir(self.data_dir, "data_dir")
            try:
                return _SafeCIFAR100(self.data_dir, train=train, download=True, verify=self.verify_checksums)
            except UserError:
                raise
            except Exception:  # any network failure ends in the one message below
                pass
        raise UserError(
            f"CIFAR-100 not found (or corrupted) in '{self.data_dir}/cifar-100-python'. Fix one of: "
            f"unpack cifar-100-python.tar.gz into '{self.data_dir}'; allow the download "
            f"(data.download: true) on a machine with internet; or point data.data_dir at a copy"
        )

    def prepare_data(self) -> None:
        self._dataset(train=True)
        self._dataset(train=False)

    def load_split_tensors(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self._dataset(train)
        self.class_names = tuple(dataset.classes)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(dataset.targets, dtype=torch.long)
