"""Image datamodules: real Fashion-MNIST through torchvision, splits, transforms, data location."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from common.errors import UserError
from datamodules.batch_transform import BatchTransform
from datamodules.fashion_mnist import DEBIAN_DIR, RAW_FILES, FashionMNISTDataModule, locate_fashion_mnist
from datamodules.in_memory import EpochSeededSampler, InMemoryTensorDataset, in_memory_loader


def test_fashion_mnist_splits_are_real_seeded_and_disjoint(fashion_data_dir):
    dm = FashionMNISTDataModule(data_dir=str(fashion_data_dir), val_size=5000, seed=0)
    dm.setup()
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = dm.split("train"), dm.split("val"), dm.split("test")
    assert train_x.shape == (55000, 1, 28, 28) and val_x.shape == (5000, 1, 28, 28)
    assert test_x.shape == (10000, 1, 28, 28) and train_x.dtype == torch.uint8
    assert torch.bincount(test_y).tolist() == [1000] * 10
    assert len(dm.class_names) == 10 and dm.class_names[9] == "Ankle boot"
    # val and train are a partition of the 60k official training images
    everything = torch.cat([train_x, val_x]).flatten(1)
    assert torch.unique(everything, dim=0).shape[0] >= 59_000  # a handful of duplicates exist in the data
    again = FashionMNISTDataModule(data_dir=str(fashion_data_dir), val_size=5000, seed=0)
    assert torch.equal(again.split("val")[1], val_y)
    other = FashionMNISTDataModule(data_dir=str(fashion_data_dir), val_size=5000, seed=1)
    assert not torch.equal(other.split("val")[1], val_y)


def test_batches_are_pixels_in_unit_range_and_resizable(fashion_data_dir):
    dm = FashionMNISTDataModule(data_dir=str(fashion_data_dir), batch_size=64, train_subset=256)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    x = dm.transform(images)
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    assert torch.allclose(x * 255, images.float())
    big = FashionMNISTDataModule(data_dir=str(fashion_data_dir), channels=3, image_size=32,
                                 mean=[0.5] * 3, std=[0.25] * 3)
    y = big.transform(images)
    assert y.shape == (64, 3, 32, 32) and big.image_shape == (3, 32, 32)
    assert torch.equal(y[:, 0], y[:, 2])


def test_train_augmentation_only_while_training():
    transform = BatchTransform(None, 1, None, None, hflip=True, rotation_degrees=30)
    images = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(transform(images, train=False), images.float() / 255)
    torch.manual_seed(0)
    augmented = transform(images, train=True)
    assert augmented.shape == (32, 1, 28, 28) and not torch.allclose(augmented, images.float() / 255)


def test_shuffle_depends_only_on_seed_and_epoch():
    sampler = EpochSeededSampler(100, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(first) == list(range(100)) and first != second
    resumed = EpochSeededSampler(100, seed=3)
    resumed.set_epoch(1)
    assert list(resumed) == second


def test_in_memory_loader_fetches_whole_batches():
    data = InMemoryTensorDataset(torch.arange(10).view(10, 1), torch.arange(10))
    loader = in_memory_loader(data, batch_size=4, shuffle=False, seed=0)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert isinstance(loader, DataLoader)


def test_locate_prefers_data_dir_then_debian(tmp_path):
    if not all((DEBIAN_DIR / f"{n}.gz").exists() for n in RAW_FILES):
        pytest.fail("Debian's dataset-fashion-mnist is missing: apt-get install dataset-fashion-mnist")
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in RAW_FILES:
        shutil.copy(DEBIAN_DIR / f"{name}.gz", flat / f"{name}.gz")
    root = locate_fashion_mnist(flat, tmp_path / "no_debian", download=False)
    assert all((root / "FashionMNIST" / "raw" / name).is_file() for name in RAW_FILES)
    with gzip.open(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz") as fh:
        assert (root / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes() == fh.read()
    from_debian = locate_fashion_mnist(tmp_path / "fresh", DEBIAN_DIR, download=False)
    assert (from_debian / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").stat().st_size == 47_040_016


def test_missing_data_names_all_three_fixes(tmp_path):
    with pytest.raises(UserError) as err:
        locate_fashion_mnist(tmp_path / "nothing", tmp_path / "no_debian", download=False)
    message = str(err.value)
    assert "\n" not in message
    assert "idx files" in message and "apt-get install dataset-fashion-mnist" in message
    assert "data.download: true" in message
    assert not (tmp_path / "nothing").exists()


def test_bad_channels_is_a_user_error():
    with pytest.raises(UserError, match="channels must be 1 or 3"):
        FashionMNISTDataModule(channels=2)
