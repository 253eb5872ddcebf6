"""ActivationDataModule: dict batches, seeded order, helpers, YAML configs and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser

from common.errors import UserError
from datamodules.activations import ActivationDataModule, BackboneSpec
from features.activation_cache import sha256_file
from build_cache import main as build_cache_main
from helpers.tiny_images import TinyImages, tiny_activation_dm, tiny_backbones


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return tiny_backbones(tmp_path_factory.mktemp("backbones"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, checkpoints) -> ActivationDataModule:
    """A built and loaded two-backbone cache shared by the read-only tests."""
    dm = tiny_activation_dm(tmp_path_factory.mktemp("cache"), checkpoints)
    dm.prepare_data()
    dm.setup()
    return dm


def row_index(features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each row of ``rows``, its index in ``features`` (rows are distinct, matched exactly)."""
    matches = (rows[:, None, :] == features[None, :, :]).all(-1)
    assert (matches.sum(1) == 1).all()
    return matches.float().argmax(1)


def test_batches_are_aligned_dicts(built):
    train = built.split_features("train")
    seen = []
    for batch in built.train_dataloader():
        assert set(batch) == {"r18", "mb"}
        assert batch["r18"].shape[1] == 512 and batch["mb"].shape[1] == 1024
        assert batch["r18"].dtype == batch["mb"].dtype == torch.float32
        index = row_index(train["r18"], batch["r18"])
        assert torch.equal(batch["mb"], train["mb"][index])  # same images in both models
        seen.append(index)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == list(range(len(train["r18"])))
    assert not torch.equal(seen, torch.arange(len(seen)))  # shuffled
    test = next(iter(built.test_dataloader()))
    assert torch.equal(test["r18"], built.split_features("test")["r18"][:8])  # test keeps image order
    assert torch.equal(built.split_labels("test"), built.images.split("test")[1])


def test_order_is_seeded_per_epoch(built):
    def order(dm, epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([row_index(dm.split_features("train")["r18"], b["r18"]) for b in loader])

    assert torch.equal(order(built, 0), order(built, 0))
    assert not torch.equal(order(built, 0), order(built, 1))


def test_seed_changes_order_but_not_features(built, checkpoints):
    again = tiny_activation_dm(built.cache_dir, checkpoints, seed=1)
    again.setup()
    assert torch.equal(again.split_features("train")["mb"], built.split_features("train")["mb"])
    first = next(iter(built.train_dataloader()))["r18"]
    assert not torch.equal(next(iter(again.train_dataloader()))["r18"], first)


def test_feature_dims_without_extraction(tmp_path, checkpoints):
    dm = tiny_activation_dm(tmp_path / "cache", checkpoints)
    assert dm.feature_dims == {"r18": 512, "mb": 1024}
    assert not (tmp_path / "cache").exists()


def test_backbone_reproduces_cached_rows_and_passes_gradients(built):
    model = built.backbone("mb")
    images, _ = built.images.split("val")
    x = built.images.transform(images, train=False).requires_grad_(True)
    features = model(x)
    torch.testing.assert_close(features, built.split_features("val")["mb"], atol=1e-4, rtol=1e-3)
    features[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(UserError, match="unknown backbone"):
        built.backbone("vgg16")


def test_trainer_receives_dict_batches(built):
    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(512, 1024)
            self.batches = []

        def training_step(self, batch, batch_idx):
            self.batches.append({k: v.shape for k, v in batch.items()})
            return (self.layer(batch["r18"]) - batch["mb"]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(probe, datamodule=built)
    assert probe.batches == [{"r18": (8, 512), "mb": (8, 1024)}] * 2


def test_mismatched_rows_across_models_is_one_line_error(tmp_path, checkpoints):
    dm = tiny_activation_dm(tmp_path / "cache", checkpoints)
    dm.prepare_data()
    # rewrite mb/train with two rows fewer and a manifest that is consistent with the new file
    path, manifest_path = dm.cache.paths("mb", "train")
    features = torch.load(path, weights_only=True)[:-2].clone()
    torch.save(features, path)
    manifest = json.loads(manifest_path.read_text())
    manifest.update(rows=features.shape[0], shape=list(features.shape), bytes=path.stat().st_size,
                    sha256=sha256_file(path))
    manifest_path.write_text(json.dumps(manifest))
    before = path.read_bytes()
    strict = tiny_activation_dm(tmp_path / "cache", checkpoints, rebuild="never")
    with pytest.raises(UserError) as err:
        strict.setup()
    assert "\n" not in str(err.value) and "rows" in str(err.value)
    assert path.read_bytes() == before
    healed = tiny_activation_dm(tmp_path / "cache", checkpoints)
    healed.setup()  # rebuild: auto re-extracts the inconsistent entry
    assert healed.split_features("train")["mb"].shape[0] == healed.split_features("train")["r18"].shape[0]


@pytest.mark.parametrize("specs, message", [
    ([], "empty"),
    ([BackboneSpec("a", "resnet18", "x.pth"), BackboneSpec("a", "resnet18", "y.pth")], "appears twice"),
    ([BackboneSpec("a/b", "resnet18", "x.pth")], "must be letters"),
    ([BackboneSpec("a", "resnet181", "x.pth")], "unknown model"),
    ([BackboneSpec("a", "resnet18", "x.pth", layer="avgpoo")], "unknown layer"),
    ([BackboneSpec("a", "resnet18")], "needs a checkpoint"),
])
def test_bad_backbone_specs_are_one_line_errors(tmp_path, specs, message):
    with pytest.raises(UserError) as err:
        ActivationDataModule(specs, TinyImages(), cache_dir=str(tmp_path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_checkpoint_fails_before_any_work(tmp_path):
    dm = ActivationDataModule([BackboneSpec("a", "resnet18", str(tmp_path / "missing.pth"))], TinyImages(),
                              cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(UserError, match="not found"):
        dm.prepare_data()


def test_study_activation_configs_parse(repo_root):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--seed_everything", type=int)
    parser.add_subclass_arguments(ActivationDataModule, "data")
    for study, names in (("fashion_mnist", ["resnet50", "mobilenet_v3_large"]),
                         ("cifar100", ["resnet50", "mobilenet_v3_large", "vgg16"])):
        config = parser.parse_path(str(repo_root / f"configs/{study}/activations.yaml"))
        dm = parser.instantiate(config).data
        assert dm.names == names and dm.cache.normalization == "l2"
        dims = {"resnet50": 2048, "mobilenet_v3_large": 1280, "vgg16": 4096}
        assert dm.feature_dims == {n: dims[n] for n in names}
        assert all(Path(s.checkpoint).parent.name == "main" for s in dm.specs.values())


def test_build_cache_entry_point(tmp_path, checkpoints):
    config = tmp_path / "activations.yaml"
    config.write_text(f"""
seed_everything: 3
model: {{class_path: ignored.Model}}
data:
  class_path: datamodules.activations.ActivationDataModule
  init_args:
    backbones:
      - {{name: r18, arch: resnet18, checkpoint: {checkpoints['r18']}}}
    images: {{class_path: helpers.tiny_images.TinyImages, init_args: {{n_train: 20, val_size: 4}}}}
    cache_dir: {tmp_path / 'cache'}
    progress: false
""")
    dm = build_cache_main(["--config", str(config)])
    assert dm.seed == 3 and [s.action for s in dm.last_build] == ["built"] * 3
    assert (tmp_path / "cache" / "r18" / "train.json").is_file()
    dm = build_cache_main(["--config", str(config), "--data.init_args.rebuild", "never"])
    assert [s.action for s in dm.last_build] == ["reused"] * 3
