"""``KSparseAutoencoder``: trains the k-sparse autoencoder on images with MSE, tracking dead units."""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from common.errors import UserError
from components.ksparse import KSparseAE, densify
from metrics.active_units import ActiveUnits


class KSparseAutoencoder(L.LightningModule):
    """784 → ``n_units`` ReLU + top-``k`` code → linear decoder, MSE per pixel, Adam.

    Batches are ``(images (B, 1, 28, 28) in [0, 1], labels)``; labels are ignored. Logs
    ``train/loss`` (MSE per pixel), ``val/loss`` (MSE per pixel pooled over the split, float64),
    ``val/active_units`` (units that fire on at least one validation image), ``val/dead_fraction``,
    the same for ``test/``, and ``train/dead_units`` (units silent for ``dead_window`` training
    samples, the ones AuxK and the bias revival act on).

    The dead-unit cures are options (all off = the plain model of the issue); defaults are the
    combination the ablation in ``benchmarks/bench_ksae.py`` chose.

    Args:
        input_dim: pixels per image.
        n_units: code size.
        k: units kept per sample (the target k when a k schedule is used).
        lr: peak Adam learning rate (the issue's plain recipe: 1e-3, constant).
        lr_final_fraction: cosine decay of the learning rate down to ``lr * lr_final_fraction`` by
            the last step of ``trainer.max_epochs`` (1.0 = constant learning rate).
        lr_decay_start: fraction of the steps held at ``lr`` before that decay starts (0 = decay
            from the first step; a late start is the "warmup-stable-decay" shape).
        unit_norm_decoder: unit-norm decoder atoms, gradient component along each atom removed.
        tied_init: encoder initialised as the decoder's transpose.
        pre_bias: subtract the decoder bias (tied, initialised to the first batch's mean) before encoding.
        k_aux: units in the AuxK loss on dead units (0 = off).
        auxk_coef: weight of the AuxK loss.
        revive_bias_step: raise the encoder bias of every dead unit by this much each step, until it
            fires again (0 = off); a homeostatic firing floor.
        dead_window: a unit counts as dead (for AuxK and the bias revival) after this many training
            samples without firing.
        k_start: Makhzani & Frey's schedule: start with this k (``None`` = no schedule) ...
        k_anneal_epochs: ... and lower it linearly to ``k`` over this many epochs.
        sparse: train through the sparse kernels (same math as the dense path, faster on CPU).
        sparse_max_density: use them only while k (+ k_aux) is at most this share of ``n_units``;
            denser steps (early in a k schedule) are faster as dense matmuls.
        select_dtype: dtype of the encoder matmul of the sparse training steps, which picks the k
            winners and gives their values; gradients, the dense steps, validation and test stay
            float32. ``bfloat16`` is 2.1× faster for that matmul on CPUs with AVX512-BF16 or AMX and
            on GPUs, test MSE within run-to-run noise (README, Study 2); use ``float32`` on CPUs
            without native bfloat16.
    """

    def __init__(
        self,
        input_dim: int = 784,
        n_units: int = 1024,
        k: int = 50,
        lr: float = 2e-3,
        lr_final_fraction: float = 0.0,
        lr_decay_start: float = 0.5,
        unit_norm_decoder: bool = True,
        tied_init: bool = True,
        pre_bias: bool = True,
        k_aux: int = 0,
        auxk_coef: float = 1 / 32,
        revive_bias_step: float = 1e-3,
        dead_window: int = 1000,
        k_start: int | None = 300,
        k_anneal_epochs: int = 4,
        sparse: bool = True,
        sparse_max_density: float = 0.2,
        select_dtype: Literal["float32", "bfloat16"] = "bfloat16",
    ) -> None:
        super().__init__()
        if not 0 < k <= n_units:
            raise UserError(f"model.k={k} must be between 1 and model.n_units={n_units}; lower k")
        if k_start is not None and not k <= k_start <= n_units:
            raise UserError(f"model.k_start={k_start} must be between k={k} and n_units={n_units}")
        if not 0.0 <= lr_final_fraction <= 1.0 or not 0.0 <= lr_decay_start < 1.0:
            raise UserError(f"model.lr_final_fraction={lr_final_fraction} must be in [0, 1] and "
                            f"model.lr_decay_start={lr_decay_start} in [0, 1)")
        if not 0.0 <= sparse_max_density <= 1.0:
            raise UserError(f"model.sparse_max_density={sparse_max_density} must be in [0, 1]")
        if select_dtype not in ("float32", "bfloat16"):
            raise UserError(f"model.select_dtype={select_dtype!r} must be 'float32' or 'bfloat16'")
        self.save_hyperparameters()
        self.net = KSparseAE(input_dim, n_units, k, unit_norm_decoder, tied_init, pre_bias, sparse,
                             sparse_max_density, getattr(torch, select_dtype))
        self.register_buffer("bias_initialized", torch.tensor(False))
        self.register_buffer("samples_since_fired", torch.zeros(n_units, dtype=torch.long))
        self.val_mse, self.test_mse = MeanMetric(), MeanMetric()
        self.val_mse.set_dtype(torch.float64)
        self.test_mse.set_dtype(torch.float64)
        self.val_active, self.test_active = ActiveUnits(n_units), ActiveUnits(n_units)

    def current_k(self) -> int:
        """k for this epoch: ``k_start`` lowered linearly to ``k`` over ``k_anneal_epochs``, else ``k``."""
        hp = self.hparams
        if hp.k_start is None or hp.k_anneal_epochs <= 0 or self._trainer is None:
            return hp.k
        done = min(1.0, self.current_epoch / hp.k_anneal_epochs)
        return round(hp.k_start - (hp.k_start - hp.k) * done)

    def forward(self, images: Tensor) -> Tensor:
        """Sparse codes (B, n_units) of images (B, ...) with ``input_dim`` pixels."""
        return self.net.encode(self._check(images))

    def _check(self, images: Tensor) -> Tensor:
        x = images.flatten(1)
        if x.shape[1] != self.hparams.input_dim:
            raise UserError(f"images have {x.shape[1]} pixels but the model expects "
                            f"{self.hparams.input_dim}; check data.image_size and data.channels")
        return x

    def on_train_batch_start(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.hparams.pre_bias and not self.bias_initialized:
            self.net.init_pre_bias(self._check(batch[0]).mean(0))
            self.bias_initialized.fill_(True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = self._check(batch[0])
        hp = self.hparams
        track = hp.k_aux > 0 or hp.revive_bias_step > 0
        dead = self.samples_since_fired >= hp.dead_window if track else None
        if hp.revive_bias_step > 0:
            self.net.raise_bias(dead, hp.revive_bias_step)
        out = self.net(x, k=self.current_k(), dead=dead, k_aux=hp.k_aux)
        mse = F.mse_loss(out.recon, x)
        loss = mse
        if track:
            fired = torch.zeros_like(dead).index_fill_(0, out.indices[out.values > 0], True)
            self.samples_since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
        if hp.k_aux > 0:
            aux = self.net.auxk_loss(x, out)
            loss = loss + hp.auxk_coef * aux
        if self._logging_step():
            self.log("train/loss", mse, prog_bar=True)
            if track:
                self.log("train/dead_units", dead.sum().float())
            if hp.k_aux > 0:
                self.log("train/auxk_loss", aux)
        return loss

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's logs (the first step and every
        ``trainer.log_every_n_steps``-th): a ``self.log`` call costs about 0.65 ms on CPU
        (``benchmarks/bench_lightning_log.py``), two of them some 10% of a k = 50 step, so the other
        steps skip them."""
        step, every = self.global_step, max(1, self.trainer.log_every_n_steps)
        return step == 0 or (step + 1) % every == 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.hparams.unit_norm_decoder:
            self.net.project_decoder_grad()

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.hparams.unit_norm_decoder:
            self.net.normalize_decoder()

    def _evaluate(self, batch: tuple[Tensor, Tensor], mse: MeanMetric, active: ActiveUnits) -> None:
        x = self._check(batch[0])
        out = self.net(x)
        active.update(densify(out.values, out.indices, self.hparams.n_units))
        mse.update((out.recon - x).pow(2).mean(1))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_mse, self.val_active)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_mse, self.test_active)

    def _log_epoch(self, stage: str, mse: MeanMetric, active: ActiveUnits) -> None:
        self.log(f"{stage}/loss", mse.compute().float(), prog_bar=stage == "val")
        self.log(f"{stage}/active_units", active.compute().float(), prog_bar=stage == "val")
        self.log(f"{stage}/dead_fraction", active.dead_fraction().float())
        mse.reset()
        active.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_mse, self.val_active)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_mse, self.test_active)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
        floor, start = self.hparams.lr_final_fraction, self.hparams.lr_decay_start
        if floor >= 1.0:
            return optimizer
        total = max(1, self.trainer.estimated_stepping_batches)
        hold = int(start * total)

        def factor(step: int) -> float:  # 1 until ``hold``, then cosine from 1 to ``floor``
            done = min(max(step - hold, 0), total - hold) / max(1, total - hold)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
