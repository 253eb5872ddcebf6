"""ImageFolderDataModule: lazy JPEG decoding, the seeded split, class-folder and bad-file errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from common.errors import UserError
from datamodules.image_folder import ImageFolderDataModule
from scripts.synthetic_image_folder import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "tree", images=30, classes=3, side=6)


def tiny(root, **kwargs) -> ImageFolderDataModule:
    options = dict(val_size=4, resize=None, crop=6, batch_size=5, num_workers=0, mean=[0.5] * 3,
                   std=[0.25] * 3, hflip=False)
    return ImageFolderDataModule(str(root), **{**options, **kwargs})


def test_reads_the_folder_as_three_splits(folder):
    dm = tiny(folder)
    assert dm.class_names == ("c000", "c001", "c002") and dm.num_classes == 3
    train_files = sorted(p.name for p in (folder / "train").rglob("*.jpg"))
    assert len(dm.samples("train")) + len(dm.samples("val")) == len(train_files)
    assert len(dm.samples("test")) == len(list((folder / "val").rglob("*.jpg")))
    images, labels = dm.split("train")
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 6, 6)
    assert labels.tolist() == [label for _, label in dm.samples("train")]
    assert all(f"c{label:03d}" in path for path, label in dm.samples("test"))
    # the loader path (workers decode, batch transform on transfer) sees the same images
    batch = next(iter(dm.dataloader("train")))
    x, y = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(x, dm.transform(images[:5], train=False)) and torch.equal(y, labels[:5])
    assert dm.image_shape == (3, 6, 6)


def test_split_is_seeded(folder):
    first, again, other = tiny(folder), tiny(folder), tiny(folder, seed=1)
    assert first.samples("val") == again.samples("val")
    assert first.samples("val") != other.samples("val")
    names = lambda dm, s: {p for p, _ in dm.samples(s)}  # noqa: E731
    assert not names(first, "train") & names(first, "val")
    assert len(tiny(folder, train_subset=7).samples("train")) == 7
    assert first.identity("train") == again.identity("train") != first.identity("val")


def test_class_folders_that_differ_are_one_line(folder, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(folder, root)
    shutil.rmtree(root / "val" / "c001")
    (root / "val" / "extra").mkdir()
    shutil.copy(next((root / "val" / "c000").glob("*.jpg")), root / "val" / "extra" / "x.jpg")
    with pytest.raises(UserError) as err:
        tiny(root).setup()
    message = str(err.value)
    assert "\n" not in message and "only in train/: c001" in message and "only in val/: extra" in message


def test_undecodable_image_errors_with_its_name_or_is_skipped_and_counted(folder, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(folder, root)
    victim = next(iter(sorted((root / "val" / "c002").glob("*.jpg"))))
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=f"cannot decode image '{victim}'"):
        tiny(root).split("test")
    skipping = tiny(root, on_bad_image="skip")
    images, labels = skipping.split("test")
    assert skipping.bad_images == 1 and len(labels) == len(skipping.samples("test")) - 1
    batch = next(b for b in skipping.dataloader("test") if any(b[3]))
    x, _ = skipping.on_after_batch_transfer(batch, 0)
    assert len(x) == len(batch[0]) - 1 and skipping.bad_images == 2
