"""``ImageFolderDataModule``: an ImageNet-style folder of image files, decoded lazily in loader workers.

Layout (torchvision's ImageFolder): ``<root>/<train_folder>/<class>/*.JPEG`` and
``<root>/<test_folder>/<class>/*``. As in the other image datamodules, the train folder is split
into train/val by a seeded permutation (``seeded_split``) and the test folder is the test split.
Workers decode each file to uint8 ``(C, H, W)`` (``torchvision.io.decode_image``), resize its
shorter side to ``resize`` and centre-crop ``crop``; the batch transform (scale, ``image_size``,
normalisation, train-time flips/rotations) then runs per batch as for CIFAR-100 and Fashion-MNIST.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError
from datamodules.batch_transform import BatchTransform
from datamodules.image_datamodule import ImageDataModule, Split, _whole, check_image_options, seeded_split
from datamodules.in_memory import EpochSeededSampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # what torchvision.io.decode_image reads
BadImage = Literal["error", "skip"]


class DecodeImage:
    """File path → ``(uint8 (C, crop, crop), problem)``; ``problem`` is ``""`` or one line naming the
    file and why it could not be read (then the image is zeros). Picklable, for loader workers."""

    def __init__(self, resize: int | None, crop: int, channels: int) -> None:
        self.resize, self.crop, self.channels = resize, crop, channels

    def __call__(self, path: str) -> tuple[Tensor, str]:
        mode = ImageReadMode.GRAY if self.channels == 1 else ImageReadMode.RGB
        try:
            image = decode_image(read_file(path), mode=mode)
            if self.resize is not None:
                image = TF.resize(image, [self.resize], antialias=True)
            return TF.center_crop(image, [self.crop, self.crop]).contiguous(), ""
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, not raised, here
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            return torch.zeros(self.channels, self.crop, self.crop, dtype=torch.uint8), f"'{path}' ({reason})"


class ImageFiles(Dataset):
    """``samples[i] = (path, label)`` served as ``(uint8 image, label, i, problem)``.

    The default collate gives ``(uint8 (B, C, crop, crop), int64 (B,), int64 (B,), list[str])``;
    a non-empty ``problem`` marks a row whose file could not be decoded (its image is zeros).
    """

    def __init__(self, samples: list[tuple[str, int]], decode: DecodeImage) -> None:
        self.samples = samples
        self.decode = decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, str]:
        path, label = self.samples[index]
        image, problem = self.decode(path)
        return image, label, index, problem


def bad_image_error(problem: str) -> UserError:
    """The one-line error for an image that could not be decoded under ``on_bad_image: error``."""
    return UserError(f"cannot decode image {problem}; replace or remove the file, or set "
                     f"data.on_bad_image: skip to leave it out (it is counted and recorded)")


class ImageFolderDataModule(ImageDataModule):
    """An ImageFolder tree (ImageNet layout) as train/val/test splits, decoded lazily per batch.

    Loaders yield ``(uint8 images, labels, indices, problems)``; ``on_after_batch_transfer`` drops
    (``skip``) or refuses (``error``) undecodable rows and returns ``(float images, labels)`` as the
    other image datamodules do. ``split(name)`` decodes a whole split into memory (small folders and
    the single-file activation cache only); large folders are extracted through ``files(split)``
    into shards (``build_cache.py --store shards``).

    Args:
        root: folder holding ``train_folder`` and ``test_folder``.
        train_folder: sub-folder of class folders split into train/val.
        test_folder: sub-folder of class folders used as the test split (ImageNet's ``val``).
        batch_size: images per batch.
        val_size: images of ``train_folder`` held out (seeded) as the val split.
        train_subset: keep only this many of the remaining training images (seeded); ``None`` = all.
        seed: seeds the train/val split and the per-epoch shuffling.
        resize: shorter side after decoding, in pixels (``None``: keep the file's size).
        crop: side of the centre crop every image is cut to (images of a batch must share a size).
        image_size: side the model sees, resized per batch (``None``: ``crop``).
        channels: 3 (RGB) or 1 (grey), decoded as such whatever the file holds.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel std divided.
        hflip: random left-right flips while training.
        rotation_degrees: random rotations within ± this many degrees while training (0 = off).
        num_workers: loader processes decoding files.
        on_bad_image: ``error`` stops at the first file that cannot be decoded (one line naming it);
            ``skip`` leaves it out of training batches and of ``split()``, counts it, and in shard
            extraction records its row in the shard's ``bad_rows`` (rows stay aligned across backbones).
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        train_folder: str = "train",
        test_folder: str = "val",
        batch_size: int = 256,
        val_size: int = 10_000,
        train_subset: int | None = None,
        seed: int = 0,
        resize: int | None = 256,
        crop: int = 224,
        image_size: int | None = None,
        channels: int = 3,
        mean: list[float] | None = list(IMAGENET_MEAN),
        std: list[float] | None = list(IMAGENET_STD),
        hflip: bool = True,
        rotation_degrees: float = 0.0,
        num_workers: int = 4,
        on_bad_image: BadImage = "error",
    ) -> None:
        if channels not in (1, 3):
            raise UserError(f"data.channels must be 1 or 3, got {channels!r}")
        check_image_options(image_size, channels, mean, std, rotation_degrees)
        _whole("data.crop", crop, 1)
        if resize is not None:
            _whole("data.resize", resize, 1)
        _whole("data.num_workers", num_workers, 0)
        if on_bad_image not in ("error", "skip"):
            raise UserError(f"data.on_bad_image must be error or skip, got '{on_bad_image}'")
        transform = BatchTransform(image_size, channels, mean, std, hflip, rotation_degrees)
        super().__init__(batch_size, val_size, train_subset, seed, transform)
        self.save_hyperparameters()
        self.root = Path(root)
        self.folders = {"train": self.root / train_folder, "test": self.root / test_folder}
        self.decode = DecodeImage(resize, crop, channels)
        self.num_workers = num_workers
        self.on_bad_image = on_bad_image
        self.bad_images = 0  # undecodable images left out so far (skip)
        self._class_names: tuple[str, ...] = ()
        self._samples: dict[str, list[tuple[str, int]]] = {}

    # ---- the file lists ------------------------------------------------------------------------
    def _classes(self, folder: Path) -> list[str]:
        if not folder.is_dir():
            raise UserError(f"image folder '{folder}' not found; point data.root at a folder holding "
                            f"'{self.folders['train'].name}/' and '{self.folders['test'].name}/' of class folders")
        try:
            return find_classes(str(folder))[0]
        except FileNotFoundError:
            raise UserError(f"image folder '{folder}' has no class folders; expected "
                            f"'{folder}/<class>/<image>.JPEG'") from None

    def _files(self, folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        try:
            return make_dataset(str(folder), class_to_idx, extensions=EXTENSIONS)
        except FileNotFoundError as err:
            raise UserError(f"{' '.join(str(err).split())[:200]}; every class folder needs at least "
                            f"one image") from None

    def setup(self, stage: str | None = None) -> None:
        if self._samples:
            return
        train_classes = self._classes(self.folders["train"])
        test_classes = self._classes(self.folders["test"])
        if train_classes != test_classes:
            only_train = sorted(set(train_classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(train_classes))
            show = lambda names: ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")  # noqa: E731
            parts = [f"only in {self.folders[s].name}/: {show(n)}"
                     for s, n in (("train", only_train), ("test", only_test)) if n]
            raise UserError(f"class folders differ between '{self.folders['train']}' and "
                            f"'{self.folders['test']}' ({'; '.join(parts)}); both need the same classes")
        class_to_idx = {name: i for i, name in enumerate(train_classes)}
        self._class_names = tuple(train_classes)
        train = self._files(self.folders["train"], class_to_idx)
        train_idx, val_idx = seeded_split(len(train), self.val_size, self.train_subset, self.seed)
        self._samples = {"train": [train[i] for i in train_idx.tolist()],
                         "val": [train[i] for i in val_idx.tolist()],
                         "test": self._files(self.folders["test"], class_to_idx)}

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class folder names, sorted (label i = ``class_names[i]``; read from ``root`` on first use)."""
        self.setup()
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def samples(self, split: Split) -> list[tuple[str, int]]:
        """``(path, label)`` of every image of ``split``, in the split's fixed order (row i = image i)."""
        self.setup()
        return self._samples[split]

    def files(self, split: Split) -> ImageFiles:
        """The lazily decoded dataset of ``split`` (what loaders and shard extraction read)."""
        return ImageFiles(self.samples(split), self.decode)

    def identity(self, split: Split) -> str:
        """Hex SHA-256 of ``split``'s file list (paths relative to ``root``, labels, byte sizes) and
        decoding options: what the rows of an extraction are, without reading any image."""
        digest = hashlib.sha256(repr((self.decode.resize, self.decode.crop, self.decode.channels)).encode())
        for path, label in self.samples(split):
            size = Path(path).stat().st_size if Path(path).exists() else -1
            digest.update(f"{Path(path).relative_to(self.root).as_posix()}\t{label}\t{size}\n".encode())
        return digest.hexdigest()

    # ---- loaders -------------------------------------------------------------------------------
    def loader(self, split: Split, sampler: Sampler | None = None, batch_size: int | None = None,
               batch_sampler: Sampler | None = None) -> DataLoader:
        """A loader of ``(uint8 images, labels, indices, problems)`` over ``split``'s files."""
        sizes = {} if batch_sampler is not None else {"batch_size": batch_size or self.batch_size}
        return DataLoader(self.files(split), sampler=sampler, batch_sampler=batch_sampler,
                          num_workers=self.num_workers, persistent_workers=False,
                          pin_memory=torch.cuda.is_available(), **sizes)

    def dataloader(self, name: Split, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        sampler = EpochSeededSampler(len(self.samples(name)), self.seed) if shuffle else None
        return self.loader(name, sampler, batch_size)

    def on_after_batch_transfer(self, batch, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        if len(batch) == 4:
            images, labels, _, problems = batch
            keep = self.drop_bad(problems)
            if keep is not None:
                images, labels = images[keep.to(images.device)], labels[keep.to(labels.device)]
            batch = (images, labels)
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def drop_bad(self, problems: list[str]) -> Tensor | None:
        """``None`` if every row decoded; else (``skip``) the mask of good rows, counted in
        ``bad_images``; under ``error`` a one-line ``UserError`` naming the first bad file."""
        bad = [p for p in problems if p]
        if not bad:
            return None
        if self.on_bad_image == "error":
            raise bad_image_error(bad[0])
        self.bad_images += len(bad)
        return torch.tensor([not p for p in problems])

    # ---- in memory (small folders) -------------------------------------------------------------
    def split(self, name: Split) -> tuple[Tensor, Tensor]:
        """The whole split decoded into memory as ``(uint8 (N, C, crop, crop), int64 (N,))``; under
        ``skip`` undecodable images are left out (counted in ``bad_images``, one line on stderr)."""
        if name not in self._splits:
            images, labels, before = [], [], self.bad_images
            for batch_images, batch_labels, _, problems in self.loader(name, batch_size=256):
                keep = self.drop_bad(problems)
                if keep is not None:
                    batch_images, batch_labels = batch_images[keep], batch_labels[keep]
                images.append(batch_images)
                labels.append(batch_labels)
            if self.bad_images > before:
                print(f"image folder: {self.bad_images - before} images of the {name} split could not be "
                      f"decoded and were skipped", file=sys.stderr)
            self._splits[name] = (torch.cat(images), torch.cat(labels).long())
        return self._splits[name]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        side = self.transform.image_size or self.decode.crop
        return (self.transform.channels, side, side)
