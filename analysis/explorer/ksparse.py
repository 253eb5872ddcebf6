"""``KSparseExplorer``: the concept explorer's viewer for the k-sparse autoencoder's units.

Per unit: its decoder atom, top-activating images, activation histogram, class distribution of
firings, per-class importance ``|W[c, i]| · mean(z_i | class c)`` (``analysis.ksparse.importance``,
on ``importance_split``), and the effect of zeroing the unit alone on the linear probe (on
``eval_split``, the same definitions as ``analysis.ksparse.ablation.ablate``).

    python analyze.py --config configs/fashion_mnist/explorer_ksparse.yaml
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from analysis.base import Analysis
from analysis.explorer.records import (class_counts, fires_matrix, histograms, similar_by_coactivation,
                                       similar_by_decoder, to_csr, top_images)
from analysis.explorer.site import folder_size, process_seconds, write_site
from analysis.explorer.sprites import SpriteBook, diverging, to_uint8_hwc
from analysis.explorer.wandb_export import log_index_table
from analysis.ksparse.importance import class_mean_codes, importance
from analysis.options import KSparseInputs, PageOptions
from analysis.universality.selection import check_latents
from common.errors import UserError
from common.io import atomic_write_json
from common.run_options import WandbOptions


@torch.no_grad()
def single_unit_ablation(classifier: nn.Linear, codes: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
    """Zero each unit alone in every code (N, n) and compare the probe with the intact codes.

    Returns (n,) ``accuracy_change`` (all images, fraction) and (n, C) ``class_accuracy_change`` and
    ``logit_drop`` (mean over images of class c of the intact minus ablated class-c logit). Exact and
    fast: zeroing unit i changes logits only on rows where z_i ≠ 0, by −z_i·W[:, i].
    """
    weight = classifier.weight.detach().double()
    logits = classifier(codes).double()
    y = labels.long()
    n_classes, n_units = weight.shape
    per_class = torch.bincount(y, minlength=n_classes).double()
    correct = logits.argmax(1) == y
    acc = np.zeros(n_units)
    class_acc = np.zeros((n_units, n_classes))
    z = codes.double()
    for i in range(n_units):
        rows = torch.nonzero(z[:, i]).flatten()
        if rows.numel() == 0:
            continue
        new = logits[rows] - z[rows, i, None] * weight[:, i]
        delta = (new.argmax(1) == y[rows]).double() - correct[rows].double()
        acc[i] = float(delta.sum()) / len(y)
        class_acc[i] = (torch.bincount(y[rows], weights=delta, minlength=n_classes)
                        / per_class.clamp_min(1)).numpy()
    means = class_mean_codes(codes, y, n_classes)  # (C, n)
    drop = (weight * means).t().numpy()  # mean over class-c images of z_i · W[c, i]
    return {"accuracy_change": acc, "class_accuracy_change": class_acc, "logit_drop": drop}


class KSparseExplorer(Analysis):
    """Build the explorer of a k-sparse autoencoder's units (with the linear probe on its codes).

    Args:
        inputs: the image datamodule, the autoencoder's and the probe's run folders, the split whose
            class-mean codes define importance and the one shown, counted and ablated
            (``analysis.options.KSparseInputs``, as in ``KSparseStudy``).
        output_dir: the site's folder; ``None`` = ``<ksae_run>/explorer``. Replaced atomically.
        page: top images, histogram bins, similar units listed, records per data file, title and W&B
            rows (``analysis.options.PageOptions``, as in ``ConceptExplorer``).
        selective_purity: units whose firings are at least this share one class are tagged "selective".
        units: build pages for these unit ids only (default: every unit that fires).
        wandb: optional W&B copy of the index table (``page.wandb_rows`` rows).
    """

    def __init__(
        self,
        inputs: KSparseInputs,
        output_dir: str | None = None,
        page: PageOptions = PageOptions(),
        selective_purity: float = 0.5,
        units: list[int] | None = None,
        wandb: WandbOptions = WandbOptions(),
    ) -> None:
        if not 0.0 < selective_purity <= 1.0:
            raise UserError(f"selective_purity={selective_purity} must be in (0, 1]")
        self.inputs, self.page = inputs, page
        self.output_dir = Path(output_dir) if output_dir else inputs.ksae_run / "explorer"
        self.selective_purity, self.units, self.wandb = float(selective_purity), units, wandb

    @torch.no_grad()
    def run(self) -> Path:
        start = time.perf_counter()
        side = self.inputs.data.image_shape
        model = self.inputs.load()
        imp_split, eval_split = self.inputs.importance_split, self.inputs.eval_split
        names = list(self.inputs.data.class_names)
        n_classes = len(names)
        wanted = check_latents(self.units, model.n_units, "units") if self.units is not None else None
        x_imp, y_imp = self.inputs.images(imp_split)
        scores = importance(model.classifier.weight,
                            class_mean_codes(model.batched_codes(x_imp), y_imp, n_classes)).numpy()  # (n, C)
        raw, y = self.inputs.data.split(eval_split)
        x = self.inputs.data.transform(raw, train=False)
        probe_codes = model.batched_codes(x)
        codes = probe_codes if model.probe_k == model.k else model.batched_codes(x, k=model.k)
        csr = to_csr(codes)
        fires = fires_matrix(csr, 0.0)
        counts = np.asarray(fires.sum(0)).ravel().astype(np.int64)
        alive = np.flatnonzero(counts > 0)
        upper = csr.max(0).toarray().ravel().astype(np.float64)
        top_rows, top_codes = top_images(csr, self.page.n_top_images, 0.0)
        hist = histograms(csr, 0.0, upper, self.page.hist_bins)
        cls = class_counts(fires, y.numpy(), n_classes)
        mean_code = np.asarray(csr.sum(0)).ravel() / np.maximum(counts, 1)
        ablation = single_unit_ablation(model.classifier, probe_codes, y)
        sim_d = similar_by_decoder([model.decoder.weight], self.page.n_similar, alive)
        sim_c = similar_by_coactivation(fires, self.page.n_similar, alive)
        shown = alive if wanted is None else np.array([u for u in alive if u in set(wanted)], dtype=np.int64)

        images = SpriteBook("images", int(raw.shape[-1]))
        atoms = SpriteBook("atoms", int(raw.shape[-1]))
        slots: dict[int, int] = {}

        def image_ref(row: int) -> list:
            if row not in slots:
                slots[row] = images.add(to_uint8_hwc(raw[row]))
            return ["images", slots[row]]

        atom_w = model.decoder.weight.detach().double().reshape(model.n_units, *side).numpy()
        purity = np.where(counts > 0, cls.max(1) / np.maximum(counts, 1), np.nan)
        n = int(y.numel())
        columns = [{"key": "id", "label": "unit", "type": "latent"},
                   {"key": "tag", "label": "tag", "type": "tag",
                    "title": f"selective: ≥ {self.selective_purity:.0%} of its firings on one class"},
                   {"key": "rate", "label": "firing rate", "type": "pct", "digits": 2},
                   {"key": "mean", "label": "mean code", "type": "num", "digits": 3},
                   {"key": "top_class", "label": "most important for", "type": "class"},
                   {"key": "importance", "label": "importance", "type": "num", "digits": 4},
                   {"key": "dominant", "label": "dominant class", "type": "class"},
                   {"key": "purity", "label": "purity", "type": "pct", "digits": 0},
                   {"key": "acc", "label": "Δ accuracy if zeroed", "type": "pct", "digits": 2},
                   {"key": "drop", "label": "logit drop (its class)", "type": "num", "digits": 3},
                   {"key": "atom", "label": "atom", "type": "thumb"},
                   {"key": "thumb", "label": "top image", "type": "thumb"}]
        rows, records = [], {}
        pos = {int(u): i for i, u in enumerate(alive)}
        for u in shown:
            u = int(u)
            c = int(scores[u].argmax())
            tag = "selective" if purity[u] >= self.selective_purity else "broad"
            atom = ["atoms", atoms.add(diverging(atom_w[u, 0]) if side[0] == 1 else to_uint8_hwc(
                np.clip(atom_w[u] / (2 * np.abs(atom_w[u]).max() + 1e-12) + 0.5, 0, 1)))]
            tops = [int(r) for r in top_rows[u] if r >= 0]
            rows.append([u, tag, counts[u] / n, mean_code[u], c, scores[u, c], int(cls[u].argmax()), purity[u],
                         ablation["accuracy_change"][u], ablation["logit_drop"][u, c], atom,
                         image_ref(tops[0]) if tops else None])
            i = pos[u]
            records[u] = {
                "tag": tag,
                "stats": [["fires on", counts[u] / n, "pct", 2], ["most important for", names[c]],
                          ["dominant class of firings", names[int(cls[u].argmax())]],
                          ["purity", purity[u], "pct", 0],
                          ["accuracy change if zeroed", ablation["accuracy_change"][u], "pct", 2]],
                "models": [{"name": f"k-sparse AE (k = {model.k}, {model.n_units} units)",
                            "stats": [["images", int(counts[u]), "text"], ["mean code when firing", mean_code[u], "num", 3]],
                            "pictures": [{"label": "decoder atom (red +, blue −)", "ref": atom}],
                            "top": [[image_ref(r), top_codes[u][j], int(y[r]), r] for j, r in enumerate(tops)],
                            "hist": {"lo": 0.0, "hi": upper[u], "counts": hist[u].tolist(), "total": int(counts[u])},
                            "classes": cls[u].tolist()}],
                "bars": [{"title": f"Per-class importance |W[c, {u}]| · mean code on class c ({imp_split} split)",
                          "labels": names, "values": scores[u].tolist(), "digits": 4}],
                "tables": [{"title": f"Ablation: zero unit {u} alone ({eval_split} split, probe codes)",
                            "header": ["class", "importance", "logit drop on its images", "class accuracy change"],
                            "rows": [[names[k], scores[u, k], ablation["logit_drop"][u, k],
                                      ablation["class_accuracy_change"][u, k]] for k in range(n_classes)],
                            "note": f"Overall accuracy change: {100 * ablation['accuracy_change'][u]:+.2f} points. "
                                    "Logit drop: mean over the class's images of intact − ablated class logit."}],
                "links": [{"title": "Most similar units by decoder atom (cosine)",
                           "items": [[int(g), float(s)] for g, s in zip(sim_d[0][i], sim_d[1][i])]},
                          {"title": "Most similar units by co-activation (Jaccard index of firing images)",
                           "items": [[int(g), float(s)] for g, s in zip(sim_c[0][i], sim_c[1][i]) if s > 0]}],
            }
        report = self.inputs.ksae_run / "report" / "report.html"
        meta = {"title": f"{self.page.title}: k-sparse autoencoder units", "short_title": "k-sparse AE",
                "subtitle": f"{len(rows)} firing of {model.n_units} units, k = {model.k}, {n} {eval_split} "
                            f"images; {self.inputs.ksae_run}, probe {self.inputs.probe_run}.",
                "kind": "ksparse", "unit_name": "unit", "models": ["k-sparse AE"], "class_names": names,
                "n_latents": model.n_units, "n_images": n, "split": eval_split, "columns": columns,
                "default_sort": "importance", "default_dir": -1,
                "range_filter": {"key": "rate", "label": "firing rate (0-1)"}, "model_filter": None,
                "class_key": "top_class", "tag_values": ["selective", "broad"],
                "links": ([{"label": "k-sparse study report", "href": "../report/report.html"}]
                          if self.output_dir.parent == self.inputs.ksae_run and report.is_file() else []),
                "notes": "Firing: code > 0. Numbers: analysis.explorer.ksparse; all in latents.json."}
        write_site(self.output_dir, meta, rows, records, [images, atoms], self.page.chunk_size)
        total = time.perf_counter() - start
        size = folder_size(self.output_dir)
        atomic_write_json(self.output_dir / "build.json", {
            "timings_s": {"total": total}, "bytes": size, "latents": len(rows), "n_latents": model.n_units,
            "threads": torch.get_num_threads(), "process_s": process_seconds()})
        print(f"[explorer] {self.output_dir / 'index.html'}: {len(rows)} units, {size / 1e6:.1f} MB, {total:.1f} s",
              flush=True)
        if self.wandb.enabled:
            log_index_table(self.wandb, f"explorer/{self.inputs.ksae_run.name}-ksparse", self.output_dir,
                            columns, rows, {"images": images, "atoms": atoms}, self.page.wandb_rows)
        return self.output_dir
