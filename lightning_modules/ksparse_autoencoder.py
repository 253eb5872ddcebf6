"""``KSparseAutoencoder``: trains the k-sparse autoencoder on images with MSE, tracking dead units."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from common.errors import UserError
from components.schedules import warmup_cosine
from components.sparse_coder import SparseCoder, SparseCoderConfig
from lightning_modules.run_record import resolve_and_record
from metrics.active_units import ActiveUnits

# The study's engine options (the combination the ablation in ``benchmarks/bench_ksae.py`` chose).
KSAE_DEFAULTS = dict(n_latents=1024, k=50, k_start=300, k_anneal_epochs=4, pre_bias=True, decoder_bias=True,
                     tied_init=True, unit_norm_decoder=True, aux_k=0, aux_coef=1 / 32, dead_window=1000,
                     revive_bias_step=1e-3, sparse=True, sparse_max_density=0.2, select_dtype="auto")


class KSparseAutoencoder(L.LightningModule):
    """784 → ``sae.n_latents`` ReLU + top-``k`` code → linear decoder, MSE per pixel, Adam.

    The network is ``self.net``, a ``components.sparse_coder.SparseCoder`` (its ``encoder`` and
    ``decoder`` submodules are what ``encoder.pth`` / ``decoder.pth`` hold). Batches are
    ``(images (B, 1, 28, 28) in [0, 1], labels)``; labels are ignored. Logs ``train/loss`` (MSE per
    pixel), ``val/loss`` (MSE per pixel pooled over the split, float64), ``val/active_units``
    (units that fire on at least one validation image), ``val/dead_fraction``, the same for
    ``test/``, and ``train/dead_units`` (units silent for ``sae.dead_window`` training samples).

    Args:
        input_dim: pixels per image.
        sae: the engine options (``SparseCoderConfig``; ``docs/engine.md``); default the study's
            (n_latents=1024, k=50 after a 300 → 50 schedule over 4 epochs, tied pre-bias,
            revive bias 1e-3 per step after 1,000 silent samples, select_dtype auto).
        lr: peak Adam learning rate.
        lr_final_fraction: cosine decay of the learning rate down to ``lr * lr_final_fraction`` by
            the last step of ``trainer.max_epochs`` (1.0 = constant learning rate).
        lr_decay_start: fraction of the steps held at ``lr`` before that decay starts (0 = decay
            from the first step; a late start is the "warmup-stable-decay" shape).
    """

    def __init__(
        self,
        input_dim: int = 784,
        sae: SparseCoderConfig | None = None,
        lr: float = 2e-3,
        lr_final_fraction: float = 0.0,
        lr_decay_start: float = 0.5,
    ) -> None:
        super().__init__()
        config = SparseCoderConfig.coerce(sae, **KSAE_DEFAULTS)
        if lr <= 0:
            raise UserError(f"model.lr={lr} must be positive")
        if not 0.0 <= lr_final_fraction <= 1.0 or not 0.0 <= lr_decay_start < 1.0:
            raise UserError(f"model.lr_final_fraction={lr_final_fraction} must be in [0, 1] and "
                            f"model.lr_decay_start={lr_decay_start} in [0, 1)")
        self.save_hyperparameters(ignore=["sae"])
        self.hparams["sae"] = config.as_dict()
        self.sae_config = config
        self.net = SparseCoder(input_dim, config)
        self.register_buffer("bias_initialized", torch.tensor(False))
        n = config.n_latents
        self.val_mse, self.test_mse = MeanMetric(), MeanMetric()
        self.val_mse.set_dtype(torch.float64)
        self.test_mse.set_dtype(torch.float64)
        self.val_active, self.test_active = ActiveUnits(n), ActiveUnits(n)

    def setup(self, stage: str) -> None:
        """Resolve ``sae.select_dtype`` for the device (once), log and record it (``run_record``)."""
        self.net.select_dtype = resolve_and_record(self, self.sae_config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # before the engine was unified the dead-unit counts lived on the system
        state = checkpoint.get("state_dict", {})
        if "samples_since_fired" in state:
            state["net.samples_since_fired"] = state.pop("samples_since_fired")

    def current_k(self) -> int:
        """k for this epoch (the ``sae.k_start`` → ``sae.k`` schedule)."""
        return self.sae_config.k_at(self.current_epoch if self._trainer is not None else 10**9)

    def forward(self, images: Tensor) -> Tensor:
        """Sparse codes (B, n_latents) of images (B, ...) with ``input_dim`` pixels."""
        return self.net.encode(self._check(images))[1]

    def _check(self, images: Tensor) -> Tensor:
        x = images.flatten(1)
        if x.shape[1] != self.hparams.input_dim:
            raise UserError(f"images have {x.shape[1]} pixels but the model expects "
                            f"{self.hparams.input_dim}; check data.image_size and data.channels")
        return x

    def on_train_batch_start(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if self.net.b_dec is not None and not self.bias_initialized:
            self.net.init_pre_bias_(self._check(batch[0]).mean(0))
            self.bias_initialized.fill_(True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = self._check(batch[0])
        net, cfg = self.net, self.sae_config
        codes = net.encode_sparse(x, self.current_k())
        recon = net.decode_sparse(codes)
        mse = F.mse_loss(recon, x)
        loss = mse
        logging = self._logging_step()
        track = cfg.aux_k > 0 or cfg.revive_bias_step > 0
        if logging and track:
            self.log("train/dead_units", net.dead_mask().sum().float())
        if cfg.aux_k > 0:
            aux = net.auxk_loss(x, recon, codes)
            loss = loss + cfg.aux_coef * aux
        if track:
            net.update_dead(codes)
        if logging:
            self.log("train/loss", mse, prog_bar=True)
            if cfg.aux_k > 0:
                self.log("train/auxk_loss", aux)
        return loss

    def _logging_step(self) -> bool:
        """Whether Lightning writes this step's logs (the first step and every
        ``trainer.log_every_n_steps``-th); the other steps skip the ``self.log`` calls, whose
        overhead is a noticeable share of a small step (``benchmarks/bench_lightning_log.py``)."""
        step, every = self.global_step, max(1, self.trainer.log_every_n_steps)
        return step == 0 or (step + 1) % every == 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.net.project_decoder_grad_()

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.net.normalize_decoder_()
        self.net.revive_dead_()

    def _evaluate(self, batch: tuple[Tensor, Tensor], mse: MeanMetric, active: ActiveUnits) -> None:
        x = self._check(batch[0])
        codes = self.net.encode_sparse(x)
        active.update(self.net.dense(codes))
        mse.update((self.net.decode_sparse(codes) - x).pow(2).mean(1))

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
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, hold=hold, final=floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
