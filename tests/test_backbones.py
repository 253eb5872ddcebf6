"""Backbones: building by name, feature layers, checkpoints, fine-tuning and the configs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision

from callbacks.export_weights import ExportWeights
from common.errors import UserError
from datamodules.cifar100 import CIFAR100DataModule
from helpers.cifar100_fixture import write_tiny_cifar100
from helpers.tiny_images import TinyImages, save_random_backbone
from lightning_modules.backbone_classifier import BackboneClassifier
from components.backbones import (FeatureExtractor, build_backbone, default_layer,
                                                    feature_dim, load_backbone)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError) as err:
        build_backbone("resnet5O", 10)
    message = one_line(err)
    assert "unknown model 'resnet5O'" in message and "did you mean resnet50" in message
    assert "mobilenet_v3_large" in message and "vgg16" in message


def test_unknown_layer_lists_valid_names():
    with torch.device("meta"):
        model = build_backbone("resnet50", 10)
    with pytest.raises(UserError) as err:
        FeatureExtractor(model, "avgpol", "resnet50")
    message = one_line(err)
    assert "unknown layer 'avgpol'" in message and "avgpool" in message and "fc" in message


@pytest.mark.parametrize("arch, layer, dim", [
    ("resnet50", "avgpool", 2048), ("mobilenet_v3_large", "classifier.2", 1280),
    ("vgg16", "classifier.4", 4096), ("efficientnet_b0", "penultimate", 1280),
])
def test_study_feature_layers_and_widths(arch, layer, dim):
    assert default_layer(arch) == layer
    assert feature_dim(arch, layer, 100, (3, 224, 224)) == dim  # meta device: shapes only
    assert feature_dim(arch, layer, 10, (3, 32, 32)) == dim


def test_extractor_reads_the_layer_and_stops_there():
    torch.manual_seed(0)
    model = build_backbone("resnet18", 7).eval()
    calls = []
    model.fc.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = FeatureExtractor(model, "avgpool")(x)
        penultimate = FeatureExtractor(model, "penultimate")(x)
        assert not calls  # the forward pass ended at the feature layer
        logits = model(x)
    assert features.shape == (3, 512)
    torch.testing.assert_close(features, penultimate)
    torch.testing.assert_close(model.fc(features), logits)


def test_mobilenet_dropout_layer_is_deterministic_in_eval():
    torch.manual_seed(0)
    model = build_backbone("mobilenet_v3_small", 5).eval()
    extractor = FeatureExtractor(model, "classifier.2")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, second = extractor(x), extractor(x)
    assert first.shape == (2, 1024)
    torch.testing.assert_close(first, second)


def test_pretrained_weights_missing_offline_names_file_and_folder(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        build_backbone("resnet18", 10, pretrained=True)
    message = one_line(err)
    assert "resnet18-f37072fd.pth" in message and str(hub / "checkpoints") in message
    assert "pretrained: false" in message


def test_pretrained_weights_from_cache_get_a_new_head(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    imagenet = build_backbone("resnet18", 1000)
    (hub / "checkpoints").mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub / "checkpoints" / "resnet18-f37072fd.pth")
    model = build_backbone("resnet18", 10, pretrained=True)
    assert model.fc.out_features == 10
    torch.testing.assert_close(model.conv1.weight, imagenet.conv1.weight)
    with pytest.raises(UserError, match="not a weight set"):
        build_backbone("resnet18", 10, pretrained="IMAGENET9K")


def test_checkpoint_of_another_architecture_is_one_line_error(tmp_path):
    path = save_random_backbone(tmp_path / "r18.pth", "resnet18", 4)
    with pytest.raises(UserError) as err:
        load_backbone("mobilenet_v3_small", 4, path)
    assert "does not fit mobilenet_v3_small" in one_line(err)
    with pytest.raises(UserError) as err:
        load_backbone("resnet18", 10, path)
    assert "another number of classes" in one_line(err)
    with pytest.raises(UserError, match="not found"):
        load_backbone("resnet18", 4, tmp_path / "missing.pth")
    model = load_backbone("resnet18", 4, path)
    torch.testing.assert_close(model.fc.weight, torch.load(path, weights_only=True)["fc.weight"])


def accuracy(model: BackboneClassifier, dm: TinyImages, split: str = "test") -> float:
    images, labels = dm.split(split)
    with torch.no_grad():
        logits = model.eval()(dm.transform(images, train=False))
    return (logits.argmax(1) == labels).float().mean().item()


def test_fine_tuning_improves_accuracy_and_exports_reload(tmp_path):
    L.seed_everything(0, workers=True)
    dm = TinyImages(n_train=72, n_test=24, val_size=8, batch_size=16, side=16)
    model = BackboneClassifier(arch="resnet18", num_classes=4, pretrained=False, lr=1e-3,
                               scheduler="none", channels_last=False)
    before = accuracy(model, dm)
    model.train()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    after = accuracy(model, dm)
    assert after >= 0.9 and after > before + 0.2, (before, after)

    export = ExportWeights({"resnet_fine_tuned.pth": "net"}, use_best=False)
    [path] = export.export(model, tmp_path)
    state = torch.load(path, weights_only=True)
    assert set(state) == set(model.net.state_dict())
    for source in (path, tmp_path / "last.ckpt"):  # a state_dict and a Lightning checkpoint
        net = load_backbone("resnet18", 4, source)
        torch.testing.assert_close(net.fc.weight, model.net.fc.weight)


def test_cifar100_configs_parse(repo_root):
    from train import main

    for arch in ("resnet50", "mobilenet_v3_large", "vgg16"):
        with pytest.raises(SystemExit) as done:
            main(["--config", str(repo_root / f"configs/cifar100/{arch}.yaml"), "--print_config"])
        assert done.value.code == 0


def tiny_cifar_args(repo_root: Path, data: Path, runs: Path) -> list[str]:
    return ["--config", str(repo_root / "configs/cifar100/mobilenet_v3_large.yaml"),
            "--run.root", str(runs), "--model.init_args.pretrained", "false",
            "--data.init_args.data_dir", str(data), "--data.init_args.verify_checksums", "false",
            "--data.init_args.download", "false", "--data.init_args.image_size", "32",
            "--data.init_args.val_size", "10", "--data.init_args.batch_size", "16",
            "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_tiny_cifar100_fine_tune_through_train_py(tmp_path, repo_root):
    from train import main

    write_tiny_cifar100(tmp_path / "data", n_train=60, n_test=20)
    main(tiny_cifar_args(repo_root, tmp_path / "data", tmp_path / "runs"))
    folder = tmp_path / "runs" / "cifar100_mobilenet_v3_large" / "main"
    state = torch.load(folder / "mobile_fine_tuned.pth", weights_only=True)
    assert state["classifier.3.weight"].shape == (100, 1280)
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    load_backbone("mobilenet_v3_large", 100, folder / "mobile_fine_tuned.pth")


def test_missing_cifar100_offline_is_clear_error(tmp_path, repo_root):
    from train import main

    dm = CIFAR100DataModule(data_dir=str(tmp_path / "nothing"), download=False)
    with pytest.raises(UserError) as err:
        dm.prepare_data()
    assert "CIFAR-100 not found" in one_line(err)
    with pytest.raises(UserError, match="CIFAR-100 not found"):
        main(tiny_cifar_args(repo_root, tmp_path / "nothing", tmp_path / "runs"))


def test_bf16_mixed_precision_and_channels_last_through_trainer(tmp_path):
    L.seed_everything(0)
    dm = TinyImages(n_train=40, n_test=8, val_size=8, batch_size=16, side=16)
    model = BackboneClassifier(arch="resnet18", num_classes=4, pretrained=False, lr=1e-3,
                               scheduler="cosine", warmup_epochs=0.5)
    assert model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", precision="bf16-mixed", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    # the schedule: linear warm-up to lr, then cosine down to 0 at the end of schedule_epochs
    factors = [model.lr_factor(step, steps_per_epoch=4) for step in range(5)]  # 2 warm-up steps
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0], abs=1e-6)


def test_bn_momentum_override_and_bad_hyperparameters():
    model = BackboneClassifier(arch="mobilenet_v3_small", num_classes=3, pretrained=False, bn_momentum=0.1)
    norms = [m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    assert model.hparams.feature_layer == "classifier.2"
    for bad, message in [({"label_smoothing": 1.0}, "label_smoothing"), ({"lr": 0.0}, "lr"),
                         ({"bn_momentum": 0.0}, "bn_momentum"), ({"arch": "resnet5"}, "unknown model")]:
        with pytest.raises(UserError, match=message):
            BackboneClassifier(**{"arch": "resnet18", "num_classes": 3, "pretrained": False, **bad})
