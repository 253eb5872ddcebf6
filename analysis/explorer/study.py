"""``ConceptExplorer``: a static feature dashboard of every live latent of a Universal SAE, each latent
shown side by side in every backbone (in the spirit of SAE-Vis / Neuronpedia feature dashboards).

``python analyze.py --config configs/<dataset>/explorer.yaml`` writes ``<output_dir>/index.html``
(the sortable, filterable index) and ``latent.html#<id>`` pages; see ``analysis.explorer.site`` for
the layout and ``analysis.explorer.records`` for every number. It reuses the universality report's
encoding of the split (``codes_<system>.npz`` in ``report_dir``, when they match the checkpoints) and
its activation-maximisation images; it trains nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from analysis.base import Analysis
from analysis.options import FiringOptions, PageOptions, SaeInputs
from analysis.explorer.records import UsaeRecords, to_csr, usae_records
from analysis.explorer.site import folder_size, process_seconds, write_site
from analysis.explorer.sprites import SpriteBook, to_uint8_hwc
from analysis.explorer.wandb_export import log_index_table
from analysis.universality import inputs as loaders
from analysis.universality.activation_max import ActMaxSettings, maximize_latents
from analysis.universality.feature_vis import magnitude_template
from analysis.universality.codes import extract_codes, saes_of
from analysis.universality.codes_file import load_sparse_codes
from analysis.universality.feature_model import LatentObjective, frozen
from analysis.universality.selection import check_latents
from common.errors import UserError
from common.io import atomic_write_json
from common.run_options import WandbOptions


@dataclass
class ExplorerActMax:
    """Activation-maximisation images shown on latent pages.

    Attributes:
        budget: how many more latents get an image computed here (those firing most among the ones the
            report did not visualise); 0 computes none (a page then says "none computed").
        latents: these latents get one too (on top of ``budget``).
        settings: the optimisation (steps, lr, parameterisation, jitter, ...), as in the report.
    """

    budget: int = 0
    latents: list[int] = field(default_factory=list)
    settings: ActMaxSettings = field(default_factory=ActMaxSettings)

    def __post_init__(self) -> None:
        if self.budget < 0:
            raise UserError(f"act_max.budget={self.budget} must be at least 0")


def _stamp() -> float:
    return time.perf_counter()


class ConceptExplorer(Analysis):
    """Build the concept explorer of a USAE (and its independent SAEs' best matches) over one split.

    Args:
        inputs: the USAE checkpoint, the independent SAEs' (``None`` leaves out the best-independent-match
            columns), their activation data, the split shown and counted ("test" in the study), batch
            size (only when the report's codes are not reused), device and threads
            (``analysis.options.SaeInputs``, as in ``UniversalityStudy``).
        output_dir: the site's folder; replaced atomically.
        report_dir: the universality report folder of these checkpoints (its ``report.json``,
            ``act_max_images.npz`` and ``codes_*.npz`` are reused); ``None`` builds without it.
        firing: as in ``UniversalityStudy`` (``analysis.options.FiringOptions``).
        page: top images, histogram bins, similar latents listed, records per data file, title and W&B
            rows (``analysis.options.PageOptions``, as in ``KSparseExplorer``).
        latents: build pages for these latent ids only (default: every live latent).
        act_max: activation-maximisation images (reused from the report; ``budget`` computes more).
        wandb: also log the index table to W&B (``page.wandb_rows`` rows, thumbnails as images).
    """

    def __init__(
        self,
        inputs: SaeInputs,
        output_dir: str,
        report_dir: str | None = None,
        firing: FiringOptions = FiringOptions(),
        page: PageOptions = PageOptions(),
        latents: list[int] | None = None,
        act_max: ExplorerActMax = ExplorerActMax(),
        wandb: WandbOptions = WandbOptions(),
    ) -> None:
        self.inputs, self.firing, self.page = inputs, firing, page
        self.output_dir, self.report_dir = Path(output_dir), Path(report_dir) if report_dir else None
        self.latents, self.act_max, self.wandb = latents, act_max, wandb
        self.timings: dict[str, float] = {}

    # ----- inputs ---------------------------------------------------------------------------------
    def _check_report_dir(self) -> None:
        if self.report_dir is not None and not (self.report_dir / "report.json").is_file():
            raise UserError(f"report_dir '{self.report_dir}' holds no report.json; build the universality report "
                            "first (python analyze.py --config configs/<dataset>/analysis_universality.yaml) or "
                            "set report_dir: null")

    def _codes(self, kind: str, system, data: loaders.SplitData, n_latents: int):
        """model -> (N, n) CSR codes: the report's saved codes when they match, else encoded here."""
        n = int(data.images.shape[0])
        names = list(saes_of(system))
        if self.report_dir is not None:
            saved = load_sparse_codes(self.report_dir / f"codes_{kind}.npz", self.inputs.checkpoint(kind),
                                      self.inputs.split, (n, n_latents))
            if saved is not None and sorted(saved) == sorted(names):
                self.timings[f"codes/{kind}"] = 0.0
                return {m: saved[m] for m in names}, "reused from the report"
        start = _stamp()
        system.to(self.inputs.device)
        codes = extract_codes(system, data.features, self.inputs.batch_size, self.inputs.device).codes
        system.cpu()
        codes = {m: to_csr(codes.pop(m)) for m in names}
        self.timings[f"codes/{kind}"] = _stamp() - start
        return codes, "encoded"

    def run(self) -> Path:
        start = _stamp()
        self._check_report_dir()
        systems, dm = self.inputs.load()
        usae, independent = systems["usae"], systems.get("independent")
        saes = saes_of(usae)
        names = list(saes)
        n_latents = int(next(iter(saes.values())).get_dictionary().shape[0])
        wanted = check_latents(self.latents, n_latents, "latents") if self.latents is not None else None
        extra_act = check_latents(self.act_max.latents, n_latents, "act_max.latents")
        data = loaders.load_split(dm, self.inputs.split)
        self._dims = {m: int(data.features[m].shape[1]) for m in names}
        self.timings["load"] = _stamp() - start

        codes, how = self._codes("usae", usae, data, n_latents)
        ind_codes = None
        if independent is not None:
            ind_codes, _ = self._codes("independent", independent, data, n_latents)
        t = _stamp()
        dictionaries = {m: sae.get_dictionary().detach().cpu() for m, sae in saes.items()}
        rec = usae_records(codes, data.labels, len(data.class_names) or int(data.labels.max()) + 1, dictionaries,
                           self.firing.fire_threshold, self.firing.entropy_lo, self.firing.entropy_hi,
                           self.firing.min_activations, self.page.n_top_images, self.page.hist_bins,
                           self.page.n_similar, ind_codes, self.inputs.device)
        self.timings["records"] = _stamp() - t
        del codes, ind_codes
        shown = rec.alive if wanted is None else np.array([f for f in rec.alive if f in set(wanted)], dtype=np.int64)
        t = _stamp()
        act = self._act_max_images(usae, dm, data, names, rec, extra_act)
        self.timings["act_max"] = _stamp() - t
        t = _stamp()
        meta, rows, records, books = self._payload(rec, data, names, shown, act, how, n_latents)
        write_site(self.output_dir, meta, rows, records, books.values(), self.page.chunk_size)
        self.timings["site"] = _stamp() - t
        self.timings["total"] = _stamp() - start
        size = folder_size(self.output_dir)
        atomic_write_json(self.output_dir / "build.json", {
            "timings_s": self.timings, "bytes": size, "latents": int(len(shown)), "n_latents": n_latents,
            "codes": how, "threads": torch.get_num_threads(), "process_s": process_seconds()})
        print(f"[explorer] {self.output_dir / 'index.html'}: {len(shown)} latents, {size / 1e6:.1f} MB, "
              f"{self.timings['total']:.1f} s", flush=True)
        if self.wandb.enabled:
            log_index_table(self.wandb, f"explorer/{self.output_dir.parent.name}", self.output_dir,
                            meta["columns"], rows, books, self.page.wandb_rows)
        return self.output_dir

    # ----- activation maximisation ------------------------------------------------------------------
    def _act_max_images(self, usae, dm, data, names, rec: UsaeRecords, extra: list[int]) -> dict:
        """(model, latent) -> (image (C, H, W) float, caption): the report's, plus those computed here."""
        out: dict[tuple[str, int], tuple[np.ndarray, str]] = {}
        if self.report_dir is not None and (self.report_dir / "act_max_images.npz").is_file():
            import json

            report = json.loads((self.report_dir / "report.json").read_text(encoding="utf-8"))
            report_method = report.get("config", {}).get("act_max", {}).get("method", "method not recorded")
            finals = {m: {int(e["latent"]): (e["start"], e["final"]) for e in
                          report.get("visualised", {}).get("activation_max", {}).get(m, [])} for m in names}
            with np.load(self.report_dir / "act_max_images.npz") as saved:
                latents = saved["latents"].astype(int).tolist()
                for m in names:
                    if m not in saved.files:
                        continue
                    for i, f in enumerate(latents):
                        s, e = finals[m].get(f, (None, None))
                        how = f"report, {report_method}"
                        caption = f"pre-activation {s:.2f} → {e:.2f} ({how})" if s is not None else f"({how})"
                        out[(m, f)] = (saved[m][i], caption)
        have = {f for (_, f) in out}
        fires = sum(rec.models[m].fires for m in names)
        order = [int(f) for f in np.argsort(-fires, kind="stable") if fires[f] > 0 and int(f) not in have]
        todo = list(dict.fromkeys(extra + order[:self.act_max.budget]))
        todo = [f for f in todo if f not in have]
        if not todo:
            return out
        shape = loaders.input_shape(dm, data.images)
        preprocess = loaders.preprocess_fn(dm)
        saes = saes_of(usae)
        method = self.act_max.settings.method
        if method == "accentuation":
            raise UserError("the explorer computes fourier, pixel or maco images; accentuation needs the "
                            "report's seed images: set act_max.settings.method to maco, or act_max.budget 0 "
                            "and reuse the report's images")
        kwargs = {"magnitude": magnitude_template(data.images, shape)} if method == "maco" else {}
        for m, name in enumerate(names):
            head = loaders.feature_head(dm, name).to(self.inputs.device)
            sae = saes[name].to(self.inputs.device)
            with frozen(head, sae):
                res = maximize_latents(LatentObjective(preprocess, head, sae), todo, shape, self.act_max.settings,
                                       keys=[(m, f) for f in todo], device=self.inputs.device, **kwargs)
            sae.cpu()
            for i, f in enumerate(todo):
                out[(name, f)] = (res.images[i].numpy(), f"pre-activation {float(res.start[i]):.2f} → "
                                  f"{float(res.final[i]):.2f} (computed here, {method}, {self.act_max.settings.steps} steps)")
        return out

    # ----- the site's data ----------------------------------------------------------------------------
    def _payload(self, rec: UsaeRecords, data, names, shown, act, how, n_latents):
        n = rec.n_images
        classes = list(data.class_names) or [str(c) for c in range(rec.models[names[0]].classes.shape[1])]
        px = int(data.images.shape[-1])
        images = SpriteBook("images", px)
        pictures = SpriteBook("act_max", 64, cols=16)
        slots: dict[int, int] = {}

        def image_ref(row: int) -> list:
            if row not in slots:
                slots[row] = images.add(to_uint8_hwc(data.images[row]))
            return ["images", slots[row]]

        pairs = list(rec.same_index)
        pos = {int(f): i for i, f in enumerate(rec.alive)}
        labels = data.labels.numpy()
        columns = [{"key": "id", "label": "latent", "type": "latent"},
                   {"key": "tag", "label": "tag", "type": "tag",
                    "title": f"universal: H ≥ {self.firing.entropy_hi:g}; specific: H ≤ {self.firing.entropy_lo:g}"},
                   {"key": "H", "label": "entropy H", "type": "num", "digits": 3,
                    "title": "firing entropy across models (0: one model only, 1: equally in all)"}]
        columns += [{"key": f"rate:{m}", "label": f"rate {m}", "type": "pct", "digits": 2,
                     "title": f"share of {self.inputs.split} images on which it fires in {m}"} for m in names]
        columns += [{"key": f"r:{p}", "label": "same-index r" + (f" {p.replace('|', '/')}" if len(pairs) > 1 else ""),
                     "type": "num", "digits": 2, "title": "Pearson r of the codes of this latent in two models"}
                    for p in pairs]
        if rec.models[names[0]].match is not None:
            columns += [{"key": f"match:{m}", "label": f"indep. r {m}", "type": "num", "digits": 2,
                         "title": f"r of the best-matching latent of {m}'s independent SAE"} for m in names]
        columns += [{"key": "iou", "label": "co-firing IoU", "type": "num", "digits": 2,
                     "title": "images where it fires in every model / in any"},
                    {"key": "dominant", "label": "dominant class", "type": "class"},
                    {"key": "purity", "label": "purity", "type": "pct", "digits": 0,
                     "title": "share of its firings on the dominant class"},
                    {"key": "dom_model", "label": "dominant model", "type": "text"},
                    {"key": "fires", "label": "fires", "type": "text", "title": "firings over all models"}]
        columns += [{"key": f"thumb:{m}", "label": f"top {m}", "type": "thumb"} for m in names]
        rows, records = [], {}
        for f in shown:
            f = int(f)
            counts = [int(rec.models[m].fires[f]) for m in names]
            dom_model = names[int(np.argmax(counts))]
            row = [f, rec.tag[f], rec.entropy[f], *[c / n for c in counts], *[rec.same_index[p][f] for p in pairs]]
            if rec.models[names[0]].match is not None:
                row += [rec.models[m].match_r[f] for m in names]
            tops = {m: [int(r) for r in rec.models[m].top_rows[f] if r >= 0] for m in names}
            row += [rec.iou_all[f], int(rec.dominant[f]), rec.purity[f], dom_model, int(sum(counts))]
            row += [image_ref(tops[m][0]) if tops[m] else None for m in names]
            rows.append(row)
            records[f] = self._record(f, rec, names, classes, pairs, pos, labels, tops, image_ref, pictures, act)
        tag_values = ["universal", "intermediate", "specific", *[f"specific:{m}" for m in names]]
        meta = {"title": self.page.title + f": Universal SAE over {', '.join(names)}", "short_title": "USAE",
                "subtitle": f"{len(rows)} live of {n_latents} latents, {n} {self.inputs.split} images, checkpoint "
                            f"{self.inputs.usae_checkpoint}; codes {how}.",
                "kind": "usae", "unit_name": "latent", "models": names, "class_names": classes,
                "n_latents": n_latents, "n_images": n, "split": self.inputs.split, "columns": columns,
                "default_sort": "fires", "default_dir": -1, "range_filter": {"key": "H", "label": "entropy H"},
                "model_filter": "dom_model", "class_key": "dominant", "tag_values": tag_values,
                "links": ([{"label": "universality report", "href": "../universality_report/index.html"}]
                          if self.output_dir.parent / "universality_report" == self.report_dir else []),
                "notes": "Firing: code > {:g}. Numbers: analysis.explorer.records; all in latents.json."
                         .format(self.firing.fire_threshold)}
        return meta, rows, records, {"images": images, "act_max": pictures}

    def _record(self, f, rec: UsaeRecords, names, classes, pairs, pos, labels, tops, image_ref, pictures, act):
        n = rec.n_images
        models = []
        for m in names:
            mr = rec.models[m]
            top = [[image_ref(r), mr.top_codes[f][i], int(labels[r]), r] for i, r in enumerate(tops[m])]
            if (m, f) in act:
                image, caption = act[(m, f)]
                picture = {"label": "feature visualisation", "ref": ["act_max", pictures.add(to_uint8_hwc(image))],
                           "caption": caption}
            else:
                picture = {"label": "feature visualisation",
                           "none": "none computed (raise act_max.budget or list it in act_max.latents)"}
            stats = [["fires on", mr.fires[f] / n, "pct", 2], ["images", int(mr.fires[f]), "text"],
                     ["mean code when firing", mr.mean_code[f], "num", 3]]
            if mr.match is not None:
                stats += [["best independent latent", int(mr.match[f]) if mr.match[f] >= 0 else None, "text"],
                          ["its r", mr.match_r[f], "num", 2]]
            models.append({"name": m, "stats": stats, "pictures": [picture], "top": top,
                           "hist": {"lo": self.firing.fire_threshold, "hi": rec.hist_upper[f],
                                    "counts": mr.hist[f].tolist(), "total": int(mr.fires[f])},
                           "classes": mr.classes[f].tolist()})
        cross_rows = []
        for p in pairs:
            a, b = p.split("|")
            cos = rec.decoder_cos[p]
            cos_cell = float(cos[f]) if cos is not None else \
                f"n/a: dimensions differ ({self._dims[a]} vs {self._dims[b]})"
            cross_rows.append([f"{a} / {b}", rec.same_index[p][f], rec.iou[p][f], cos_cell])
        i = pos[f]
        sim_d = [[int(g), float(s)] for g, s in zip(rec.similar_decoder[0][i], rec.similar_decoder[1][i])]
        sim_c = [[int(g), float(s)] for g, s in zip(rec.similar_coact[0][i], rec.similar_coact[1][i]) if s > 0]
        total = sum(int(rec.models[m].fires[f]) for m in names)
        return {
            "tag": rec.tag[f],
            "stats": [["firing entropy H", rec.entropy[f], "num", 3],
                      ["dominant class", classes[int(rec.dominant[f])] if total else None],
                      ["class purity", rec.purity[f], "pct", 0], ["co-firing IoU (all models)", rec.iou_all[f], "num", 2],
                      ["firings (all models)", total]],
            "models": models,
            "tables": [{"title": "Across models", "header": ["models", "same-index r", "co-firing IoU",
                                                              "decoder-atom cosine"],
                        "rows": cross_rows,
                        "note": "Decoder atoms of two models are compared only where their dimensions match."}],
            "links": [{"title": "Most similar latents by decoder (mean atom cosine over models)", "items": sim_d},
                      {"title": "Most similar latents by co-activation (Jaccard index of firing images)",
                       "items": sim_c}],
        }
