"""Present the universality metrics of an SAE system at the end of validation (and test).

The system owns and computes the metrics (``pl_module.universality_results(stage)``, see
``lightning_modules.sae_base``); this callback only presents them: numbers through
``pl_module.log`` (so they reach every logger, the CSV logger included), figures (firing-entropy
histogram, R² matrix) to W&B when a ``WandbLogger`` is attached.

Logged numbers, for stage in {val, test} (definitions: ``docs/metrics.md``):
``<stage>/r2/<src>-><dst>`` (every R² matrix entry), per model ``<stage>/dead_fraction/<model>``
(never fires over the split), ``<stage>/rare_fraction/<model>`` (fires on fewer than the metric's
``rare_below``, default 10, samples), ``<stage>/l0/<model>``, ``<stage>/cofiring/<model>`` (mean over alive latents of P(fires
in all models | fires in this one)); for the shared index ``<stage>/n_dead``, ``<stage>/n_rare``,
``<stage>/rare_fraction``, ``<stage>/n_alive``, ``<stage>/cofiring_iou_mean`` and, over the alive
latents (not rare in some model), ``<stage>/entropy_mean``, ``<stage>/entropy_frac_universal``
(H > 1 - ``band``) and ``<stage>/entropy_frac_specific`` (H < ``band``). Figures: firing-entropy
histogram (alive latents), log10 firing-density histogram per model, R² matrix.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger


class UniversalityLogger(L.Callback):
    """Log the R² matrix, dead fractions and firing-entropy summary at validation/test epoch end.

    Args:
        bins: bins of the entropy histogram over [0, 1].
        band: entropy below ``band`` counts as model-specific, above ``1 - band`` as universal.
        figures: send figures to W&B when a WandbLogger is attached.
        on_test: also log at the end of ``trainer.test``.
    """

    def __init__(self, bins: int = 20, band: float = 0.2, figures: bool = True, on_test: bool = True) -> None:
        super().__init__()
        self.bins, self.band, self.figures, self.on_test = int(bins), float(band), bool(figures), bool(on_test)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._present(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_test:
            self._present(trainer, pl_module, "test")

    def _present(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        res = pl_module.universality_results(stage)
        names = list(pl_module.model_names)
        numbers = self.numbers(res, names, stage)
        pl_module.log_dict(numbers, sync_dist=False)
        if self.figures and trainer.is_global_zero:
            wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
            if wandb_loggers:
                self._send_figures(wandb_loggers, res, names, stage, trainer.global_step)

    def numbers(self, res: dict[str, torch.Tensor], names: list[str], stage: str) -> dict[str, float]:
        """The flat ``name -> value`` dict this callback logs (public for reports and tests)."""
        out: dict[str, float] = {}
        r2 = res["r2"]
        for i, src in enumerate(names):
            for j, dst in enumerate(names):
                out[f"{stage}/r2/{src}->{dst}"] = float(r2[i, j])
        alive_mask = res["alive"]
        for m, name in enumerate(names):
            out[f"{stage}/dead_fraction/{name}"] = float(res["dead_fraction_per_model"][m])
            out[f"{stage}/rare_fraction/{name}"] = float(res["rare_fraction_per_model"][m])
            out[f"{stage}/l0/{name}"] = float(res["l0"][m])
            out[f"{stage}/cofiring/{name}"] = float(res["cofiring_per_model"][m][alive_mask].nanmean())
        alive = res["entropy"][alive_mask]
        out[f"{stage}/n_dead"] = float(res["n_dead"])
        out[f"{stage}/n_rare"] = float(res["n_rare"])
        out[f"{stage}/n_alive"] = float(res["n_alive"])
        out[f"{stage}/rare_fraction"] = float(res["rare_fraction"])
        out[f"{stage}/cofiring_iou_mean"] = float(res["cofiring_iou_mean"])
        nan = float("nan")  # no alive latent: the columns stay, the values say "undefined"
        out[f"{stage}/entropy_mean"] = float(alive.mean()) if alive.numel() else nan
        out[f"{stage}/entropy_frac_universal"] = float((alive > 1 - self.band).double().mean()) if alive.numel() else nan
        out[f"{stage}/entropy_frac_specific"] = float((alive < self.band).double().mean()) if alive.numel() else nan
        return out

    def entropy_figure(self, res: dict[str, torch.Tensor], stage: str):
        """Histogram of firing entropy over alive latents (rare and dead ones counted in the title)."""
        import matplotlib.pyplot as plt

        alive = res["entropy"][res["alive"]].cpu().numpy()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(alive, bins=self.bins, range=(0.0, 1.0), color="tab:blue")
        ax.set_xlabel("firing entropy (0: one model, 1: all models alike)")
        ax.set_ylabel("latents")
        ax.set_title(f"{stage}: {alive.size} alive, {int(res['n_rare'])} rare "
                     f"({int(res['n_dead'])} never fire), excluded", fontsize=9)
        fig.tight_layout()
        return fig

    def frequency_figure(self, res: dict[str, torch.Tensor], names: list[str], stage: str):
        """Per model, latents per log10 firing-density bin (never-firing latents in the legend)."""
        import matplotlib.pyplot as plt

        edges = res["freq_hist_edges"].cpu().numpy()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for m, name in enumerate(names):
            ax.stairs(res["freq_hist"][m].cpu().numpy(), edges, lw=1.8,
                      label=f"{name}: {int(res['never'][m].sum())} never, {int(res['rare'][m].sum())} rare")
        n = float(res["n_samples"][0])
        ax.axvline(math.log10(float(res["rare_below"]) / max(n, 1.0)), color="gray", ls="--", lw=1)
        ax.set_xlabel("log10 firing density (fires / samples)")
        ax.set_ylabel("latents")
        ax.set_title(f"{stage}: firing density ({int(n)} samples)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def r2_figure(self, res: dict[str, torch.Tensor], names: list[str], stage: str):
        """Heat map of the R² matrix (rows: encoder, columns: decoder / target model)."""
        import matplotlib.pyplot as plt

        r2 = res["r2"].cpu().numpy()
        fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
        im = ax.imshow(r2, vmin=min(0.0, float(r2.min())), vmax=1.0, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("decoded into")
        ax.set_ylabel("encoded from")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{r2[i, j]:.2f}", ha="center", va="center", color="w")
        fig.colorbar(im, ax=ax)
        ax.set_title(f"{stage} R²")
        fig.tight_layout()
        return fig

    def _send_figures(self, loggers, res, names, stage, step) -> None:
        import matplotlib.pyplot as plt
        import wandb

        figs = {f"{stage}/entropy_hist": self.entropy_figure(res, stage),
                f"{stage}/frequency_hist": self.frequency_figure(res, names, stage),
                f"{stage}/r2_matrix": self.r2_figure(res, names, stage)}
        try:
            for lg in loggers:
                lg.experiment.log({k: wandb.Image(f) for k, f in figs.items()} | {"trainer/global_step": step})
        finally:
            for f in figs.values():
                plt.close(f)
