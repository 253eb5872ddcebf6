"""The training/evaluation loop shared by ``UniversalSAE`` and ``IndependentSAEs``.

Batches are ``dict[str, Tensor]``: backbone name -> (B, d_m) float32 features, rows aligned by
image. Optimisation is manual (``automatic_optimization = False``) so that the dictionary-gradient
projection runs between backward and ``step`` and the renormalisation right after it, and so
that paper mode can step one model's optimizer per batch. Every LR scheduler is stepped once
per training batch, so all of them follow the global step.

Logged: ``train/loss`` (+ ``train/mse/<src>-><dst>``, ``train/aux/<m>`` per epoch), ``val/loss``,
``val/r2_self_mean``, ``val/r2_cross_mean``, ``val/dead_fraction``, ``val/l0_mean`` (and the same
with ``test/``). ``callbacks.universality_logger.UniversalityLogger`` adds the per-pair entries.
"""

from __future__ import annotations

import warnings
from typing import Literal, Mapping

import lightning as L
import torch

from common.errors import UserError
from components.sae_bank import LOSS_NORMALISATIONS, LossNormalisation, SAEBank, make_adam
from components.schedules import warmup_cosine
from components.sparse_coder import SparseCodes, SparseCoderConfig
from lightning_modules.run_record import resolve_and_record
from metrics.universality import UniversalityMetrics

Stage = Literal["val", "test"]


class MultiSAESystem(L.LightningModule):
    """Base system: M TopK SAEs over a shared latent index (see the subclasses for the loss).

    Subclasses set ``self.targets`` ("all" or "self") and ``self.cross_weight`` and implement
    ``train_sources()`` (models encoded this step) and ``optimizer_groups()`` (models per optimizer).
    """

    targets: Literal["self", "all"] = "all"
    cross_weight: float = 1.0

    def __init__(
        self,
        feature_dims: Mapping[str, int],
        sae: SparseCoderConfig | Mapping | None,
        *,
        lr: float,
        warmup_steps: int,
        lr_schedule: Literal["constant", "cosine"],
        grad_clip: float | None,
        fire_threshold: float,
        check_finite: bool,
        seed: int,
        loss_normalisation: LossNormalisation,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        config = SparseCoderConfig.coerce(sae, n_latents=10_000, k=32)
        if lr <= 0:
            raise UserError(f"model.lr={lr} must be positive")
        if warmup_steps < 0:
            raise UserError(f"model.warmup_steps={warmup_steps} must be >= 0")
        if lr_schedule not in ("constant", "cosine"):
            raise UserError(f"model.lr_schedule={lr_schedule!r} is unknown; use 'constant' or 'cosine'")
        if grad_clip is not None and grad_clip <= 0:
            raise UserError(f"model.grad_clip={grad_clip} must be positive or null")
        if loss_normalisation not in LOSS_NORMALISATIONS:
            raise UserError(f"model.loss_normalisation={loss_normalisation!r} is unknown; "
                            f"use one of {', '.join(LOSS_NORMALISATIONS)}")
        self.sae_config = config
        self.bank = SAEBank(feature_dims, config, seed=seed)
        self.model_names = list(self.bank.names)
        dims = [self.bank.feature_dims[n] for n in self.model_names]
        self.val_metrics = UniversalityMetrics(dims, config.n_latents, fire_threshold)
        self.test_metrics = UniversalityMetrics(dims, config.n_latents, fire_threshold)
        self._results: dict[str, dict[str, torch.Tensor]] = {}
        self._pre_bias_pending = config.pre_bias or config.decoder_bias

    def setup(self, stage: str) -> None:
        """Resolve ``sae.select_dtype`` for the device (once), log and record it (``run_record``)."""
        self.bank.set_select_dtype(resolve_and_record(self, self.sae_config))

    # ----- what the subclasses choose ---------------------------------------------------------
    def train_sources(self) -> list[str]:
        return self.model_names

    def optimizer_groups(self) -> list[list[str]]:
        return [self.model_names]

    # ----- analysis API -------------------------------------------------------------------------
    def encode(self, model: str, x: torch.Tensor) -> SparseCodes:
        """Sparse codes of model ``model``'s features x (B, d): ``.indices``/``.values`` (B, k),
        ``.pre_codes`` (B, n)."""
        return self.bank.encode(model, x)

    def dense_codes(self, model: str, x: torch.Tensor) -> torch.Tensor:
        """(B, n) TopK codes of model ``model``'s features x (B, d)."""
        return self.bank.dense_codes(model, self.bank.encode(model, x))

    def decode(self, model: str, codes: SparseCodes) -> torch.Tensor:
        """Decode codes from any encoder with model ``model``'s decoder: (B, d_model)."""
        return self.bank.decode(model, codes)

    def dictionary(self, model: str) -> torch.Tensor:
        """Model ``model``'s (n, d) dictionary."""
        return self.bank.saes[model].get_dictionary()

    # ----- training -----------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.bank.check_batch(batch, batch_idx, self.hparams.check_finite)
        if self._pre_bias_pending:
            self._init_pre_bias(batch)
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        sources = self.train_sources()
        groups = self.optimizer_groups()
        stepping = [i for i, g in enumerate(groups) if any(s in g for s in sources)]
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss, parts = self.bank.loss(batch, sources, self.targets, self.cross_weight, training=True,
                                     k=self.sae_config.k_at(self.current_epoch),
                                     normalisation=self.hparams.loss_normalisation)
        self.manual_backward(loss)
        stepped = [name for i in stepping for name in groups[i]]
        self.bank.project_decoder_grads_(stepped)
        for i in stepping:
            if self.hparams.grad_clip:
                self.clip_gradients(opts[i], gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
            opts[i].step()
        self.bank.normalize_and_revive_(stepped)
        scheds = self.lr_schedulers()
        with warnings.catch_warnings():  # paper mode steps the schedulers of undrawn models on purpose
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for sched in scheds if isinstance(scheds, list) else [scheds]:
                sched.step()
        batch_size = batch[self.model_names[0]].shape[0]
        # per-step value of this rank (no sync); epoch means are synced once, at the epoch end
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, batch_size=batch_size)
        self.log("train/loss_epoch", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, on_step=False, on_epoch=True, sync_dist=True,
                      batch_size=batch_size)
        return loss.detach()

    def _init_pre_bias(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Pre-bias := mean of the first training batch, averaged over DDP ranks (Gao et al. 2024)."""
        means = {name: batch[name].float().mean(0) for name in self.model_names}
        if self._trainer is not None and self.trainer.world_size > 1:
            means = {n: self.trainer.strategy.reduce(m, reduce_op="mean") for n, m in means.items()}
        self.bank.init_pre_bias_(means)
        self._pre_bias_pending = False

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._pre_bias_pending = False

    def configure_optimizers(self):
        opts = [make_adam((p for n in g for p in self.bank.saes[n].parameters()), self.hparams.lr)
                for g in self.optimizer_groups()]
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 0
        total = int(total) if total != float("inf") else 0
        warmup, cosine = self.hparams.warmup_steps, self.hparams.lr_schedule == "cosine"

        def f(step: int) -> float:
            return warmup_cosine(step, total, warmup=warmup, hold=warmup, cosine=cosine)

        return opts, [torch.optim.lr_scheduler.LambdaLR(o, f) for o in opts]

    # ----- evaluation ---------------------------------------------------------------------------
    def _eval_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: Stage) -> torch.Tensor:
        self.bank.check_batch(batch, batch_idx, self.hparams.check_finite)
        feats = [batch[n] for n in self.model_names]
        codes, recons = self.bank.reconstruct_all(batch)
        self._metrics(stage).update(feats, recons, codes)
        loss = feats[0].new_zeros((), dtype=torch.float32)
        for i in range(len(feats)):
            for j in range(len(feats)):
                if i == j or self.targets == "all":
                    w = 1.0 if i == j else self.cross_weight
                    loss = loss + w * (recons[i][j].float() - feats[j].float()).square().mean()
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=feats[0].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, batch_idx, "test")

    def _metrics(self, stage: Stage) -> UniversalityMetrics:
        return self.val_metrics if stage == "val" else self.test_metrics

    def universality_results(self, stage: Stage = "val") -> dict[str, torch.Tensor]:
        """The split's metrics (``UniversalityMetrics.compute()``), synced over ranks, cached until reset."""
        if stage not in self._results:
            self._results[stage] = self._metrics(stage).compute()
        return self._results[stage]

    def _log_summary(self, stage: Stage) -> None:
        res = self.universality_results(stage)
        r2 = res["r2"]
        eye = torch.eye(r2.shape[0], dtype=torch.bool, device=r2.device)
        summary = {f"{stage}/r2_self_mean": r2[eye].mean(), f"{stage}/dead_fraction": res["dead_fraction"],
                   f"{stage}/l0_mean": res["l0"].mean()}
        if r2.shape[0] > 1:
            summary[f"{stage}/r2_cross_mean"] = r2[~eye].mean()
        self.log_dict({k: v.float() for k, v in summary.items()})
        self._metrics(stage).reset()
        self._results.pop(stage, None)

    def on_validation_epoch_end(self) -> None:
        self._log_summary("val")

    def on_test_epoch_end(self) -> None:
        self._log_summary("test")
