"""The results generator (scripts/make_results.py): tables reproduced from run folders, the sweep
choice made on validation only, "no difference" within the spread, and the section registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scripts import make_results as mr

MODELS = ("resnet50", "mobilenet_v3_large")


def _split(r2: float, rare: tuple[float, float], n: int) -> dict:
    return {"n_images": n, "n_latents": 64, "r2_self_mean": r2, "r2_cross_mean": r2 - 0.5, "r2": {},
            "never_fraction": {m: rare[i] / 2 for i, m in enumerate(MODELS)},
            "rare_fraction": {m: rare[i] for i, m in enumerate(MODELS)}, "n_alive": 60}


def _run(root: Path, experiment: str, version: str, val: dict, test: dict, lr: float, seed: int = 0) -> Path:
    run = root / experiment / version
    run.mkdir(parents=True)
    config = {"seed_everything": seed, "trainer": {"max_epochs": 14},
              "model": {"init_args": {"n_latents": 64, "k": 4, "lr": lr, "lr_schedule": "cosine", "warmup_steps": 5,
                                      "pre_bias": True, "aux_k": 8, "dead_window": 100, "revive_bias_step": 0.0}},
              "data": {"init_args": {"batch_size": 32, "images": {"init_args": {"train_subset": 500}}}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "splits.json").write_text(json.dumps({"rare_below": 10, "val": val, "test": test}))
    return run


def _headline(r2: float, rare: float, same: float) -> dict:
    return {"r2_self_mean": r2, "r2_cross_mean": r2 - 0.4, "n_alive": 60,
            **{f"rare_fraction/{m}": rare for m in MODELS}, **{f"never_fraction/{m}": rare / 4 for m in MODELS},
            "share_universal": 0.3, "share_specific": 0.2, "corr_n_latents": 50,
            "corr_same_index_mean": same, "corr_hungarian_mean": same + 0.05}


def _report(root: Path, version: str, usae: dict, independent: dict) -> None:
    out = root / "fashion_mnist_usae" / version / "universality_report"
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({
        "setup": {"models": list(MODELS), "n_latents": 64, "k": 4, "split": "test", "match_split": "val",
                  "n_images": 100}, "headline": {"usae": usae, "independent": independent}, "figures": {}}))


def test_sweep_table_is_read_from_the_runs_and_the_choice_uses_validation_only(tmp_path):
    runs = tmp_path / "runs"
    # row a: best test numbers but fails the goal on validation; row b meets it on validation
    _run(runs, "fashion_mnist_usae", "a", _split(0.90, (0.30, 0.20), 20), _split(0.95, (0.01, 0.01), 100), 1e-3)
    _run(runs, "fashion_mnist_usae", "b", _split(0.85, (0.05, 0.08), 20), _split(0.80, (0.20, 0.20), 100), 5e-4)
    _run(runs, "fashion_mnist_usae", "c", _split(0.80, (0.02, 0.02), 20), _split(0.99, (0.00, 0.00), 100), 2e-4)
    # a seed run of the defaults is the headline's, not a sweep row (it would win on val here)
    _run(runs, "fashion_mnist_usae", "seed1", _split(0.95, (0.01, 0.01), 20), _split(0.95, (0.0, 0.0), 100), 1e-3)
    ctx = mr.Context(runs, tmp_path / "docs", "machine: test")
    text = mr.build(ctx, [mr.universality_sweep])
    assert "`seed1`" not in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    chosen = [line for line in lines if "**chosen**" in line]
    assert len(chosen) == 1 and "`b`" in chosen[0]  # not a (fails on val), not c (lower val R²)
    row_a = next(line for line in lines if "`a`" in line)
    cells = [c.strip() for c in row_a.strip("|").split("|")]
    assert cells[cells.index("0.900")] == "0.900" and "30.0%" in cells and "0.950" in cells
    assert "0.001" in cells and "cosine/5" in cells  # the levers come from config.yaml
    assert "machine: test" in text and "independent SAEs**: no scored runs" in text


def test_choose_falls_back_to_the_lowest_validation_rare_fraction_at_no_lower_r2():
    rows = [{"val": _split(0.9, (0.5, 0.4), 20)}, {"val": _split(0.7, (0.3, 0.2), 20)}]
    assert mr.choose(rows) == 1 and mr.choose([]) is None
    rows.append({"version": "base", "val": _split(0.8, (0.9, 0.9), 20)})
    assert mr.choose(rows) == 0  # row 1 has less R² than the previous defaults


def test_headline_mean_std_over_seeds_and_no_difference_within_the_spread(tmp_path):
    runs = tmp_path / "runs"
    for s, (ru, ri) in enumerate([(0.84, 0.85), (0.86, 0.84), (0.85, 0.86)]):
        _report(runs, f"seed{s}", _headline(ru, 0.05 + 0.01 * s, 0.6), _headline(ri, 0.07, 0.05 + 0.01 * s))
    ctx = mr.Context(runs, tmp_path / "docs", "machine: test")
    text = mr.build(ctx, [mr.universality_headline])
    assert "3 seed(s) (seed0, seed1, seed2)" in text
    r2 = next(line for line in text.splitlines() if line.startswith("| self R²"))
    assert "0.850 ± 0.010" in r2 and "no difference" in r2
    same = next(line for line in text.splitlines() if line.startswith("| r, same latent index"))
    assert "0.600 ± 0.000" in same and "0.060 ± 0.010" in same and "USAE higher" in same
    rare = next(line for line in text.splitlines() if "rare latents" in line and "resnet50" in line)
    assert "6.0 ± 1.0%" in rare


def test_one_seed_says_there_is_no_spread(tmp_path):
    runs = tmp_path / "runs"
    _report(runs, "main", _headline(0.8, 0.1, 0.5), _headline(0.82, 0.1, 0.02))
    text = mr.build(mr.Context(runs, tmp_path / "docs", "m"), [mr.universality_headline])
    assert "1 seed(s) (main)" in text and "one seed: no spread" in text


def test_registered_sections_are_written_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(mr, "SECTIONS", [])

    @mr.section
    def first(ctx):
        return mr.Section("First", mr.md_table(["a", "b"], [[1, 0.5]]))

    @mr.section
    def skipped(ctx):
        return None

    text = mr.build(mr.Context(tmp_path, tmp_path / "docs", "m"))
    assert "## First" in text and "| 1 | 0.500 |" in text and text.count("## ") == 1


def test_main_writes_the_document(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "fashion_mnist_independent", "x", _split(0.8, (0.05, 0.05), 20), _split(0.8, (0.05, 0.05), 100), 1e-3)
    assert mr.main(["--runs", str(runs), "--docs", str(tmp_path / "docs")]) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "`x`" in text and "**chosen**" in text and "machine:" in text
    with pytest.raises(SystemExit):
        mr.main(["--no-such-option"])


def test_readme_headline_is_written_between_the_markers_only(tmp_path):
    runs = tmp_path / "runs"
    for s, ru in enumerate((0.84, 0.86)):
        _report(runs, f"seed{s}", _headline(ru, 0.05, 0.6), _headline(0.85, 0.07 + 0.02 * s, 0.05))
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n<!-- headline:begin -->\nold table\n<!-- headline:end -->\nafter\n")
    assert mr.main(["--runs", str(runs), "--docs", str(tmp_path / "docs"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Title\n\nbefore\n") and text.endswith("after\n")
    r2 = next(line for line in text.splitlines() if "self R²" in line)
    assert "0.850 ± 0.014" in r2 and "0.850 ± 0.000" in r2 and "2 seeds" in r2
    rare = next(line for line in text.splitlines() if "rare latents" in line)
    assert "5.0 ± 0.0%" in rare and "8.0 ± 1.4%" in rare  # the worst model, per system
    no_markers = tmp_path / "OTHER.md"
    no_markers.write_text("nothing to replace\n")
    assert not mr.write_readme_headline(no_markers, "| x |") and no_markers.read_text() == "nothing to replace\n"


def test_probe_grid_choice_is_made_on_validation_and_the_table_shows_batch_and_lr(tmp_path):
    from benchmarks import bench_probe_k as bp
    from scripts import results_ksparse as rk

    rows = [{"encode_k": 50, "solver": "adam", "val_acc": 0.880, "test_acc": 0.890, "l2": 0.0, "fit_s": 10.0,
             "batch_size": 256, "lr": 1e-3},
            {"encode_k": 50, "solver": "adam", "val_acc": 0.884, "test_acc": 0.870, "l2": 0.0, "fit_s": 30.0,
             "batch_size": 512, "lr": 2e-3},
            {"encode_k": 50, "solver": "adam", "val_acc": 0.884, "test_acc": 0.860, "l2": 0.0, "fit_s": 20.0,
             "batch_size": 1024, "lr": 2e-3}]
    chosen = bp.choose(rows)
    assert (chosen["batch_size"], chosen["lr"]) == (1024, 2e-3)  # best val, tie → faster; test never used
    assert bp.adam_pair("1024:2e-3") == (1024, 0.002)
    with pytest.raises(Exception, match="BATCH:LR"):
        bp.adam_pair("1024")
    for r in rows:
        r["chosen"] = r is chosen
    (tmp_path / "bench_probe_k_adam").mkdir()
    (tmp_path / "bench_probe_k_adam" / "probe_k.json").write_text(json.dumps({"rows": rows}))
    _, body = rk.probe_k_section(tmp_path)
    assert "| **50** | adam | 1024, 0.002 | **88.40** | 86.00 |" in body
    assert "| 50 | adam | 256, 0.001 | 88.00 | 89.00 |" in body
