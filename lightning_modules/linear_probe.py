"""``LinearProbe``: a linear classifier on frozen k-sparse codes (or on raw pixels, the baseline).

A multinomial logistic regression on fixed features, solved by mini-batch Adam with the epoch chosen
on the validation split, or full-batch by L-BFGS for each L2 weight of a small grid with the weight
chosen on validation (the linear-evaluation protocol of Kornblith et al. 2019 and CLIP, Radford et
al. 2021).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

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


@dataclass
class LBFGSOptions:
    """The full-batch L-BFGS solver of ``LinearProbe``: one training epoch per L2 weight.

    Args:
        l2_grid: L2 weights λ (penalty ``λ/2 · ‖W‖²`` on the mean cross-entropy; the bias is not
            penalised), fitted in this order, each from the previous solution (warm start). Put the
            strongest first: on a validation tie the first weight fitted is kept.
        max_iter: L-BFGS iterations per weight (``torch.optim.LBFGS``'s ``max_iter``).
        history_size: curvature pairs kept.
        tolerance_grad: stop when the largest gradient entry is below this.
        tolerance_change: stop when the loss or step changes less than this.
    """

    l2_grid: tuple[float, ...] = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
    max_iter: int = 100
    history_size: int = 20
    tolerance_grad: float = 1e-6
    tolerance_change: float = 1e-9


class LinearProbe(L.LightningModule):
    """Cross-entropy linear classifier ``n_features → num_classes`` on frozen features.

    Features are the codes of a frozen k-sparse encoder (``encoder_path``: an ``encoder.pth`` or a
    ``KSparseAutoencoder`` checkpoint) or, with ``encoder_path: null``, the raw pixels (the baseline).
    The data must be a ``FeatureData``: the probe hands it ``featurize`` in ``setup`` and the codes
    of each split are extracted once, not re-encoded every epoch.

    ``solver: lbfgs``: epoch e fits the whole training split with L-BFGS (strong-Wolfe
    line search) at L2 weight ``lbfgs.l2_grid[e]`` and validates; the fit stops after the grid, and a
    ``ModelCheckpoint`` on ``val/acc`` keeps the weight chosen on validation, which ``train.py`` then
    tests once. ``solver: adam`` (default): mini-batch Adam (``lr``, ``weight_decay``), one epoch
    per pass over the training features.
    Logs ``train/loss`` (cross-entropy, no penalty), ``train/l2``, ``train/lbfgs_evals``,
    ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` (accuracy in [0, 1]) and ``test/l2`` (the
    L2 weight of the tested classifier).

    Args:
        encoder_path: frozen encoder weights, or ``None`` to probe raw pixels.
        encode_k: units the frozen encoder keeps per image for the probe, ``None`` = the k it was
            trained with. Makhzani & Frey (2013, Algorithm 1) encode for classification with the
            ``αk`` largest units, ``α ≥ 1``; the weights stay the same.
        input_dim: pixels per image the encoder expects (checked against the loaded encoder).
        num_classes: classes of the dataset.
        solver: ``adam`` (mini-batches) or ``lbfgs`` (full batch, L2 weight chosen on validation).
        lbfgs: the L-BFGS options (grid of L2 weights, iterations, tolerances).
        lr: Adam learning rate.
        weight_decay: Adam L2 penalty on the classifier.
    """

    def __init__(
        self,
        encoder_path: str | None = None,
        encode_k: int | None = None,
        input_dim: int = 784,
        num_classes: int = 10,
        solver: Literal["lbfgs", "adam"] = "adam",
        lbfgs: LBFGSOptions = LBFGSOptions(),
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["lbfgs"])
        self.hparams["lbfgs"] = asdict(lbfgs)  # plain types: checkpoints load with weights_only=True
        self.lbfgs = lbfgs
        if solver not in ("lbfgs", "adam"):
            raise UserError(f"model.solver={solver!r} must be 'lbfgs' or 'adam'")
        if solver == "lbfgs" and (not lbfgs.l2_grid or min(lbfgs.l2_grid) < 0 or lbfgs.max_iter < 1):
            raise UserError(f"model.lbfgs needs a non-empty l2_grid of weights >= 0 and max_iter >= 1 "
                            f"(given l2_grid={list(lbfgs.l2_grid)}, max_iter={lbfgs.max_iter})")
        self.automatic_optimization = solver == "adam"
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
        # the L2 weight the classifier was fitted with (saved in checkpoints, logged at test)
        self.register_buffer("l2", torch.tensor(float(weight_decay if solver == "adam" else lbfgs.l2_grid[0])))
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
        data.set_featurizer(self.featurize, full_batch=self.hparams.solver == "lbfgs")
        grid = self.lbfgs.l2_grid
        if self.hparams.solver == "lbfgs" and stage == "fit" and self.trainer.max_epochs is not None \
                and 0 <= self.trainer.max_epochs < len(grid):
            raise UserError(f"trainer.max_epochs={self.trainer.max_epochs} is below the {len(grid)} L2 "
                            f"weights of model.lbfgs.l2_grid (one epoch each); raise it or shorten the grid")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        features, labels = batch
        if self.hparams.solver == "adam":
            loss = F.cross_entropy(self.classifier(features), labels)
            self.train_loss.update(loss, weight=labels.shape[0])
            return loss
        return self._lbfgs_step(features, labels)

    def _lbfgs_step(self, features: Tensor, labels: Tensor) -> Tensor:
        """Fit the whole split (one batch) at this epoch's L2 weight, from the current weights."""
        options: LBFGSOptions = self.lbfgs
        l2 = float(options.l2_grid[min(self.current_epoch, len(options.l2_grid) - 1)])
        self.l2.fill_(l2)
        optimizer = self.optimizers()
        optimizer.optimizer.state.clear()  # a new objective: no curvature pairs from the last weight
        evals = []

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(self.classifier(features), labels)
            objective = loss + 0.5 * l2 * self.classifier.weight.square().sum()
            self.manual_backward(objective)
            evals.append(loss.detach())
            return objective

        optimizer.step(closure=closure)
        with torch.no_grad():
            loss = F.cross_entropy(self.classifier(features), labels)
        self.train_loss.update(loss, weight=labels.shape[0])
        self.log("train/l2", l2, on_step=False, on_epoch=True)
        self.log("train/lbfgs_evals", float(len(evals)), on_step=False, on_epoch=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss.compute().float(), prog_bar=True)
        self.train_loss.reset()
        if self.hparams.solver == "lbfgs" and self.current_epoch + 1 >= len(self.lbfgs.l2_grid):
            self.trainer.should_stop = True  # every L2 weight fitted

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
        self.log("test/l2", self.l2.float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.solver == "adam":
            return torch.optim.Adam(self.classifier.parameters(), lr=self.hparams.lr,
                                    weight_decay=self.hparams.weight_decay)
        options: LBFGSOptions = self.lbfgs
        return torch.optim.LBFGS(self.classifier.parameters(), lr=1.0, max_iter=options.max_iter,
                                 history_size=options.history_size, tolerance_grad=options.tolerance_grad,
                                 tolerance_change=options.tolerance_change, line_search_fn="strong_wolfe")
