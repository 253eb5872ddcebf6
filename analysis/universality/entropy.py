"""Firing-entropy summary of one SAE system and the USAE-vs-independent histogram figure.

Firing entropy (``docs/metrics.md``, computed by ``metrics.universality.FiringCounts``): with
p_m = fires_m / Σ_m fires_m, H = -Σ p_m log p_m / log M; H ≈ 0 model-specific, H ≈ 1 universal.
The histogram and the shares are over *alive* latents: those firing on at least ``min_activations``
(default 10) images of the split in some model. Rare latents (fewer in every model; dead ones, which
never fire, among them) are counted and left out: a latent seen 3 times says little about which
model it belongs to, and left in, the rare ones would dominate the histogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.universality.codes import SplitCodes
from analysis.universality.plotting import save, subplots
from metrics.universality import FiringCounts


@dataclass
class EntropySummary:
    """entropy: (n,) float64, NaN for never-firing latents; dead: (n,) bool, never fires in any
    model; rare: (n,) bool, fires on fewer than ``min_activations`` images in every model (dead ones
    included); hist_counts: (bins,) over ``bin_edges`` (bins + 1,) on [0, 1], alive latents only;
    universal: alive and H ≥ hi; specific: alive and H ≤ lo."""

    entropy: np.ndarray
    dead: np.ndarray
    rare: np.ndarray
    hist_counts: np.ndarray
    bin_edges: np.ndarray
    lo: float
    hi: float
    min_activations: int = 10

    @property
    def n_dead(self) -> int:
        return int(self.dead.sum())

    @property
    def alive(self) -> np.ndarray:
        """(n,) bool: fires on at least ``min_activations`` images in some model."""
        return ~self.rare

    @property
    def alive_entropy(self) -> np.ndarray:
        return self.entropy[self.alive]

    @property
    def universal(self) -> np.ndarray:
        """(n,) bool: alive latents with H ≥ hi."""
        return self.alive & (np.nan_to_num(self.entropy, nan=-1.0) >= self.hi)

    @property
    def specific(self) -> np.ndarray:
        """(n,) bool: alive latents with H ≤ lo."""
        return self.alive & (np.nan_to_num(self.entropy, nan=2.0) <= self.lo)

    def numbers(self) -> dict:
        """Every scalar of the summary plus the histogram, JSON-ready."""
        alive = self.alive_entropy
        n_alive = int(alive.size)
        n_uni, n_spec = int(self.universal.sum()), int(self.specific.sum())
        n = max(1, self.entropy.size)
        return {
            "n_latents": int(self.entropy.size), "n_dead": self.n_dead, "n_rare": int(self.rare.sum()),
            "n_alive": n_alive, "min_activations": self.min_activations,
            "dead_fraction": self.n_dead / n, "rare_fraction": int(self.rare.sum()) / n,
            "lo": self.lo, "hi": self.hi,
            "n_universal": n_uni, "n_specific": n_spec,
            "share_universal": n_uni / n_alive if n_alive else float("nan"),
            "share_specific": n_spec / n_alive if n_alive else float("nan"),
            "universal_to_specific_ratio": n_uni / n_spec if n_spec else float("nan"),
            "entropy_mean": float(alive.mean()) if n_alive else float("nan"),
            "entropy_median": float(np.median(alive)) if n_alive else float("nan"),
            "hist_counts": self.hist_counts.tolist(), "bin_edges": self.bin_edges.tolist(),
        }


def firing_entropy(codes: SplitCodes, threshold: float, lo: float, hi: float, bins: int,
                   min_activations: int = 10) -> EntropySummary:
    """Firing entropy of every latent of ``codes`` (needs M ≥ 2 models) and its histogram over the
    latents alive by ``min_activations`` (module docstring)."""
    if len(codes.names) < 2:
        raise ValueError("firing entropy needs at least 2 models")
    metric = FiringCounts(codes.n_latents, len(codes.names), threshold, min_activations)
    metric.update(codes.code_list())
    res = metric.compute()
    entropy = res["entropy"].cpu().numpy().astype(np.float64) + 0.0  # + 0.0 turns -0.0 into 0.0
    dead = res["dead_latents"].cpu().numpy().astype(bool)
    rare = res["rare_latents"].cpu().numpy().astype(bool)
    counts, edges = np.histogram(entropy[~rare], bins=bins, range=(0.0, 1.0))
    return EntropySummary(entropy, dead, rare, counts, edges, float(lo), float(hi), int(min_activations))


def entropy_figure(summaries: dict[str, EntropySummary], path: Path, model_names: list[str]) -> Path:
    """One figure, one step histogram per system (e.g. "USAE", "independent"), bands shaded."""
    first = next(iter(summaries.values()))
    fig, ax = subplots(figsize=(7.5, 4.2), dpi=110)
    ax.axvspan(0.0, first.lo, color="tab:orange", alpha=0.12, lw=0, label=f"model-specific (H ≤ {first.lo:g})")
    ax.axvspan(first.hi, 1.0, color="tab:green", alpha=0.12, lw=0, label=f"universal (H ≥ {first.hi:g})")
    colors = ["tab:blue", "tab:red", "tab:purple", "tab:gray"]
    for (label, s), color in zip(summaries.items(), colors):
        num = s.numbers()
        ax.stairs(s.hist_counts, s.bin_edges, color=color, lw=2,
                  label=f"{label}: {num['n_alive']} alive, {num['n_rare']} rare (< {num['min_activations']} fires; "
                        f"{num['n_dead']} never fire) excluded; "
                        f"universal {num['share_universal']:.0%}, specific {num['share_specific']:.0%}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("firing entropy H (0: fires in one model only, 1: fires equally in all)")
    ax.set_ylabel("latents")
    ax.set_title(f"Firing entropy over {len(model_names)} models ({', '.join(model_names)})")
    ax.legend(fontsize=8, loc="upper center", framealpha=0.9)
    fig.tight_layout()
    return save(fig, path)
