"""``LinearProbe``: a linear classifier on frozen k-sparse codes (or on raw pixels, the baseline)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from common.errors import UserError
from components.ksparse import TopKEncoder, _check_shapes, encoder_from_state, read_state_dict
from datamodules.feature_data import FeatureData


def classifier_from_state(state: dict[str, Tensor], what: str, in_features: int | None = None) -> nn.Linear:
    """An ``nn.Linear`` with the weights of ``state`` (``classifier.pth``); a ``UserError`` if they do
    not fit (``in_features``: the code size the caller needs, checked when given)."""
    weight = state.get("weight")
    if weight is None or weight.dim() != 2:
        raise UserError(f"{what} has no 2-D 'weight'; it is not a linear classifier")
    classes, features = weight.shape
    if in_features is not None and features != in_features:
        raise UserError(f"{what} classifies {features} features but the codes have {in_features}; "
                        f"use the classifier trained on this encoder")
    _check_shapes(state, {"weight": (classes, features), "bias": (classes,)}, what)
    linear = nn.Linear(features, classes)
    linear.load_state_dict(state)
    return linear


class LinearProbe(L.LightningModule):
    """Cross-entropy linear classifier ``n_features → num_classes`` on frozen features.

    Features are the codes of a frozen k-sparse encoder (``encoder_path``: an ``encoder.pth`` or a
    ``KSparseAutoencoder`` checkpoint) or, with ``encoder_path: null``, the raw pixels (the baseline).
    The data must be a ``FeatureData``: the probe hands it ``featurize`` in ``setup`` and the codes
    of each split are extracted once, not re-encoded every epoch. Logs ``train/loss``, ``val/loss``,
    ``val/acc``, ``test/loss``, ``test/acc`` (accuracy in [0, 1]).

    Args:
        encoder_path: frozen encoder weights, or ``None`` to probe raw pixels.
        encode_k: units the frozen encoder keeps per image for the probe, ``None`` = the k it was
            trained with. Makhzani & Frey (2013, Algorithm 1) encode for classification with the
            ``αk`` largest units, ``α ≥ 1``; the weights stay the same.
        input_dim: pixels per image the encoder expects (checked against the loaded encoder).
        num_classes: classes of the dataset.
        lr: Adam learning rate.
        weight_decay: Adam L2 penalty on the classifier.
    """

    def __init__(
        self,
        encoder_path: str | None = None,
        encode_k: int | None = None,
        input_dim: int = 784,
        num_classes: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder: TopKEncoder | None = None
        n_features = input_dim
        if encoder_path is None and encode_k is not None:
            raise UserError(f"model.encode_k={encode_k} needs an encoder; set model.encode_k: null to "
                            f"probe raw pixels")
        if encoder_path is not None:
            state = read_state_dict(encoder_path, "net.encoder.", "model.encoder_path")
            self.encoder = encoder_from_state(state, f"encoder '{encoder_path}'", input_dim)
            self.encoder.requires_grad_(False).eval()
            n_features = self.encoder.n_units
            if encode_k is not None:
                if not 0 < encode_k <= n_features:
                    raise UserError(f"model.encode_k={encode_k} must be between 1 and the encoder's "
                                    f"{n_features} units")
                self.encoder.k.fill_(encode_k)
        self.classifier = nn.Linear(n_features, num_classes)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        for metric in (self.train_loss, self.val_loss, self.test_loss):
            metric.set_dtype(torch.float64)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def train(self, mode: bool = True) -> LinearProbe:
        """Like ``nn.Module.train``, but the frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()
        return self

    @torch.no_grad()
    def featurize(self, images: Tensor) -> Tensor:
        """Preprocessed images (B, C, H, W) → features (B, n_features): codes, or flat pixels."""
        x = images.flatten(1)
        if x.shape[1] != self.hparams.input_dim:
            raise UserError(f"images have {x.shape[1]} pixels but the probe expects "
                            f"{self.hparams.input_dim}; check data.image_size and data.channels")
        return x if self.encoder is None else self.encoder(x)

    def forward(self, images: Tensor) -> Tensor:
        """Logits (B, num_classes) of preprocessed images (B, C, H, W)."""
        return self.classifier(self.featurize(images))

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule if self._trainer is not None else None
        if not isinstance(data, FeatureData):
            raise UserError("LinearProbe needs data: {class_path: datamodules.feature_data.FeatureData, "
                            "init_args: {images: <image datamodule>}}; see configs/fashion_mnist/probe.yaml")
        data.set_featurizer(self.featurize)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, labels = batch
        loss = F.cross_entropy(self.classifier(features), labels)
        self.train_loss.update(loss, weight=labels.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute().float(), prog_bar=True)
        self.train_loss.reset()

    def _evaluate(self, batch: tuple[Tensor, Tensor], loss: MeanMetric, acc: MulticlassAccuracy) -> None:
        features, labels = batch
        logits = self.classifier(features)
        loss.update(F.cross_entropy(logits, labels, reduction="none"))
        acc.update(logits, labels)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_acc)

    def _log_epoch(self, stage: str, loss: MeanMetric, acc: MulticlassAccuracy) -> None:
        self.log(f"{stage}/loss", loss.compute().float())
        self.log(f"{stage}/acc", acc.compute().float(), prog_bar=True)
        loss.reset()
        acc.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_loss, self.val_acc)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_loss, self.test_acc)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.classifier.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
