"""Per-latent, per-model feature statistics and cross-model alignment scores.

* frequency[m, f]: share of the split's images on which latent f fires (code > threshold) in model m;
  per model, both dead definitions (never fires; fires on fewer than ``min_activations`` images) and
  the histogram of log10 frequency (as SAE dashboards show it; never-firing latents counted apart);
* mean_activation[m, f]: mean code over the images where it fires (NaN if it never does);
* energy[m, f]: mean over images of ‖z_f D_f‖² = mean(z_f²)·‖D_f‖², the latent's share of the
  reconstruction's energy (‖D_f‖ = 1 for the project's unit-norm dictionaries);
* alignment: co-firing IoU (images where f fires in every model / images where it fires in any)
  and, per model, P(fires in all | fires in m); means over alive latents.
All firing numbers come from ``metrics.universality.FiringCounts`` (definitions: ``docs/metrics.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from analysis.universality.codes import SplitCodes
from analysis.universality.entropy import EntropySummary
from analysis.universality.plotting import save, subplots
from metrics.universality import FiringCounts


def _nan_stats(v: np.ndarray) -> dict:
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else float("nan"),
            "median": float(np.median(v)) if v.size else float("nan")}


@dataclass
class FeatureStats:
    """Arrays are (M, n) in model order ``names``, except cofiring_iou and alive (n,);
    freq_hist (M, bins) over freq_hist_edges (bins + 1,) in log10 frequency."""

    names: list[str]
    frequency: np.ndarray
    mean_activation: np.ndarray
    energy: np.ndarray
    cofiring_iou: np.ndarray
    cofiring_per_model: np.ndarray
    fire_counts: np.ndarray
    alive: np.ndarray
    freq_hist: np.ndarray
    freq_hist_edges: np.ndarray
    n_samples: int
    min_activations: int = 10

    def firing_numbers(self) -> dict[str, dict]:
        """model -> {n_never, n_rare, n_alive (by this model alone), fractions, frequency histogram}."""
        out = {}
        n = self.fire_counts.shape[1]
        for m, name in enumerate(self.names):
            never = int((self.fire_counts[m] == 0).sum())
            rare = int((self.fire_counts[m] < self.min_activations).sum())
            positive = self.frequency[m][self.frequency[m] > 0]
            out[name] = {"n_never": never, "n_rare": rare, "n_alive": n - rare,
                         "never_fraction": never / n, "rare_fraction": rare / n,
                         "median_log10_frequency": float(np.median(np.log10(positive))) if positive.size else float("nan"),
                         "freq_hist": self.freq_hist[m].tolist()}
        return out

    def energy_shares(self, groups: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
        """model -> group -> share of that model's total code energy carried by the latents in the
        (n,) bool mask of each group (e.g. universal, specific)."""
        out = {}
        for m, name in enumerate(self.names):
            total = float(self.energy[m].sum())
            out[name] = {g: float(self.energy[m, mask].sum()) / total if total > 0 else float("nan")
                         for g, mask in groups.items()}
        return out

    def numbers(self, entropy: EntropySummary) -> dict:
        """Summaries per model, alignment and energy shares, plus every per-latent array."""
        groups = {"universal": entropy.universal, "specific": entropy.specific}
        return {
            "n_samples": self.n_samples, "min_activations": self.min_activations,
            "firing": self.firing_numbers(), "freq_hist_edges": self.freq_hist_edges.tolist(),
            "per_model": {
                name: {"frequency": _nan_stats(self.frequency[m]),
                       "mean_activation": _nan_stats(self.mean_activation[m]),
                       "energy_total": float(self.energy[m].sum()),
                       "cofiring_given_fires": _nan_stats(self.cofiring_per_model[m][self.alive])}
                for m, name in enumerate(self.names)},
            "cofiring_iou": _nan_stats(self.cofiring_iou[self.alive]),
            "energy_share": self.energy_shares(groups),
            "universal_to_specific_ratio": entropy.numbers()["universal_to_specific_ratio"],
            "per_latent": {"frequency": self.frequency.tolist(), "mean_activation": self.mean_activation.tolist(),
                           "energy": self.energy.tolist(), "cofiring_iou": self.cofiring_iou.tolist()},
        }


def feature_statistics(codes: SplitCodes, threshold: float,
                       dictionary_norms: dict[str, torch.Tensor] | None = None,
                       min_activations: int = 10) -> FeatureStats:
    """``FeatureStats`` of ``codes``; ``dictionary_norms`` name -> (n,) row norms ‖D_f‖ (default 1);
    ``min_activations``: fewer fires over the split is "rare" (module docstring)."""
    freq, mean_act, energy = [], [], []
    for name in codes.names:
        z = codes.codes[name].to(torch.float64)
        fires = z > threshold
        count = fires.sum(0)
        freq.append((count / z.shape[0]).numpy())
        total = torch.where(fires, z, torch.zeros_like(z)).sum(0)
        mean_act.append(torch.where(count > 0, total / count.clamp_min(1), torch.nan).numpy())
        norms = torch.ones(z.shape[1], dtype=torch.float64) if dictionary_norms is None \
            else dictionary_norms[name].detach().to(torch.float64).cpu()
        energy.append((z.square().mean(0) * norms.square()).numpy())
    counts = FiringCounts(codes.n_latents, len(codes.names), threshold, min_activations)
    counts.update(codes.code_list())
    res = {k: v.cpu().numpy() for k, v in counts.compute().items()}
    return FeatureStats(list(codes.names), np.stack(freq), np.stack(mean_act), np.stack(energy),
                        res["cofiring_iou"], res["cofiring_per_model"], res["fire_counts"], res["alive"].astype(bool),
                        res["freq_hist"], res["freq_hist_edges"], codes.n_samples, int(min_activations))


def frequency_figure(stats: dict[str, FeatureStats], path: Path) -> Path:
    """One panel per system: per model, latents per log10 firing-frequency bin; the dashed line is
    ``min_activations`` images (left of it: rare), never-firing latents in the legend."""
    fig, axes = subplots(1, len(stats), figsize=(6.2 * len(stats), 3.8), dpi=110, squeeze=False, sharey=True)
    for ax, (label, st) in zip(axes[0], stats.items()):
        nums = st.firing_numbers()
        for m, name in enumerate(st.names):
            ax.stairs(st.freq_hist[m], st.freq_hist_edges, lw=1.8,
                      label=f"{name}: {nums[name]['n_rare']} rare ({nums[name]['rare_fraction']:.0%}), "
                            f"{nums[name]['n_never']} never")
        ax.axvline(np.log10(st.min_activations / max(1, st.n_samples)), color="gray", ls="--", lw=1,
                   label=f"{st.min_activations} of {st.n_samples} images")
        ax.set_xlabel("log10 firing frequency (images where the latent fires / images)")
        ax.set_title(f"{label}: firing frequency per latent", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("latents")
    fig.tight_layout()
    return save(fig, path)


def stats_figure(usae: FeatureStats, usae_entropy: EntropySummary, independent: FeatureStats,
                 independent_entropy: EntropySummary, path: Path) -> Path:
    """Left: USAE firing frequency in model 1 vs model 2 per latent, coloured by entropy.
    Right: share of each model's code energy in universal / specific latents, USAE vs independent."""
    fig, (ax, bx) = subplots(1, 2, figsize=(12, 4.6), dpi=110)
    a, b = usae.names[0], usae.names[1]
    floor = 0.5 * float(np.min(usae.frequency[usae.frequency > 0], initial=1.0))  # where "never" is drawn
    fa, fb = np.maximum(usae.frequency[0], floor), np.maximum(usae.frequency[1], floor)
    alive = usae_entropy.alive
    sc = ax.scatter(fa[alive], fb[alive], c=usae_entropy.entropy[alive], cmap="coolwarm_r", vmin=0, vmax=1, s=6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"firing frequency in {a} (never: drawn at {floor:.1e})")
    ax.set_ylabel(f"firing frequency in {b}")
    ax.set_title(f"USAE latents ({int(alive.sum())} alive)")
    fig.colorbar(sc, ax=ax, label="firing entropy H")
    labels, width = [], 0.2
    systems = [("USAE", usae, usae_entropy), ("independent", independent, independent_entropy)]
    for s, (sys_label, stats, ent) in enumerate(systems):
        shares = stats.energy_shares({"universal": ent.universal, "specific": ent.specific})
        for g, (group, color) in enumerate([("universal", "tab:green"), ("specific", "tab:orange")]):
            x = np.arange(len(stats.names)) + (2 * s + g - 1.5) * width
            bx.bar(x, [shares[n][group] for n in stats.names], width, color=color,
                   alpha=1.0 if s == 0 else 0.45, hatch=None if s == 0 else "//",
                   label=f"{sys_label}: {group} latents")
        labels = stats.names
    bx.set_xticks(range(len(labels)), labels)
    bx.set_ylim(0, 1.3)
    bx.set_yticks(np.linspace(0, 1, 6))
    bx.set_ylabel("share of the model's code energy")
    bx.set_title("Energy in universal vs model-specific latents")
    bx.legend(fontsize=8, ncol=2, loc="upper center")
    fig.tight_layout()
    return save(fig, path)
