"""``UniversalityStudy``: the universality report of a Universal SAE against independent SAEs.

``python analyze.py --config configs/<dataset>/analysis_universality.yaml`` builds it. On one
held-out split it computes firing entropy, self/cross R², cross-model feature correlation (with
Hungarian matching and nulls for the independent SAEs), feature statistics, top-activating images
and activation maximisation of universal and model-specific latents, then writes
``<output_dir>/index.html`` (figures in ``figures/``) and ``report.json`` atomically.
Thasarathan et al., ICML 2025, "Universal Sparse Autoencoders" (https://arxiv.org/abs/2502.03714).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from analysis.base import Analysis, check_output_dir, report_dir
from analysis.options import FiringOptions, SaeInputs
from analysis.universality import inputs as loaders
from analysis.universality.activation_max import ActMaxSettings, maximize_latents
from analysis.universality.codes import extract_codes, saes_of
from analysis.universality.codes_file import save_sparse_codes
from analysis.universality.correlation import all_pairs, correlation_figure
from analysis.universality.entropy import entropy_figure, firing_entropy
from analysis.universality.feature_model import LatentObjective, frozen
from analysis.universality.feature_vis import method_inputs
from analysis.universality.html_sections import build_html, wandb_tables
from analysis.universality.r2 import r2_figure, r2_matrix, r2_numbers
from analysis.universality.report import write_json
from analysis.universality.selection import check_latents, select_latents
from analysis.universality.side_by_side import act_max_grid_figure, side_by_side_figure
from analysis.universality.stats import feature_statistics, frequency_figure, stats_figure
from analysis.universality.summary import SYSTEMS, headline_numbers
from analysis.universality.top_images import TopImages, top_activating, top_images_figure
from analysis.wandb_run import log_analysis
from common.errors import UserError
from common.run_options import WandbOptions

LABELS = {"usae": "USAE", "independent": "independent SAEs"}


class UniversalityStudy(Analysis):
    """Universality analysis and feature visualisation of a USAE vs independent SAEs on one split.

    Args:
        inputs: the USAE and independent-SAE checkpoints (both required here), their activation data
            (``train_config`` or ``data``), the split, batch size, device and threads
            (``analysis.options.SaeInputs``).
        output_dir: report folder; replaced atomically (a failed run leaves the old one, or none).
        match_split: the split the Hungarian matchings are fitted on ("val"; null: ``inputs.split``
            itself, in-sample). Scoring stays on ``inputs.split``.
        firing: when a latent fires, is alive, universal or model-specific
            (``analysis.options.FiringOptions``). Entropy and shares use latents alive in some model,
            correlations latents alive in both models of a pair; candidates for visualisation fire at
            least ``min_activations`` times in total.
        entropy_bins: bins of the entropy histograms over [0, 1].
        top_correlated: how many of the most correlated latents the report lists.
        n_features: universal and model-specific latents visualised (each), chosen from the USAE.
        feature_indices: further USAE latents to visualise (their own section); must be < n_latents.
        n_top_images: top-activating images shown per latent and model.
        act_max: feature-visualisation settings (method fourier/pixel/maco/accentuation, steps, lr,
            seed_image, distance_budget, ...; ``activation_max.ActMaxSettings``).
        seed: seeds the nulls' permutations (activation maximisation uses ``act_max.seed``).
        wandb: also send figures, tables and numbers to W&B (``enabled``, ``mode`` offline/online).
    """

    def __init__(
        self,
        inputs: SaeInputs,
        output_dir: str,
        match_split: Literal["train", "val", "test"] | None = "val",
        firing: FiringOptions = FiringOptions(),
        entropy_bins: int = 20,
        top_correlated: int = 20,
        n_features: int = 4,
        feature_indices: list[int] | None = None,
        n_top_images: int = 6,
        act_max: ActMaxSettings = ActMaxSettings(),
        seed: int = 0,
        wandb: WandbOptions = WandbOptions(),
    ) -> None:
        if inputs.independent_checkpoint is None:
            raise UserError("inputs.independent_checkpoint is required for the universality report; point it "
                            "at the IndependentSAEs checkpoint trained on the same cache")
        for name, value in (("entropy_bins", entropy_bins), ("act_max.steps", act_max.steps),
                            ("act_max.batch_size", act_max.batch_size), ("n_top_images", n_top_images)):
            if value < 1:
                raise UserError(f"{name}={value} must be at least 1")
        if n_features < 0 or top_correlated < 0:
            raise UserError("n_features and top_correlated must be >= 0")
        self.inputs, self.firing, self.output_dir = inputs, firing, Path(output_dir)
        self.match_split = None if match_split == inputs.split else match_split
        self.entropy_bins, self.top_correlated = int(entropy_bins), int(top_correlated)
        self.n_features, self.feature_indices = int(n_features), [int(f) for f in feature_indices or []]
        self.n_top_images, self.act_max, self.seed = int(n_top_images), act_max, int(seed)
        self.wandb = wandb
        self.timings: dict[str, float] = {}

    def input_paths(self) -> list[str | Path | None]:
        """What the study reads; the report folder may neither be nor hold any of them."""
        return self.inputs.paths()

    @contextlib.contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        print(f"[analysis] {stage} ...", flush=True)
        yield
        self.timings[stage] = time.perf_counter() - start

    def run(self) -> Path:
        start = time.perf_counter()
        check_output_dir(self.output_dir, self.input_paths())
        with self._timed("load"):
            systems, dm = self.inputs.load()
            n_latents = next(iter(saes_of(systems["usae"]).values())).get_dictionary().shape[0]
            requested = check_latents(self.feature_indices, n_latents, "feature_indices")
            data = loaders.load_split(dm, self.inputs.split)
            fit_data = loaders.load_split(dm, self.match_split) if self.match_split else None
            names = list(saes_of(systems["usae"]))
        with report_dir(self.output_dir, self.input_paths()) as out:
            figures_dir = out / "figures"
            figures_dir.mkdir()
            report, figures, act = self._analyse(systems, dm, data, names, requested, figures_dir, fit_data)
            # the activation-maximisation images themselves (float in [0, 1]), for re-plotting
            np.savez_compressed(out / "act_max_images.npz", latents=np.array(report["visualised"]["latents"]),
                                **{m: act[m].images.numpy() for m in names})
            self.timings["total"] = time.perf_counter() - start
            report["timings_s"] = dict(self.timings)
            rel = {key: path.relative_to(out).as_posix() for key, path in figures.items()}
            report["figures"] = rel
            write_json(out / "report.json", report)
            (out / "index.html").write_text(build_html(report, rel), encoding="utf-8")
        print(f"[analysis] report: {self.output_dir / 'index.html'} ({self.timings['total']:.1f} s)", flush=True)
        if self.wandb.enabled:
            log_analysis(self.wandb, f"universality/{self.output_dir.name}", self.output_dir, "analysis",
                         {k: self.output_dir / v for k, v in rel.items()}, wandb_tables(report),
                         report["headline_flat"], report["config"])
        return self.output_dir

    def _analyse(self, systems, dm, data, names, requested, figs: Path, fit_data=None):
        codes, r2, entropy, pairs, stats = {}, {}, {}, {}, {}
        for kind, system in systems.items():
            system.to(self.inputs.device)
            with self._timed(f"codes/{kind}"):
                codes[kind] = extract_codes(system, data.features, self.inputs.batch_size, self.inputs.device)
                save_sparse_codes(figs.parent / f"codes_{kind}.npz", codes[kind],  # reused by the explorer
                                  self.inputs.checkpoint(kind), self.inputs.split)
                r2[kind] = r2_matrix(system, codes[kind], data.features, self.inputs.batch_size, self.inputs.device)
                fit_codes = None if fit_data is None else \
                    extract_codes(system, fit_data.features, self.inputs.batch_size, self.inputs.device)
            system.cpu()
            with self._timed(f"entropy+stats/{kind}"):
                entropy[kind] = firing_entropy(codes[kind], self.firing.fire_threshold, self.firing.entropy_lo,
                                               self.firing.entropy_hi, self.entropy_bins, self.firing.min_activations)
                norms = {n: sae.get_dictionary().detach().norm(dim=1) for n, sae in saes_of(system).items()}
                stats[kind] = feature_statistics(codes[kind], self.firing.fire_threshold, norms,
                                                 self.firing.min_activations)
            with self._timed(f"correlation/{kind}"):
                pairs[kind] = all_pairs(codes[kind], self.firing.fire_threshold, self.firing.min_activations, self.seed,
                                        fit_codes, self.match_split or self.inputs.split, self.inputs.split)
        fire_counts = codes["usae"].fire_counts(self.firing.fire_threshold).numpy()
        groups = select_latents(entropy["usae"], fire_counts, self.n_features, self.firing.min_activations)
        if requested:
            groups["requested"] = requested
        latents = list(dict.fromkeys(f for g in groups.values() for f in g))
        tops = {m: top_activating(codes["usae"], m, latents, self.n_top_images) for m in names}
        with self._timed("activation_max"):
            act = self._activation_max(systems["usae"], dm, data, names, latents, codes["usae"])
        with self._timed("figures"):
            figures = self._figures(names, data, codes, r2, entropy, pairs, stats, groups, latents, tops, act,
                                    fire_counts, figs)
        report = self._numbers(systems, data, names, r2, entropy, pairs, stats, groups, latents, tops, act,
                               fire_counts)
        return report, figures, act

    def _activation_max(self, usae, dm, data, names, latents, codes):
        """Per backbone, one batched optimisation of every chosen latent (keys (model, latent))."""
        shape = loaders.input_shape(dm, data.images)
        preprocess = loaders.preprocess_fn(dm)
        saes = saes_of(usae)
        extra = method_inputs(self.act_max, codes, data.images, data.labels, latents, shape, self.n_top_images)
        result = {}
        for m, name in enumerate(names):
            if not latents:
                result[name] = maximize_latents(lambda x, f: x.sum((1, 2, 3)), [], shape, self.act_max)
                continue
            head = loaders.feature_head(dm, name).to(self.inputs.device)
            sae = saes[name].to(self.inputs.device)
            objective = LatentObjective(preprocess, head, sae)
            with frozen(head, sae):
                result[name] = maximize_latents(objective, latents, shape, self.act_max,
                                                keys=[(m, f) for f in latents], device=self.inputs.device, **extra)
            sae.cpu()
        return result

    def _figures(self, names, data, codes, r2, entropy, pairs, stats, groups, latents, tops, act, fire_counts, figs):
        out = {"entropy": entropy_figure({LABELS[k]: entropy[k] for k in SYSTEMS}, figs / "entropy.png", names),
               "r2": r2_figure({LABELS[k]: r2[k] for k in SYSTEMS}, names, figs / "r2.png"),
               "correlation": correlation_figure(pairs["usae"], pairs["independent"], figs / "correlation.png"),
               "stats": stats_figure(stats["usae"], entropy["usae"], stats["independent"], entropy["independent"],
                                     figs / "feature_stats.png"),
               "frequency": frequency_figure({LABELS[k]: stats[k] for k in SYSTEMS}, figs / "frequency.png")}
        if not latents:
            return out
        out["top_images"] = top_images_figure(data.images, data.labels, data.class_names, tops, latents,
                                              figs / "top_images.png")
        out["act_max"] = act_max_grid_figure(
            latents, names, {m: act[m].images for m in names}, {m: act[m].start for m in names},
            {m: act[m].final for m in names}, figs / "act_max.png",
            f"Feature visualisation ({self.act_max.method}, {self.act_max.steps} steps): "
            "latent: pre-activation before → after")
        position = {f: i for i, f in enumerate(latents)}
        titles = {"universal": "Universal latents (highest firing entropy): each backbone's view",
                  "specific": "Model-specific latents (lowest firing entropy): each backbone's view",
                  "requested": "Requested latents: each backbone's view"}
        for group, chosen in groups.items():
            if not chosen:
                continue
            rows = [position[f] for f in chosen]
            sub_tops = {m: TopImages(tops[m].index[rows], tops[m].code[rows], tops[m].pre[rows]) for m in names}
            out[f"side_by_side_{group}"] = side_by_side_figure(
                chosen, names, {m: act[m].images[rows] for m in names}, {m: act[m].final[rows] for m in names},
                sub_tops, data.images, entropy["usae"].entropy, fire_counts, titles[group],
                figs / f"side_by_side_{group}.png", min(3, self.n_top_images), method=self.act_max.method,
                seeds=act[names[0]].seeds[rows] if act[names[0]].seeds is not None else None)
        return out

    def _numbers(self, systems, data, names, r2, entropy, pairs, stats, groups, latents, tops, act, fire_counts):
        usae_sae = next(iter(saes_of(systems["usae"]).values()))
        systems_out = {}
        for kind in SYSTEMS:
            systems_out[kind] = {
                "r2": r2_numbers(r2[kind], names),
                "entropy": entropy[kind].numbers(),
                "correlation": [p.numbers(self.top_correlated) for p in pairs[kind]],
                "feature_stats": stats[kind].numbers(entropy[kind]),
                "per_latent_entropy": entropy[kind].entropy.tolist(),
            }
        act_out = {m: [{"latent": f, "start": float(act[m].start[i]), "final": float(act[m].final[i])}
                       for i, f in enumerate(latents)] for m in names}
        headline = headline_numbers(systems_out, act_out)
        config = {k: v for k, v in vars(self).items() if k not in ("inputs", "firing", "timings", "act_max", "wandb")}
        config.update(self.inputs.numbers(), **asdict(self.firing), output_dir=str(self.output_dir),
                      act_max=asdict(self.act_max), wandb=asdict(self.wandb))
        return {
            "config": config,
            "setup": {"models": names, "feature_dims": {n: int(data.features[n].shape[1]) for n in names},
                      "n_latents": int(usae_sae.get_dictionary().shape[0]), "k": int(getattr(usae_sae, "k", 0)),
                      "split": self.inputs.split, "match_split": self.match_split or self.inputs.split,
                      "n_images": int(data.images.shape[0])},
            "headline": headline,
            "headline_flat": {f"{kind}/{k}": v for kind, d in headline.items() for k, v in d.items()},
            "systems": systems_out,
            "visualised": {"groups": groups, "latents": latents,
                           "top_images": {m: tops[m].numbers(latents) for m in names},
                           "activation_max": act_out,
                           "fire_counts": {m: fire_counts[j, latents].tolist() for j, m in enumerate(names)}},
        }
