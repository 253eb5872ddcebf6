"""The universality study end to end: tiny real checkpoints (train.py), ``analyze.py``'s ``main``,
the report opened in headless Chromium (every figure loads), and bad input (one-line error, no
partial report)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor

from common.errors import run_cli
from datamodules.batch_transform import BatchTransform
from datamodules.image_datamodule import ImageDataModule
from helpers.tiny_images import save_random_backbone

CHROMIUM = Path("/usr/bin/chromium")


class BarImages(ImageDataModule):
    """Synthetic grey 12×12 images of 4 classes (a bright bar at a class-dependent side), shown to
    the backbones at 32×32 with 3 channels, like Fashion-MNIST in the study. (Options are kept as
    attributes: under LightningCLI a nested datamodule's ``save_hyperparameters`` gets the outer's.)"""

    num_classes = 4
    class_names = ("left", "right", "top", "bottom")

    def __init__(self, n_train: int = 320, n_test: int = 96, val_size: int = 32, batch_size: int = 64,
                 seed: int = 0) -> None:
        super().__init__(batch_size, val_size, None, seed,
                         BatchTransform(32, 3, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], False, 0.0))
        self.n_train, self.n_test = n_train, n_test

    def load_split_tensors(self, train: bool) -> tuple[Tensor, Tensor]:
        n = self.n_train if train else self.n_test
        g = torch.Generator().manual_seed(self.seed * 2 + int(train))
        labels = torch.randint(0, 4, (n,), generator=g)
        x = torch.rand(n, 1, 12, 12, generator=g) * 0.3
        pos = torch.randint(0, 4, (n,), generator=g)
        for i in range(n):
            c, p = int(labels[i]), int(pos[i])
            if c < 2:
                x[i, 0, :, p if c == 0 else 11 - p] += 0.7
            else:
                x[i, 0, p if c == 2 else 11 - p, :] += 0.7
        return (x.clamp(0, 1) * 255).to(torch.uint8), labels


# ----- fixtures: tiny random torchvision backbones, their activation cache, two SAE runs (train.py) -----
def _data(tmp: Path, backbones: dict[str, str], n_test: int = 96) -> dict:
    """An ActivationDataModule config over helper TinyImages (32×32) and random-weight backbones."""
    specs = []
    for seed, (name, arch) in enumerate(backbones.items()):
        path = save_random_backbone(tmp / "backbones" / f"{name}.pth", arch, 4, seed=seed)
        specs.append({"name": name, "arch": arch, "checkpoint": str(path)})
    return {"class_path": "datamodules.activations.ActivationDataModule",
            "init_args": {"backbones": specs, "cache_dir": str(tmp / "cache"), "batch_size": 64,
                          "extract_batch_size": 128, "progress": False, "device": "cpu",
                          "images": {"class_path": "test_universality_report.BarImages",
                                     "init_args": {"n_test": n_test}}}}


def _train(root: Path, name: str, model: dict, data: dict) -> Path:
    import train

    config = {"seed_everything": 0,
              "run": {"root": str(root), "name": name, "version": "main", "test_after_fit": False},
              "model": model, "data": data,
              "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 8, "enable_progress_bar": False,
                          "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
                          "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"save_last": True}}]}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    train.main(["--config", str(path)])
    return root / name / "main"


BACKBONES = {"resnet": "resnet18", "mobile": "mobilenet_v3_small"}
DIMS = {"resnet": 512, "mobile": 1024}
N_LATENTS = 64


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    data = _data(root, BACKBONES)
    common = {"feature_dims": DIMS, "sae": {"n_latents": N_LATENTS, "k": 4, "pre_bias": True}, "lr": 1e-2}
    usae = _train(root, "usae", {"class_path": "lightning_modules.universal_sae.UniversalSAE", "init_args": common},
                  data)
    indep = _train(root, "independent", {"class_path": "lightning_modules.independent_saes.IndependentSAEs",
                                         "init_args": common}, data)
    other_backbones = {"resnet": "resnet18", "shuffle": "shufflenet_v2_x0_5"}
    other_dims = {"resnet": 512, "shuffle": 1024}
    other = _train(root, "other", {"class_path": "lightning_modules.universal_sae.UniversalSAE",
                                   "init_args": {**common, "feature_dims": other_dims}},
                   _data(root / "other_data", other_backbones))
    return {"usae": usae, "independent": indep, "other": other, "root": root}


def analysis_args(runs: dict, out: Path, *extra: str) -> list[str]:
    return ["--analysis", "analysis.universality.study.UniversalityStudy",
            "--analysis.init_args.inputs.usae_checkpoint", str(runs["usae"] / "checkpoints" / "last.ckpt"),
            "--analysis.init_args.inputs.independent_checkpoint", str(runs["independent"] / "checkpoints" / "last.ckpt"),
            "--analysis.init_args.inputs.train_config", str(runs["usae"] / "config.yaml"),
            "--analysis.init_args.output_dir", str(out),
            "--analysis.init_args.n_features", "2", "--analysis.init_args.firing.min_activations", "3",
            "--analysis.init_args.n_top_images", "4",
            "--analysis.init_args.act_max.steps", "15", "--analysis.init_args.act_max.batch_size", "8", *extra]


def count_loaded_images(html: Path, tmp: Path) -> tuple[int, int]:
    """(images that loaded, images on the page) of ``html`` in headless Chromium (a copy of the
    report gets a script that writes the count into the DOM on load)."""
    copy = tmp / "chromium_copy"
    shutil.copytree(html.parent, copy)
    page = copy / html.name
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
              "const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
              "document.body.setAttribute('data-loaded',ok+'/'+i.length);});</script></body>")
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium_profile'}", "--virtual-time-budget=5000", "--dump-dom",
           page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    match = re.search(r'data-loaded="(\d+)/(\d+)"', dom)
    assert match, f"Chromium gave no count; DOM starts: {dom[:300]!r}"
    return int(match.group(1)), int(match.group(2))


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.glob(f".{out.name}.*")], "temporary report folders left behind"


# ----- tests ------------------------------------------------------------------------------------------
def test_report_end_to_end(runs, tmp_path, monkeypatch):
    import analyze

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    assert analyze.main(analysis_args(runs, out, "--analysis.init_args.feature_indices", "[0, 63]")) == out
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["setup"]["models"]) == sorted(BACKBONES) and report["setup"]["n_images"] == 96
    for kind in ("usae", "independent"):
        r2 = report["systems"][kind]["r2"]["matrix"]
        assert len(r2) == 2 and all(-10 < v < 1 for row in r2 for v in row)
        ent = report["systems"][kind]["entropy"]
        assert sum(ent["hist_counts"]) == ent["n_alive"] == N_LATENTS - ent["n_rare"]
        assert ent["n_rare"] >= ent["n_dead"] and ent["min_activations"] == 3
        firing = report["systems"][kind]["feature_stats"]["firing"]
        assert set(firing) == set(BACKBONES) and all(f["n_rare"] >= f["n_never"] for f in firing.values())
        for c in report["systems"][kind]["correlation"]:  # one latent set per row
            assert c["fit_split"] == "val" and c["score_split"] == "test"
            n = c["n_latents_set"]
            assert c["same_index"]["count"] == c["hungarian_matched"]["count"] == c["null_random_pairs"]["count"] == n
        head = report["headline"][kind]
        assert {f"rare_fraction/{m}" for m in BACKBONES} <= set(head) and "corr_n_latents" in head
    assert report["visualised"]["groups"]["requested"] == [0, 63]
    with np.load(out / "act_max_images.npz") as saved:
        latents = report["visualised"]["latents"]
        assert saved["latents"].tolist() == latents
        assert all(saved[m].shape == (len(latents), 1, 32, 32) for m in BACKBONES)
    assert report["headline"]["usae"]["act_max_share_raised"] > 0.5
    assert all(ord(c) < 128 or c.isprintable() for c in (out / "index.html").read_text())
    figures = set(report["figures"])
    assert {"entropy", "r2", "correlation", "stats", "frequency", "top_images", "act_max",
            "side_by_side_requested"} <= figures
    html = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == len(figures) and all((out / s).is_file() and not Path(s).is_absolute() for s in srcs)
    assert not [p for p in tmp_path.glob(".report.*")]
    if CHROMIUM.exists():
        loaded, total = count_loaded_images(out / "index.html", tmp_path)
        assert loaded == total == len(figures)


@pytest.mark.parametrize("method", ["accentuation", "maco"])
def test_report_with_another_visualisation_method(runs, tmp_path, monkeypatch, method):
    """The chosen method reaches the report: its name in the figure title and the page, the seeds of
    accentuation (the latents' top images) in the side-by-side figure, and raised activations."""
    import analyze

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    analyze.main(analysis_args(runs, out, "--analysis.init_args.feature_indices", "[1, 2]",
                               "--analysis.init_args.act_max.method", method))
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["act_max"]["method"] == method
    assert f"method {method}" in (out / "index.html").read_text()
    assert report["headline"]["usae"]["act_max_share_raised"] > 0.5
    assert "side_by_side_requested" in report["figures"]


def test_rerun_replaces_the_report_atomically_and_a_failure_keeps_the_old_one(runs, tmp_path, monkeypatch):
    import analyze
    import analysis.universality.study as study

    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (out / ".report-of-analyze").write_text("")  # an earlier report's folder (only those are replaced)
    analyze.main(analysis_args(runs, out, "--analysis.init_args.n_features", "0"))
    assert (out / "report.json").is_file() and not (out / "stale.txt").exists()
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed half-way")

    monkeypatch.setattr(study, "stats_figure", broken)  # fails after codes, R², entropy figures are written
    with pytest.raises(RuntimeError, match="half-way"):
        analyze.main(analysis_args(runs, out, "--analysis.init_args.n_features", "0"))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not [p for p in tmp_path.glob(".report.*")]


def test_data_section_instead_of_train_config_and_wandb_offline(runs, tmp_path, monkeypatch):
    """The datamodule given as a nested class_path in the analysis YAML; figures and tables to W&B."""
    import analyze

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "report"
    data = yaml.safe_load((runs["usae"] / "config.yaml").read_text())["data"]
    config = {"analysis": {"class_path": "analysis.universality.study.UniversalityStudy", "init_args": {
        "inputs": {"usae_checkpoint": str(runs["usae"] / "checkpoints" / "last.ckpt"),
                   "independent_checkpoint": str(runs["independent"] / "checkpoints" / "last.ckpt"), "data": data},
        "output_dir": str(out), "n_features": 0, "wandb": {"enabled": True, "mode": "offline"}}}}
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump(config))
    analyze.main(["--config", str(path)])
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["train_config"] is None and report["config"]["data"] == "ActivationDataModule"
    runs_dir = list((tmp_path / "wandb").glob("**/offline-run-*"))
    assert len(runs_dir) == 1
    logged = list(runs_dir[0].glob("**/media/images/**/*.png"))
    tables = list(runs_dir[0].glob("**/media/table/**/*.json"))
    assert len(logged) == len(report["figures"]) and len(tables) == 3


@pytest.mark.parametrize("case", ["other_backbones", "swapped_cache", "swapped_systems", "index_out_of_range",
                                  "empty_split"])
def test_bad_input_one_line_error_and_no_report(runs, tmp_path, capsys, case):
    import analyze

    out = tmp_path / "report"
    extra = {
        "other_backbones": ["--analysis.init_args.inputs.usae_checkpoint", str(runs["other"] / "checkpoints" / "last.ckpt")],
        "swapped_cache": ["--analysis.init_args.inputs.train_config", str(runs["other"] / "config.yaml")],
        "swapped_systems": ["--analysis.init_args.inputs.usae_checkpoint",
                            str(runs["independent"] / "checkpoints" / "last.ckpt")],
        "index_out_of_range": ["--analysis.init_args.feature_indices", "[3, 64]"],
        "empty_split": ["--analysis.init_args.inputs.train_config", str(_empty_split_config(runs, tmp_path))],
    }[case]
    with pytest.raises(SystemExit) as exit_info:  # a UserError, turned into one line and exit code 2
        run_cli(lambda: analyze.main(analysis_args(runs, out, *extra)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    expected = {"other_backbones": "shuffle", "swapped_cache": "shuffle", "swapped_systems": "IndependentSAEs",
                "index_out_of_range": "64",
                "empty_split": "empty"}[case]
    assert expected in err[0]
    _no_leftovers(out)


def _empty_split_config(runs: dict, tmp_path: Path) -> Path:
    config = yaml.safe_load((runs["usae"] / "config.yaml").read_text())
    config["data"]["init_args"]["images"]["init_args"]["n_test"] = 0
    config["data"]["init_args"]["cache_dir"] = str(tmp_path / "empty_cache")
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_results_generator_reproduces_the_tables_of_real_runs(runs, tmp_path, monkeypatch):
    """eval_sae_splits scores the fixture runs, analyze writes their report; make_results turns both
    into docs/results.md with exactly those numbers."""
    import analyze
    from scripts import eval_sae_splits, make_results

    monkeypatch.chdir(tmp_path)
    tree = tmp_path / "runs"
    for kind, experiment in (("usae", "fashion_mnist_usae"), ("independent", "fashion_mnist_independent")):
        target = tree / experiment / "main"
        shutil.copytree(runs[kind], target)
        assert eval_sae_splits.main([str(target), "--rare-below", "3"]) == 0
    scores = json.loads((tree / "fashion_mnist_usae" / "main" / "splits.json").read_text())
    assert set(scores) >= {"val", "test"} and scores["test"]["n_images"] == 96 and scores["val"]["n_images"] == 32
    out = tree / "fashion_mnist_usae" / "main" / "universality_report"
    analyze.main(analysis_args(runs, out, "--analysis.init_args.n_features", "0"))
    assert make_results.main(["--runs", str(tree), "--docs", str(tmp_path / "docs")]) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    usae_row = next(line for line in text.splitlines() if line.startswith("| **chosen** | `main`"))  # USAE first
    assert f"{scores['val']['r2_self_mean']:.3f}" in usae_row and f"{scores['test']['r2_self_mean']:.3f}" in usae_row
    report = json.loads((out / "report.json").read_text())
    r2 = next(line for line in text.splitlines() if line.startswith("| self R²"))
    assert f"{report['headline']['usae']['r2_self_mean']:.3f}" in r2 and "one seed: no spread" in r2
    assert (tmp_path / "docs" / "figures" / "universality_frequency.png").is_file()
    assert "](figures/universality_frequency.png)" in text
