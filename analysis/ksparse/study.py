"""``KSparseStudy``: the ``analyze.py`` job of the k-sparse study — importance, atoms, overlays,
ablation with matched controls, occlusion — written as one report folder (Markdown + self-contained
HTML, PNGs, ``results.json``)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Literal

import torch
from matplotlib.figure import Figure

from analysis.base import Analysis, check_output_dir, report_dir
from analysis.ksparse import figures
from analysis.ksparse.ablation import RANKINGS, ablation_study, decoder_side_ablation, draw_controls, ranking_scores
from analysis.ksparse.artifacts import ProbedAutoencoder
from analysis.ksparse.attribution import feature_overlay, occlusion_map
from analysis.ksparse.importance import class_mean_codes, top_units
from analysis.options import KSparseInputs
from analysis.wandb_run import log_analysis
from common.errors import UserError
from components.ksparse import read_state_dict
from common.io import atomic_write_json, atomic_write_text, check_writable_dir
from common.run_options import WandbOptions
from lightning_modules.linear_probe import classifier_from_state


class KSparseStudy(Analysis):
    """Explain the k-sparse codes through the linear probe trained on them.

    Reads ``encoder.pth``/``decoder.pth`` (``ksae_run``) and ``classifier.pth`` (``probe_run``);
    every analysis runs on the codes that classifier reads (the probe run's ``encode_k``; the
    study's headline probe reads the k = 50 codes), except the decoder-side ablation, which decodes
    the autoencoder's own k-codes. Importance (and the control units' bins) come from
    ``importance_split``; everything else is evaluated on ``eval_split`` (so the units are not
    chosen on the images they are tested on). Writes ``output_dir`` (default
    ``<ksae_run>/report``): ``report.md`` (links ``figures/*.png``), ``report.html`` (figures
    embedded, opens anywhere) and ``results.json``. The folder is built beside the target and
    renamed into place at the end, so a failure leaves the previous report (or none), never a part.

    Args:
        inputs: the image datamodule, the autoencoder's and the probe's run folders, the importance
            and eval splits (``analysis.options.KSparseInputs``).
        pixel_probe_run: run folder of the raw-pixel probe: its results.json gives the baseline
            accuracy, its classifier.pth judges the decoded ablations; ``None`` leaves both out.
        output_dir: report folder; ``None`` = ``<ksae_run>/report``.
        top_units: most important units per class shown in the atom grid and the tables.
        ablation_units: units zeroed per class in the ablation (top ones, and as many random ones).
        ablation_seeds: random draws of the control units.
        control_bins: quantile bins of class-mean activation within which control units are matched.
        overlay_top_k: units drawn in each feature overlay.
        occlusion_window: side of the occluding square, in pixels.
        occlusion_stride: step of the occluding square, in pixels.
        occlusion_output: watch the predicted class's ``probability`` or ``logit``.
        wandb: also log the figures and summary numbers to Weights & Biases.
    """

    def __init__(
        self,
        inputs: KSparseInputs,
        pixel_probe_run: str | None = "runs/fashion_mnist_probe_pixels/main",
        output_dir: str | None = None,
        top_units: int = 8,
        ablation_units: int = 10,
        ablation_seeds: int = 5,
        control_bins: int = 10,
        overlay_top_k: int = 6,
        occlusion_window: int = 4,
        occlusion_stride: int = 2,
        occlusion_output: Literal["probability", "logit"] = "probability",
        wandb: WandbOptions = WandbOptions(),
    ) -> None:
        if min(top_units, ablation_units, ablation_seeds, overlay_top_k, control_bins) < 1:
            raise UserError("top_units, ablation_units, ablation_seeds, control_bins and overlay_top_k must be "
                            "at least 1")
        self.inputs = inputs
        self.pixel_probe_run = Path(pixel_probe_run) if pixel_probe_run else None
        self.output_dir = Path(output_dir) if output_dir else inputs.ksae_run / "report"
        self.top_units, self.ablation_units, self.ablation_seeds = top_units, ablation_units, ablation_seeds
        self.control_bins = control_bins
        self.overlay_top_k = overlay_top_k
        self.occlusion = dict(window=occlusion_window, stride=occlusion_stride, output=occlusion_output)
        self.wandb = wandb

    # ----- inputs -------------------------------------------------------------------------------
    def load(self) -> ProbedAutoencoder:
        """The frozen encoder, decoder and classifier (``UserError`` if missing or mismatched)."""
        model = self.inputs.load()
        for name, value in (("top_units", self.top_units), ("ablation_units", self.ablation_units),
                            ("overlay_top_k", self.overlay_top_k)):
            if value > model.n_units:
                raise UserError(f"{name}={value} is larger than the code size {model.n_units}; lower it")
        return model

    # ----- the study ----------------------------------------------------------------------------
    @torch.no_grad()
    def compute(self, model: ProbedAutoencoder) -> tuple[dict, dict[str, Figure]]:
        """All numbers (JSON-ready) and figures (name → Figure)."""
        names = list(self.inputs.data.class_names)
        classes = len(names)
        x_imp, y_imp = self.inputs.images(self.inputs.importance_split)
        codes_imp = model.batched_codes(x_imp)
        class_means = class_mean_codes(codes_imp, y_imp, classes)
        rankings = ranking_scores(model.classifier.weight, class_means)
        scores = rankings["importance"]
        top = top_units(scores, max(self.top_units, self.ablation_units))
        x, y = self.inputs.images(self.inputs.eval_split)
        codes = model.batched_codes(x)
        ae_codes = codes if model.probe_k == model.k else model.batched_codes(x, k=model.k)
        recon = model.decoder(ae_codes)
        fires = (ae_codes > 0).sum(0)
        accuracy = (model.classifier(codes).argmax(1) == y).double().mean().item()
        ablation = self._ablation(model, rankings, class_means, codes_imp, y_imp, codes, ae_codes, y, names)
        examples = [int((y == c).nonzero()[0]) for c in range(classes)]
        overlays = [feature_overlay(model, x[i], self.overlay_top_k) for i in examples]
        occlusions = [occlusion_map(model, x[i], **self.occlusion) for i in examples]
        side = x.shape[-1]
        shown = top[:, : self.top_units]
        numbers = {
            "splits": {"importance": self.inputs.importance_split, "eval": self.inputs.eval_split},
            "n_units": model.n_units, "k": model.k, "probe_k": model.probe_k,
            "reconstruction": {
                "mse_per_pixel": (recon - x.flatten(1)).pow(2).double().mean().item(),
                "dead_units": int((fires == 0).sum()), "dead_fraction": (fires == 0).double().mean().item(),
                "mean_active_per_image": (ae_codes > 0).sum(1).double().mean().item()},
            "probe": {"accuracy": accuracy, "pixel_baseline_accuracy": self._pixel_baseline(),
                      "codes": f"top {model.probe_k} units per image"},
            "importance": {"definition": "importance[i, c] = |W[c, i]| * mean(z_i over images of class c)",
                           "top_units": {names[c]: [{"unit": int(u), "importance": float(scores[u, c])}
                                                    for u in shown[c]] for c in range(classes)}},
            "ablation": ablation,
            "overlays": [{"image_index": i, "label": names[int(y[i])], "predicted": names[o.target],
                          "units": o.units.tolist(), "contributions": o.contributions.tolist()}
                         for i, o in zip(examples, overlays)],
            "occlusion": {**self.occlusion, "examples": [
                {"image_index": i, "label": names[int(y[i])], "max_drop": float(m.max()),
                 "mean_drop": float(m.mean())} for i, m in zip(examples, occlusions)]},
        }
        atoms = model.decoder.weight[shown.flatten()].reshape(classes, -1, side, side)
        shown_scores = torch.stack([scores[shown[c], c] for c in range(classes)])
        targets = [int(model(x[i : i + 1]).argmax()) for i in examples]
        figs = {
            "reconstructions": figures.reconstruction_figure(
                x[examples, 0], recon[examples].reshape(-1, side, side), [names[c] for c in range(classes)]),
            "atoms": figures.atom_grid(atoms, shown, shown_scores, names),
            "importance": figures.importance_heatmap(scores.float(), shown, names),
            "overlays": figures.overlay_figure(overlays, names, [int(y[i]) for i in examples]),
            "occlusion": figures.occlusion_figure([x[i, 0] for i in examples], occlusions, targets, names,
                                                  self.occlusion["output"], [int(y[i]) for i in examples]),
            "ablation": figures.ablation_figure(ablation),
        }
        return numbers, figs

    def _ablation(self, model: ProbedAutoencoder, rankings: dict[str, torch.Tensor], class_means: torch.Tensor,
                  codes_imp: torch.Tensor, y_imp: torch.Tensor, codes: torch.Tensor, ae_codes: torch.Tensor,
                  y: torch.Tensor, names: list[str]) -> dict:
        """The ablation of every ranking against its matched controls (judged by the probe on the
        eval split), and the importance ranking's decoder-side ablation (judged by the pixel probe)."""
        seeds = list(range(self.ablation_seeds))
        by_ranking, importance_controls = {}, None
        for name, (definition, _) in RANKINGS.items():
            top = top_units(rankings[name], self.ablation_units)
            controls, moved = draw_controls(class_means, codes_imp, y_imp, top, seeds, self.control_bins)
            result = ablation_study(model.classifier, codes, y, top, controls, names)
            by_ranking[name] = {"definition": definition, "controls_outside_their_bin": sum(moved),
                                "controls_drawn": sum(len(u) for draws in controls for u in draws), **result}
            if name == "importance":
                importance_top, importance_controls = top, controls
        pixel = self._pixel_classifier(model.input_dim)
        decoder_side = None if pixel is None else {
            "codes": f"the autoencoder's top {model.k} units per image, decoded",
            "judge": "raw-pixel probe", **decoder_side_ablation(model.decoder, pixel, ae_codes, y, importance_top,
                                                                importance_controls, names)}
        return {**by_ranking["importance"], "seeds": seeds, "control_bins": self.control_bins,
                "codes": f"top {model.probe_k} units per image (the probe's codes)",
                "rankings": by_ranking, "decoder_side": decoder_side}

    def _pixel_classifier(self, input_dim: int) -> torch.nn.Linear | None:
        """The raw-pixel probe's classifier (``None`` without ``pixel_probe_run``)."""
        if self.pixel_probe_run is None:
            return None
        path = self.pixel_probe_run / "classifier.pth"
        if not path.is_file():
            raise UserError(f"pixel-probe run '{self.pixel_probe_run}' has no classifier.pth; run python "
                            f"train.py --config configs/fashion_mnist/probe.yaml --config "
                            f"configs/fashion_mnist/probe_pixels.yaml or set pixel_probe_run: null")
        state = read_state_dict(path, "classifier.", "pixel classifier")
        return classifier_from_state(state, f"'{path}'", input_dim).requires_grad_(False).eval()

    def _pixel_baseline(self) -> float | None:
        if self.pixel_probe_run is None:
            return None
        path = self.pixel_probe_run / "results.json"
        try:
            return float(json.loads(path.read_text())["test"]["test/acc"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"no pixel-probe result in '{path}'; run python train.py --config "
                            f"configs/fashion_mnist/probe.yaml --config configs/fashion_mnist/probe_pixels.yaml "
                            f"or set pixel_probe_run: null") from None

    def run(self) -> Path:
        """Validate the inputs, compute, write the report atomically; returns the report folder."""
        check_output_dir(self.output_dir, self.input_paths())
        model = self.load()
        check_writable_dir(self.output_dir.parent, "output_dir's parent")
        numbers, figs = self.compute(model)
        with report_dir(self.output_dir, self.input_paths()) as staging:
            (staging / "figures").mkdir()
            paths = {}
            for name, fig in figs.items():
                paths[name] = f"figures/{name}.png"
                fig.savefig(staging / paths[name], dpi=110)
            atomic_write_json(staging / "results.json", numbers)
            atomic_write_text(staging / "report.md", render_markdown(numbers, paths))
            atomic_write_text(staging / "report.html", render_html(numbers, paths, staging))
        if self.wandb.enabled:
            self._log_wandb(numbers, paths)
        return self.output_dir

    def input_paths(self) -> list[Path | str | None]:
        """What the study reads; the report folder may neither be nor hold any of them."""
        return [*self.inputs.paths(), self.pixel_probe_run]

    def _log_wandb(self, numbers: dict, paths: dict[str, str]) -> None:
        log_analysis(self.wandb, f"ksparse-study/{self.inputs.ksae_run.name}", self.output_dir, "analysis",
                     figures={f"figures/{name}": self.output_dir / path for name, path in paths.items()},
                     numbers={"mse_per_pixel": numbers["reconstruction"]["mse_per_pixel"],
                              "dead_units": numbers["reconstruction"]["dead_units"],
                              "probe_accuracy": numbers["probe"]["accuracy"],
                              **{f"ablation/{k}": v for k, v in numbers["ablation"]["summary"].items()}})


def _summary_lines(numbers: dict) -> list[str]:
    rec, probe, abl = numbers["reconstruction"], numbers["probe"], numbers["ablation"]["summary"]
    baseline = probe["pixel_baseline_accuracy"]
    return [
        f"- Reconstruction on the {numbers['splits']['eval']} split: MSE/pixel {rec['mse_per_pixel']:.5f}; "
        f"dead units {rec['dead_units']} / {numbers['n_units']} ({100 * rec['dead_fraction']:.1f}%); "
        f"k = {numbers['k']}.",
        f"- Linear probe on the codes (top {numbers['probe_k']} units per image): accuracy "
        f"{100 * probe['accuracy']:.2f}%"
        + (f" (raw-pixel probe: {100 * baseline:.2f}%)." if baseline is not None else "."),
        f"- Ablation ({numbers['ablation']['units_per_class']} units per class, judged by the probe): "
        f"class-logit drop {abl['top_logit_drop_mean']:.3f} for the top units vs "
        f"{abl['random_logit_drop_mean']:.3f} for random units matched on firing strength; class-accuracy "
        f"drop {100 * abl['top_class_accuracy_drop_mean'] + 0.0:.1f} vs "
        f"{100 * abl['random_class_accuracy_drop_mean'] + 0.0:.1f} points; top units hurt more in "
        f"{abl['classes_where_top_hurts_more']} of {abl['classes']} classes.",
        *_decoder_side_line(numbers["ablation"].get("decoder_side")),
    ]


def _decoder_side_line(decoder_side: dict | None) -> list[str]:
    if decoder_side is None:
        return []
    d = decoder_side["summary"]
    return [f"- Ablation judged outside the probe (units zeroed, codes decoded, reconstructions classified "
            f"by the raw-pixel probe): class-accuracy drop {100 * d['top_class_accuracy_drop_mean'] + 0.0:.1f} "
            f"points for the top units vs {100 * d['random_class_accuracy_drop_mean'] + 0.0:.1f} for matched "
            f"random units; top units hurt more in {d['classes_where_top_hurts_more']} of {d['classes']} classes."]


def control_tables(numbers: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The ablation's control tables (caption, header, rows): every ranking side by side, each
    against its own matched random units, and the decoder-side ablation per class."""
    ablation = numbers["ablation"]
    header = ["ranking", "score", "logit drop (top)", "logit drop (matched random)",
              "class-acc drop, points (top)", "class-acc drop, points (matched random)", "classes top > random",
              "controls outside their bin"]
    rows = []
    for name, r in ablation["rankings"].items():
        s = r["summary"]
        rows.append([name, r["definition"], f"{s['top_logit_drop_mean']:.3f}", f"{s['random_logit_drop_mean']:.3f}",
                     f"{100 * s['top_class_accuracy_drop_mean'] + 0.0:.1f}",
                     f"{100 * s['random_class_accuracy_drop_mean'] + 0.0:.1f}",
                     f"{s['classes_where_top_hurts_more']} / {s['classes']}",
                     f"{r['controls_outside_their_bin']} / {r['controls_drawn']}"])
    tables = [(f"Rankings side by side ({ablation['units_per_class']} units per class, judged by the probe on "
               f"the {ablation['codes']}; controls matched within {ablation['control_bins']} quantile bins of "
               f"class-mean activation, {len(ablation['seeds'])} draws).", header, rows)]
    decoder_side = ablation.get("decoder_side")
    if decoder_side is not None:
        rows = [[e["name"], f"{100 * e['intact_class_accuracy']:.1f}", f"{100 * e['top_class_accuracy']:.1f}",
                 f"{100 * e['random_class_accuracy_mean']:.1f} ± {100 * e['random_class_accuracy_std']:.1f}"]
                for e in decoder_side["per_class"]]
        tables.append((f"Decoder-side ablation of the importance ranking: {decoder_side['codes']}, classified by "
                       f"the {decoder_side['judge']} (class accuracy %, mean ± std over draws).",
                       ["class", "intact reconstructions", "top units zeroed", "matched random units zeroed"], rows))
    return tables


SECTIONS = [
    ("reconstructions", "Reconstructions", "One test image per class over its reconstruction."),
    ("atoms", "Decoder atoms of the most important units",
     "importance[i, c] = |W[c, i]| · mean(z_i over images of class c), W the probe's weight."),
    ("importance", "Importance of the top units across classes", ""),
    ("overlays", "Feature overlays",
     "For one image per class: the units with the largest logit contributions W[c, i]·z_i, their "
     "atoms, and Σ contribution × atom over the image."),
    ("occlusion", "Occlusion maps", "captum's Occlusion: how much the predicted class drops when a "
     "patch covers each pixel."),
    ("ablation", "Unit ablation", "Zeroing the top units of class c vs as many random units matched on "
     "firing strength (same quantile bin of mean activation on class c; mean ± std over draws). With a "
     "linear probe the logit drop of the importance ranking is its own score, so read it against the "
     "other rankings and the decoder-side check below."),
]


def _ablation_table(numbers: dict) -> list[list[str]]:
    rows = []
    for e in numbers["ablation"]["per_class"]:
        r = e["random"]
        rows.append([e["name"], f"{e['top']['logit_drop']:.3f}",
                     f"{r['logit_drop_mean']:.3f} ± {r['logit_drop_std']:.3f}",
                     f"{100 * e['top']['class_accuracy']:.1f}",
                     f"{100 * r['class_accuracy_mean']:.1f}", f"{100 * e['top']['accuracy']:.2f}",
                     f"{100 * r['accuracy_mean']:.2f}"])
    return rows


ABLATION_HEADER = ["class", "logit drop (top)", "logit drop (random)", "class acc % (top)",
                   "class acc % (random)", "acc % (top)", "acc % (random)"]


def render_markdown(numbers: dict, paths: dict[str, str]) -> str:
    """The report as Markdown; figures linked by relative path."""
    lines = ["# k-sparse autoencoder on Fashion-MNIST: study report", "", *_summary_lines(numbers), ""]
    for key, title, text in SECTIONS:
        lines += [f"## {title}", "", text, "", f"![{title}]({paths[key]})", ""]
        if key == "atoms":
            lines += ["| class | top units (importance) |", "|---|---|"]
            for name, units in numbers["importance"]["top_units"].items():
                lines.append(f"| {name} | " + ", ".join(f"#{u['unit']} ({u['importance']:.3g})" for u in units) + " |")
            lines.append("")
        if key == "ablation":
            lines += ["| " + " | ".join(ABLATION_HEADER) + " |", "|" + "---|" * len(ABLATION_HEADER)]
            lines += ["| " + " | ".join(row) + " |" for row in _ablation_table(numbers)]
            lines.append("")
            for caption, header, rows in control_tables(numbers):
                lines += [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
                lines.append("")
    lines += ["All numbers: `results.json`.", ""]
    return "\n".join(lines)


def render_html(numbers: dict, paths: dict[str, str], folder: Path) -> str:
    """The report as one HTML file with the figures embedded (base64 PNG)."""
    def table(header: list[str], rows: list[list[str]]) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>k-sparse AE study</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}</style>",
             "</head><body><h1>k-sparse autoencoder on Fashion-MNIST: study report</h1><ul>"]
    parts += [f"<li>{html.escape(line[2:])}</li>" for line in _summary_lines(numbers)]
    parts.append("</ul><p><a href='../explorer/index.html'>Concept explorer</a>: every unit, one page each.</p>")
    for key, title, text in SECTIONS:
        data = base64.b64encode((folder / paths[key]).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
        if key == "atoms":
            rows = [[name, ", ".join(f"#{u['unit']} ({u['importance']:.3g})" for u in units)]
                    for name, units in numbers["importance"]["top_units"].items()]
            parts.append(table(["class", "top units (importance)"], rows))
        if key == "ablation":
            parts.append(table(ABLATION_HEADER, _ablation_table(numbers)))
            for caption, header, rows in control_tables(numbers):
                parts.append(f"<p>{html.escape(caption)}</p>" + table(header, rows))
    parts.append("<p>All numbers: results.json.</p></body></html>")
    return "\n".join(parts)
