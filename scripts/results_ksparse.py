"""The k-sparse study's results sections, generated from its run folders (no number typed by hand).

    python scripts/results_ksparse.py                     # → docs/results_ksparse.md + docs/figures/
    python scripts/results_ksparse.py --runs runs --docs docs

``ksparse_sections(runs, figure)`` returns ``[(title, markdown), ...]``: the headline over seeds
(``scripts/ksparse_seeds.py``: test MSE, dead units under both definitions, the probe on the k = 50
codes and the αk probe, mean ± std), the probe's ``encode_k`` / solver table and the dead-unit /
k-schedule sweep (``benchmarks/bench_probe_k.py``, ``benchmarks/bench_ksae.py``: validation columns
used for the choice, test for information, chosen row marked) and the ablation controls of the study
report (``analyze.py --config configs/fashion_mnist/analysis.yaml``). ``figure(source, name)``
publishes a figure and returns its link. When ``scripts/make_results.py`` is loaded, importing this
module registers the sections there too.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.io import atomic_write_text  # noqa: E402
from scripts.mean_std import mean_std, pm_of  # noqa: E402

Figure = Callable[[Path, str], str]  # (source file, published name) → link
GOAL = 0.88  # the study's probe goal on the k = 50 codes (test accuracy)
RARE = 10


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]  # | inside a cell
    return "\n".join(lines)


def best_val_acc(run: Path) -> float | None:
    """The best ``val/acc`` in a run's metrics.csv (the epoch its checkpoint keeps)."""
    try:
        with (run / "metrics.csv").open() as f:
            values = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
    except (OSError, KeyError, ValueError):
        return None
    return max(values) if values else None


def seed_rows(runs: Path) -> list[dict]:
    """One dict per seed with every headline number found in ``runs/*/seed<S>/``."""
    rows = []
    for ksae in sorted((runs / "fashion_mnist_ksae").glob("seed*"), key=lambda p: p.name):
        results, firing = _json(ksae / "results.json"), _json(ksae / "firing.json")
        if results is None or not results.get("test"):
            continue
        row = {"seed": ksae.name.removeprefix("seed"), "mse": results["test"].get("test/loss")}
        if firing is not None:
            row["never"] = firing["never_fire"]
            row["rare"] = firing[f"fire_on_fewer_than_{firing['rare_threshold']}"]
            row["n_units"] = firing["n_units"]
        for key, name in (("probe", "fashion_mnist_probe"), ("alphak", "fashion_mnist_probe_alphak")):
            probe = runs / name / ksae.name
            done = _json(probe / "results.json")
            if done and done.get("test"):
                row[key] = done["test"]["test/acc"]
                row[f"{key}_val"] = best_val_acc(probe)
        rows.append(row)
    return rows


def headline_section(runs: Path, figure: Figure) -> tuple[str, str] | None:
    rows = seed_rows(runs)
    if not rows:
        return ("k-sparse autoencoder: headline over seeds",
                "No seed runs under `runs/fashion_mnist_ksae/seed*`; make them with "
                "`python scripts/ksparse_seeds.py --seeds 0 1 2`.")
    get = lambda key: [r[key] for r in rows if r.get(key) is not None]  # noqa: E731
    n_units = next((r["n_units"] for r in rows if "n_units" in r), 1024)
    per_seed = lambda key, scale, digits: ", ".join(  # noqa: E731
        f"{scale * r[key]:.{digits}f}" if r.get(key) is not None else "–" for r in rows)
    body = [table(
        ["metric (test split unless said)", "mean ± std", f"per seed ({', '.join(r['seed'] for r in rows)})", "seeds"],
        [["**linear probe on the k = 50 codes, accuracy %** (headline)", f"**{pm_of(get('probe'), 100)}**",
          per_seed("probe", 100, 2), len(get("probe"))],
         ["  the same, best validation accuracy % (the choice)", pm_of(get("probe_val"), 100),
          per_seed("probe_val", 100, 2), len(get("probe_val"))],
         ["linear probe on the αk codes (Makhzani & Frey, α = 3), accuracy % (second row)",
          pm_of(get("alphak"), 100), per_seed("alphak", 100, 2), len(get("alphak"))],
         ["  the same, best validation accuracy %", pm_of(get("alphak_val"), 100), per_seed("alphak_val", 100, 2),
          len(get("alphak_val"))],
         ["MSE per pixel", pm_of(get("mse"), 1, 5), per_seed("mse", 1, 5), len(get("mse"))],
         [f"dead units: never fire (of {n_units})", pm_of(get("never"), 1, 1), per_seed("never", 1, 0), len(get("never"))],
         [f"dead units: fire on < {RARE} test images (of {n_units})", pm_of(get("rare"), 1, 1),
          per_seed("rare", 1, 0), len(get("rare"))]])]
    pixels = _json(runs / "fashion_mnist_probe_pixels" / "main" / "results.json")
    if pixels and pixels.get("test"):
        body.append(f"\nRaw-pixel probe (baseline, one run): {100 * pixels['test']['test/acc']:.2f}% test.")
    probes = get("probe")
    if probes:
        verdict = "met" if mean_std(probes)[0] >= GOAL else "not met"
        body.append(f"\nGoal ≥ {100 * GOAL:.1f}% on the k = 50 codes: {verdict} by the mean "
                    f"({pm_of(probes, 100)}%; everything chosen on validation).")
        paired = [(r["alphak"], r["probe"]) for r in rows if r.get("alphak") is not None and r.get("probe") is not None]
        if len(paired) > 1:
            d_mean, d_std = mean_std([a - b for a, b in paired])
            same = abs(d_mean) <= d_std
            body.append(f"αk minus k = 50 (paired by seed): {100 * d_mean:+.2f} ± {100 * d_std:.2f} points"
                        + (" — smaller than its spread: no difference." if same else "."))
    link = firing_figure(runs, figure)
    if link:
        body.append(f"\n![Firing frequency of the units per seed]({link})")
    body.append("\n*From `runs/fashion_mnist_ksae/seed*/` (results.json, firing.json), `runs/fashion_mnist_probe/"
                "seed*/`, `runs/fashion_mnist_probe_alphak/seed*/` (`python scripts/ksparse_seeds.py`); mean ± "
                "sample std over seeds (autoencoder initialisation, data order and train/val split; the test "
                "split is fixed).*")
    return "k-sparse autoencoder: headline over seeds", "\n".join(body)


def firing_figure(runs: Path, figure: Figure) -> str | None:
    """log10 firing frequency (share of test images) of every unit, one histogram line per seed."""
    firings = [(p.parent.name, _json(p)) for p in sorted((runs / "fashion_mnist_ksae").glob("seed*/firing.json"))]
    firings = [(name, f) for name, f in firings if f]
    if not firings:
        return None
    import numpy as np
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(-4.5, 0, 46)
    for name, f in firings:
        freq = np.asarray(f["fires_on"], dtype=float) / f["images"]
        ax.hist(np.log10(np.maximum(freq, 10 ** -4.4)), bins=bins, histtype="step", label=name)
    ax.axvline(math.log10(RARE / firings[0][1]["images"]), color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("log10(share of test images the unit fires on); dotted: 10 images")
    ax.set_ylabel("units")
    ax.legend(fontsize=7)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ksparse_firing.png"
        fig.savefig(path, dpi=110)
        return figure(path, "ksparse_firing.png")


def probe_k_section(runs: Path) -> tuple[str, str] | None:
    from benchmarks.bench_probe_k import optimiser  # the benchmark's own column

    files = sorted(runs.glob("bench_probe_k*/probe_k.json"))
    rows = []
    for path in files:
        for r in (_json(path) or {}).get("rows", []):
            mark = "**" if r.get("chosen") else ""
            k = "raw pixels" if r["encode_k"] == "pixels" else ("encoder's k" if r["encode_k"] is None else r["encode_k"])
            rows.append([f"{mark}{k}{mark}", r["solver"], optimiser(r), f"{mark}{100 * r['val_acc']:.2f}{mark}",
                         f"{100 * r['test_acc']:.2f}", f"{r['l2']:g}", f"{r['fit_s']:.0f}", path.parent.name])
    if not rows:
        return None
    body = table(["encode_k", "solver", "batch, lr", "val acc % (choice)", "test acc % (information)", "L2 weight",
                  "fit s (shared machine)", "source"], rows)
    return ("k-sparse: probe solver and encode_k, chosen on validation",
            body + "\n\nBold: chosen on validation (per solver, per run of the benchmark). *From "
                   "`runs/bench_probe_k*/probe_k.json` (`python benchmarks/bench_probe_k.py`).*")


def sweep_section(runs: Path) -> tuple[str, str] | None:
    files = sorted(runs.glob("bench_ksae*/epochs*.json"))
    rows = [r for path in files for r in (_json(path) or {}).get("ablation", [])]
    trained = [r for r in rows if "val_mse" in r]
    if not trained:
        return None
    from benchmarks.bench_ksae import mark_choice  # the benchmark's own rule, applied over every file

    mark_choice(trained)
    lines = []
    for r in trained:
        mark = "**" if r["chosen"] else ""
        lines.append([f"{mark}{r['row']}{mark}", f"{mark}{r['val_mse']:.5f}{mark}",
                      f"{r['val_dead_units']} / {r['val_rare_units']}", f"{100 * r['probe_val_acc']:.2f}",
                      f"{r['test_mse']:.5f}", f"{r['test_dead_units']} / {r['test_rare_units']}",
                      f"{100 * r['probe_acc']:.2f}", "✓" if r["chosen"] else ""])
    body = table(["row", "val MSE/pixel", "val dead (never / < 10)", "val probe %", "test MSE/pixel",
                  "test dead (never / < 10)", "test probe %", "chosen"], lines)
    return ("k-sparse: dead-unit cures and k schedule, chosen on validation",
            body + "\n\nChosen (✓): the lowest validation MSE among rows with ≤ 1% of units never firing on "
                   "validation; test columns for information. *From `runs/bench_ksae*/epochs*.json` "
                   "(`python benchmarks/bench_ksae.py`).*")


def ablation_section(runs: Path, figure: Figure) -> tuple[str, str] | None:
    report = runs / "fashion_mnist_ksae" / "main" / "report"
    numbers = _json(report / "results.json")
    if not numbers or "rankings" not in numbers.get("ablation", {}):
        return None
    from analysis.ksparse.study import control_tables

    body = [f"Codes: {numbers['ablation']['codes']} (the probe's `encode_k`; the autoencoder's k = {numbers['k']}). "
            f"Probe accuracy on them: {100 * numbers['probe']['accuracy']:.2f}% ({numbers['splits']['eval']} split)."]
    for caption, header, rows in control_tables(numbers):
        body += ["", caption, "", table(header, rows)]
    if (report / "figures" / "ablation.png").is_file():
        body.append(f"\n![Ablation]({figure(report / 'figures' / 'ablation.png', 'ksparse_ablation.png')})")
    body.append("\n*From `runs/fashion_mnist_ksae/main/report/results.json` "
                "(`python analyze.py --config configs/fashion_mnist/analysis.yaml`).*")
    return "k-sparse: does the importance ranking hold up? (ablation controls)", "\n".join(body)


def ksparse_sections(runs: Path, figure: Figure) -> list[tuple[str, str]]:
    """Every k-sparse section found in ``runs`` as ``(title, markdown)``; missing runs say how to make them."""
    sections = [headline_section(runs, figure), probe_k_section(runs), sweep_section(runs),
                ablation_section(runs, figure)]
    return [s for s in sections if s is not None]


def _register_with_make_results() -> None:
    """Add the sections to ``scripts/make_results.py``'s list if that module is loaded (as a script
    or imported), without importing a second copy of it."""
    for name in ("__main__", "scripts.make_results"):
        module = sys.modules.get(name)
        if module is None or not str(getattr(module, "__file__", "")).endswith("make_results.py"):
            continue
        if getattr(module, "_ksparse_registered", False):
            continue
        Section = module.Section

        def ksparse(ctx) -> Any:
            """The k-sparse study as one section, its parts as subsections."""
            found = ksparse_sections(ctx.runs, ctx.figure)
            return Section("k-sparse autoencoder study", "\n\n".join(f"### {t}\n\n{b.strip()}" for t, b in found))

        module.section(ksparse)
        module._ksparse_registered = True


_register_with_make_results()


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = p.parse_args(argv)
    published = []

    def figure(source: Path, name: str) -> str:
        (args.docs / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, args.docs / "figures" / name)
        published.append(name)
        return f"figures/{name}"

    lines = ["# k-sparse autoencoder study: results", "",
             "Generated from the run folders by `python scripts/results_ksparse.py`; do not edit by hand. "
             "How to run the study and read these tables: [ksparse.md](ksparse.md).", ""]
    for title, body in ksparse_sections(args.runs, figure):
        lines += [f"## {title}", "", body.strip(), ""]
    out = atomic_write_text(args.docs / "results_ksparse.md", "\n".join(lines))
    print(f"wrote {out} and {len(published)} figure(s)")
    return out


if __name__ == "__main__":
    main()
