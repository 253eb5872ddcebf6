"""The report's HTML, written only from ``report.json``'s numbers (so page and JSON always agree)."""

from __future__ import annotations

from typing import Any

from analysis.universality.report import HtmlReport

LABELS = {"usae": "USAE", "independent": "independent SAEs"}


def headline_rows(report: dict) -> tuple[list[str], list[list[Any]]]:
    h = report["headline"]
    lo = report["config"]["min_activations"]
    models = report["setup"]["models"]
    split, fit = report["setup"]["split"], report["setup"].get("match_split", report["setup"]["split"])
    rows = [("self R² (mean of diagonal)", "r2_self_mean"), ("cross R² (mean off-diagonal)", "r2_cross_mean")]
    rows += [(f"latents firing on < {lo} {split} images, {m}", f"rare_fraction/{m}") for m in models]
    rows += [(f"latents never firing, {m}", f"never_fraction/{m}") for m in models]
    rows += [
        ("dead latents (never fire in any model)", "n_dead"),
        (f"alive latents (≥ {lo} fires in some model)", "n_alive"),
        ("share universal (H ≥ hi, of alive)", "share_universal"),
        ("share model-specific (H ≤ lo, of alive)", "share_specific"),
        ("universal / specific ratio", "universal_to_specific_ratio"),
        (f"latents alive in both models (the set of the next 4 rows)", "corr_n_latents"),
        ("mean r, same latent index", "corr_same_index_mean"),
        (f"mean r, Hungarian-matched (fit on {fit}, scored on {split})", "corr_hungarian_mean"),
        ("null: Hungarian on shuffled images", "corr_null_shuffled_images_mean"),
        ("null: random latent pairs", "corr_null_random_pairs_mean"),
        ("Hungarian matches that keep the index", "hungarian_identity_rate"),
        ("pairs, latents alive in each model (the set of the next 2 rows)", "corr_each_n_pairs"),
        ("mean r, Hungarian-matched over alive in each", "corr_each_hungarian_mean"),
        ("null: shuffled images, alive in each", "corr_each_null_shuffled_images_mean"),
        ("co-firing IoU (mean over alive latents)", "cofiring_iou_mean"),
    ]
    return ["", "USAE", "independent SAEs"], [[label, h["usae"].get(key), h["independent"].get(key)]
                                                for label, key in rows]


def r2_rows(report: dict, kind: str) -> tuple[list[str], list[list[Any]]]:
    r2 = report["systems"][kind]["r2"]
    names = r2["rows_encoder"]
    return (["encoder ↓ / decoder →", *names],
            [[src, *r2["matrix"][i]] for i, src in enumerate(names)])


def wandb_tables(report: dict) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The report's main tables for W&B: headline and both R² matrices."""
    return {"universality/headline": headline_rows(report),
            "universality/r2_usae": r2_rows(report, "usae"),
            "universality/r2_independent": r2_rows(report, "independent")}


def build_html(report: dict, figures: dict[str, str]) -> str:
    """The whole page: setup, headline, then sections 1-6 of the study, methods and timings."""
    setup, cfg = report["setup"], report["config"]
    page = HtmlReport("Universality report: Universal SAE vs independent SAEs")
    page.paragraph(f"Models: {', '.join(f'{n} ({d}-d)' for n, d in setup['feature_dims'].items())}. "
                   f"{setup['n_latents']} latents, k = {setup['k']}. Split '{setup['split']}', "
                   f"{setup['n_images']} images. USAE: {cfg['usae_checkpoint']}; independent: "
                   f"{cfg['independent_checkpoint']}.")
    page.parts.append('<p><a href="../explorer/index.html">Concept explorer</a>: every latent, every backbone.</p>')
    page.heading("Headline")
    page.table(*headline_rows(report))

    page.heading("1. Firing entropy")
    e_u, e_i = report["systems"]["usae"]["entropy"], report["systems"]["independent"]["entropy"]
    page.paragraph(f"p_m = fires_m / Σ fires, H = −Σ p_m log p_m / log M, over the latents alive by the second dead "
                   f"definition (≥ {cfg['min_activations']} fires in some model): USAE {e_u['n_alive']}, independent "
                   f"{e_i['n_alive']}. Rare latents are left out and counted: USAE {e_u.get('n_rare')} "
                   f"({e_u['n_dead']} never fire), independent {e_i.get('n_rare')} ({e_i['n_dead']} never fire). Universal: "
                   f"H ≥ {e_u['hi']:g}; model-specific: H ≤ {e_u['lo']:g}. For independent SAEs the latent "
                   "index is arbitrary across models, so their histogram shows what an unaligned index gives.")
    page.figure(figures["entropy"], "Firing-entropy histograms, USAE vs independent SAEs (alive latents).")
    page.table(["", "alive", "never fire", "universal", "specific", "share universal", "share specific",
                "universal/specific", "mean H"],
               [[LABELS[k], e["n_alive"], e["n_dead"], e["n_universal"], e["n_specific"], e["share_universal"],
                 e["share_specific"], e["universal_to_specific_ratio"], e["entropy_mean"]]
                for k, e in (("usae", e_u), ("independent", e_i))])

    if "frequency" in figures:
        page.heading("Firing frequency and dead latents")
        page.paragraph(f"Two dead definitions: never fires on the {setup['split']} split, and rare: fires on fewer "
                       f"than {cfg['min_activations']} of its {setup['n_images']} images (left of the dashed line).")
        page.figure(figures["frequency"], "Latents per log10 firing-frequency bin, per model.")
        rows = []
        for kind in ("usae", "independent"):
            for m, f in report["systems"][kind]["feature_stats"].get("firing", {}).items():
                rows.append([LABELS[kind], m, f["n_never"], f["never_fraction"], f["n_rare"], f["rare_fraction"],
                             f["n_alive"], f["median_log10_frequency"]])
        page.table(["system", "model", "never fire", "share", f"rare (< {cfg['min_activations']})", "share",
                    "alive", "median log10 frequency"], rows)

    page.heading("2. Reconstruction: self and cross R²")
    page.paragraph("R² = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the per-dimension mean over the split. Entry (i, j): "
                   "model j's features decoded by decoder j from encoder i's codes.")
    page.figure(figures["r2"], "R² matrices (rows: encoder, columns: decoder).")
    for kind in ("usae", "independent"):
        page.table(*r2_rows(report, kind), caption=LABELS[kind])

    page.heading("3. Feature correlation across models")
    page.paragraph(f"Pearson r over the {setup['split']} images between two models' codes. Every number in one table "
                   f"is over the same latents: those firing on ≥ {cfg['min_activations']} images in both models "
                   "(count in the caption). Same index: r(A_f, B_f). Hungarian: latents paired one-to-one by "
                   f"maximum total correlation (scipy linear_sum_assignment) on the "
                   f"{setup.get('match_split', setup['split'])} split, scored on the {setup['split']} split. Nulls: "
                   "random latent pairs, and the same fit-then-score matching after shuffling one model's image "
                   "order. A second block pairs all alive latents of each model (any index).")
    page.figure(figures["correlation"], "Distributions of per-latent correlation.")
    for kind in ("usae", "independent"):
        for c in report["systems"][kind]["correlation"]:
            a, b = c["models"]
            page.table(["distribution", "count", "mean", "median", "q10", "q90", "share r > 0.5"],
                       [[label, d["count"], d["mean"], d["median"], d["q10"], d["q90"], d["share_above_0.5"]]
                        for label, d in (("same index", c["same_index"]), ("Hungarian-matched", c["hungarian_matched"]),
                                         ("null: shuffled images", c["null_shuffled_images"]),
                                         ("null: random pairs", c["null_random_pairs"]),
                                         ("alive in each: Hungarian-matched", c.get("alive_each", {}).get("hungarian_matched")),
                                         ("alive in each: null, shuffled images",
                                          c.get("alive_each", {}).get("null_shuffled_images"))) if d],
                       caption=f"{LABELS[kind]}: {a} vs {b}, {c.get('n_latents_set')} latents alive in both "
                               f"(Hungarian keeps the index for {_pct(c['hungarian_identity_rate'])} of pairs)")
    for c in report["systems"]["usae"]["correlation"]:
        a, b = c["models"]
        page.table(["latent", "r", f"fires in {a}", f"fires in {b}", "H"],
                   [[t["latent"], t["r"], *_fires(report, t["latent"], (a, b)), _entropy(report, t["latent"])]
                    for t in c["top_same_index"]],
                   caption=f"USAE: most correlated latents, {a} vs {b}")

    page.heading("4. Feature statistics")
    page.paragraph("Frequency: share of images on which a latent fires; mean activation: mean code where it "
                   "fires; energy: mean ‖z_f D_f‖²; co-firing IoU: images where it fires in every model over "
                   "images where it fires in any.")
    page.figure(figures["stats"], "Left: USAE firing frequency per latent in two models. Right: energy in "
                "universal vs model-specific latents.")
    rows = []
    for kind in ("usae", "independent"):
        fs = report["systems"][kind]["feature_stats"]
        for m, s in fs["per_model"].items():
            share = fs["energy_share"][m]
            rows.append([LABELS[kind], m, s["frequency"]["mean"], s["mean_activation"]["mean"],
                         share["universal"], share["specific"], s["cofiring_given_fires"]["mean"],
                         fs["cofiring_iou"]["mean"]])
    page.table(["system", "model", "mean frequency", "mean activation", "energy in universal",
                "energy in specific", "P(fires in all | fires here)", "co-firing IoU"], rows)

    page.heading("5. What a feature looks for")
    act = cfg["act_max"]
    page.paragraph(f"Top-activating {report['setup']['split']} images per latent and model (red frame: the latent "
                   f"does not fire there). Feature visualisation: method {act['method']} (docs/feature_visualisation.md), "
                   f"{act['steps']} steps (lr {act['lr'] or 'default'}) on the image, random jitter ±{act['jitter']} px"
                   + (f" and ±{act['scale_jitter']:.0%} scale" if act["scale_jitter"] else "")
                   + " (Olah et al. 2017), raising the latent's pre-TopK activation "
                   "through backbone → feature layer → cache normalisation → SAE encoder, at the backbone's input "
                   f"size; all latents of a backbone in one batch. Raised for "
                   f"{_pct(report['headline']['usae'].get('act_max_share_raised'))} of the (latent, model) jobs.")
    for key, caption in (("top_images", "Top-activating images."),
                         ("act_max", "Activation maximisation, one image per latent (columns) and backbone (rows).")):
        if key in figures:
            page.figure(figures[key], caption)
    if not report["visualised"]["groups"].get("universal") and not report["visualised"]["groups"].get("specific"):
        page.paragraph("No latent qualified for visualisation (too few activations).", note=True)

    page.heading("6. Side by side: one latent, every backbone's view")
    for group, caption in (("universal", "Universal latents (high firing entropy)."),
                           ("specific", "Model-specific latents (low firing entropy)."),
                           ("requested", "Requested latents (feature_indices).")):
        if f"side_by_side_{group}" in figures:
            page.figure(figures[f"side_by_side_{group}"], caption + " Per backbone: activation maximisation "
                        "(blue frame), then its top images.")

    page.heading("Timings")
    page.table(["stage", "seconds"], [[k, v] for k, v in report["timings_s"].items()])
    page.paragraph("All numbers are in report.json next to this page. Thasarathan et al., ICML 2025, "
                   "\"Universal Sparse Autoencoders\"; Olah et al. 2017, \"Feature Visualization\".", note=True)
    return page.render()


def _pct(value: Any) -> str:
    return "–" if value is None or value != value else f"{float(value):.0%}"


def _fires(report: dict, latent: int, models: tuple[str, str]) -> list[Any]:
    freq = report["systems"]["usae"]["feature_stats"]["per_latent"]["frequency"]
    names = report["setup"]["models"]
    n = report["setup"]["n_images"]
    return [round(freq[names.index(m)][latent] * n) for m in models]


def _entropy(report: dict, latent: int) -> Any:
    return report["systems"]["usae"]["per_latent_entropy"][latent]
