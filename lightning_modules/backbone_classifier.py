"""``BackboneClassifier``: fine-tunes a torchvision classifier (ResNet50, MobileNetV3, VGG16, ...)."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from common.errors import UserError
from components.backbones import build_backbone, check_arch, default_layer
from components.schedules import warmup_cosine


class BackboneClassifier(L.LightningModule):
    """A torchvision classifier trained with cross-entropy and Adam; the network is ``self.net``.

    Batches are ``(images (B, 3, H, W) float, normalised, labels (B,) int64)`` as the image
    datamodules deliver them after ``on_after_batch_transfer``. Logs ``train/loss``, ``train/acc``,
    ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` (top-1, torchmetrics; add Lightning's
    ``LearningRateMonitor`` to log the schedule).
    Mixed precision comes from the Trainer (``precision: bf16-mixed`` or ``16-mixed``); export the
    network with ``ExportWeights(exports={"resnet_fine_tuned.pth": "net"})`` for the activation cache.

    Args:
        arch: torchvision classification model name (``torchvision.models.list_models``).
        num_classes: classes of the dataset; the last layer is replaced to output this many.
        pretrained: ``True`` loads torchvision's DEFAULT ImageNet weights, or a weight-set name such
            as ``"IMAGENET1K_V1"``; ``False`` starts from random weights. Offline, the weights file
            must already be in ``torch.hub.get_dir()/checkpoints``.
        lr: peak Adam learning rate.
        weight_decay: Adam's L2 penalty (coupled, as in ``torch.optim.Adam``).
        label_smoothing: cross-entropy label smoothing in [0, 1) (Szegedy et al., 2016).
        scheduler: ``"none"`` keeps ``lr``; ``"cosine"`` decays it per step to 0 over
            ``schedule_epochs`` after a linear warm-up (Loshchilov & Hutter, 2017).
        schedule_epochs: length of the cosine schedule in epochs; ``None`` = ``trainer.max_epochs``.
        warmup_epochs: linear warm-up from 0 to ``lr`` over this many epochs (may be fractional).
        channels_last: keep images and weights in NHWC memory format (faster convolutions with
            tensor cores; on CPU, oneDNN measured ~1.1× faster training, 1.5-3× faster eval).
        feature_layer: the layer the activation cache reads later (``None`` = the arch's default);
            recorded in the hyper-parameters only, so a checkpoint says where its features live.
        bn_momentum: set every BatchNorm's running-statistics momentum (``None`` keeps the arch's).
            torchvision's MobileNetV3 uses 0.01, tuned for 600-epoch ImageNet runs: after a
            100-step run from scratch its eval-mode statistics are still ~40% the initial ones and
            eval accuracy is at chance (measured); 0.1 lets them catch up.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 100,
        pretrained: bool | str = True,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        scheduler: Literal["none", "cosine"] = "cosine",
        schedule_epochs: int | None = None,
        warmup_epochs: float = 0.0,
        channels_last: bool = True,
        feature_layer: str | None = None,
        bn_momentum: float | None = None,
    ) -> None:
        super().__init__()
        check_arch(arch)
        if lr <= 0:
            raise UserError(f"model.lr must be positive, got {lr}")
        if bn_momentum is not None and not 0.0 < bn_momentum <= 1.0:
            raise UserError(f"model.bn_momentum must be in (0, 1] or null, got {bn_momentum}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if warmup_epochs < 0:
            raise UserError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")
        if schedule_epochs is not None and schedule_epochs < 1:
            raise UserError(f"model.schedule_epochs must be at least 1 (or null), got {schedule_epochs}")
        if feature_layer is None:
            feature_layer = default_layer(arch)
        self.save_hyperparameters()
        self.net = build_backbone(arch, num_classes, pretrained)
        if bn_momentum is not None:
            for module in self.net.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.momentum = bn_momentum
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of normalised float images ``(B, 3, H, W)``."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.net(images)
        # Inception/GoogLeNet return (logits, aux_logits...) named tuples while training
        return out.logits if hasattr(out, "logits") else out

    def _check_batch(self, labels: Tensor) -> None:
        # one host sync per batch only in the first step: labels outside [0, C) are a config mistake
        if self.global_step == 0 and labels.numel() and int(labels.max()) >= self.hparams.num_classes:
            raise UserError(f"labels go up to {int(labels.max())} but model.num_classes is "
                            f"{self.hparams.num_classes}; set num_classes to the dataset's class count")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        if batch_idx == 0:
            self._check_batch(labels)
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self(images)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), prog_bar=stage == "val")
        self.log(f"{stage}/acc", accuracy, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def lr_factor(self, step: int, steps_per_epoch: float) -> float:
        """Multiplier of ``lr`` at optimizer step ``step``: linear warm-up, then cosine to 0 (or 1)."""
        hp = self.hparams
        warmup = hp.warmup_epochs * steps_per_epoch
        epochs = hp.schedule_epochs or self.trainer.max_epochs
        return warmup_cosine(step, epochs * steps_per_epoch, warmup=warmup, hold=warmup,
                             cosine=hp.scheduler != "none")

    def configure_optimizers(self):
        # fused Adam: one kernel for all parameters (several times faster per step, CPU and CUDA)
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                     weight_decay=self.hparams.weight_decay, fused=True)
        if self.hparams.scheduler == "none" and self.hparams.warmup_epochs <= 0:
            return optimizer
        max_epochs = self.trainer.max_epochs
        if self.hparams.scheduler == "cosine" and self.hparams.schedule_epochs is None and (
                max_epochs is None or max_epochs < 1):
            raise UserError("scheduler: cosine needs trainer.max_epochs or model.schedule_epochs")
        _ = self.trainer.estimated_stepping_batches  # sets up the train loader, hence the batch count
        steps_per_epoch = math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.lr_factor(step, steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
