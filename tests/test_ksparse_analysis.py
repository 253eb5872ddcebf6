"""The k-sparse study: importance, overlays, occlusion, ablation and its controls, the report, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.base import REPORT_MARKER
from analysis.ksparse import (ablation_study, check_image, class_mean_codes, decoder_side_ablation, draw_controls,
                              feature_overlay, importance, load_probed_autoencoder, matched_random_units,
                              occlusion_map, quantile_bins, ranking_scores, top_units)
from analysis.ksparse.study import KSparseStudy
from analysis.options import KSparseInputs
from common.errors import UserError
from common.run_options import WandbOptions
from datamodules.fashion_mnist import FashionMNISTDataModule
from components.sparse_coder import SparseCoder, SparseCoderConfig

N_UNITS, K = 128, 12


def tiny_data(repo_root: Path) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(data_dir=str(repo_root / "data"), train_subset=4096, val_size=256)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, repo_root) -> tuple[Path, Path]:
    """A tiny k-sparse AE and a probe on its codes, trained without a Trainer, saved as run folders."""
    torch.manual_seed(0)
    data = tiny_data(repo_root)
    images, labels = data.split("train")
    x = data.transform(images).flatten(1)
    net = SparseCoder(784, SparseCoderConfig(n_latents=N_UNITS, k=K, pre_bias=True, decoder_bias=True, sparse_max_density=1.0, select_dtype="float32"))
    net.init_pre_bias_(x.mean(0))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(4):
        for batch in x.split(256):
            loss = F.mse_loss(net(batch)[2], batch)
            optimizer.zero_grad()
            loss.backward()
            net.project_decoder_grad_()
            optimizer.step()
            net.normalize_decoder_()
    with torch.no_grad():
        codes = net.encode(x)[1]
    classifier = torch.nn.Linear(N_UNITS, 10)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(classifier(codes), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    root = tmp_path_factory.mktemp("runs")
    ksae, probe = root / "ksae", root / "probe"
    ksae.mkdir()
    probe.mkdir()
    torch.save(net.encoder.state_dict(), ksae / "encoder.pth")
    torch.save(net.decoder.state_dict(), ksae / "decoder.pth")
    torch.save(classifier.state_dict(), probe / "classifier.pth")
    (probe / "config.yaml").write_text("model:\n  init_args:\n    encode_k: null\n")  # as train.py writes it
    return ksae, probe


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory, repo_root) -> Path:
    """A raw-pixel probe (784 → 10) trained on the tiny data, saved as a run folder."""
    torch.manual_seed(0)
    data = tiny_data(repo_root)
    images, labels = data.split("train")
    x = data.transform(images).flatten(1)
    classifier = torch.nn.Linear(784, 10)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(classifier(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    run = tmp_path_factory.mktemp("pixels")
    torch.save(classifier.state_dict(), run / "classifier.pth")
    (run / "results.json").write_text(json.dumps({"test": {"test/acc": 0.8}}))
    return run


@pytest.fixture(scope="module")
def model(runs):
    return load_probed_autoencoder(*runs, input_dim=784)


def study(repo_root: Path, runs: tuple[Path, Path], out: Path, **overrides) -> KSparseStudy:
    options = dict(inputs=KSparseInputs(tiny_data(repo_root), ksae_run=str(runs[0]), probe_run=str(runs[1])),
                   pixel_probe_run=None, output_dir=str(out), top_units=4, ablation_units=5,
                   ablation_seeds=3, overlay_top_k=3, occlusion_window=7, occlusion_stride=7)
    options.update(overrides)
    return KSparseStudy(**options)


def test_importance_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    codes = np.maximum(rng.normal(size=(300, 20)), 0) * (rng.random((300, 20)) < 0.3)
    labels = rng.integers(0, 4, size=300)
    weight = rng.normal(size=(4, 20))
    expected = np.zeros((20, 4))
    for i in range(20):
        for c in range(4):
            expected[i, c] = abs(weight[c, i]) * codes[labels == c, i].mean()
    got = importance(torch.tensor(weight), class_mean_codes(torch.tensor(codes), torch.tensor(labels), 4))
    assert got.shape == (20, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    top = top_units(got, 3)
    np.testing.assert_array_equal(top.numpy(), np.argsort(-expected, axis=0, kind="stable")[:3].T)


def test_overlay_picks_the_largest_logit_contributions(model, repo_root):
    images, _ = tiny_data(repo_root).split("test")
    overlay = feature_overlay(model, images[0, 0], top_k=5)
    codes = model.codes(images[:1].float() / 255)[0]
    contributions = model.classifier.weight[overlay.target] * codes
    assert torch.allclose(overlay.contributions, contributions.sort(descending=True).values[:5])
    assert overlay.atoms.shape == (5, 28, 28) and overlay.heatmap.shape == (28, 28)
    expected = (overlay.contributions.view(-1, 1, 1) * overlay.atoms).sum(0)
    assert torch.allclose(overlay.heatmap, expected)


def test_occlusion_map_shape_and_sign(model, repo_root):
    images, _ = tiny_data(repo_root).split("test")
    drop = occlusion_map(model, images[0].float() / 255, window=4, stride=2)
    assert drop.shape == (28, 28)
    assert drop.max() > 0  # covering part of the garment lowers the predicted class's probability
    blank = occlusion_map(model, torch.zeros(28, 28), window=4, stride=4)
    assert blank.abs().max() < 1e-6  # nothing to cover (up to batch-size-dependent float rounding)


@pytest.mark.parametrize("shape", [(27, 28), (3, 28, 28), (2, 1, 28, 28), (783,)])
def test_wrong_image_shapes_are_user_errors(model, shape):
    with pytest.raises(UserError, match=r"the image has shape .* pass one 28×28 grey image"):
        feature_overlay(model, torch.rand(shape), top_k=3)
    with pytest.raises(UserError, match="the image has shape"):
        occlusion_map(model, torch.rand(shape))
    assert check_image(torch.rand(784), 784).shape == (1, 1, 28, 28)


def test_ablating_top_units_hurts_more_than_matched_random_units(model, repo_root):
    data = tiny_data(repo_root)
    images, labels = data.split("test")
    codes = model.batched_codes(data.transform(images))
    train_images, train_labels = data.split("train")
    train_codes = model.batched_codes(data.transform(train_images))
    means = class_mean_codes(train_codes, train_labels, 10)
    top = top_units(importance(model.classifier.weight, means), 5)
    controls, _ = draw_controls(means, train_codes, train_labels, top, [0, 1, 2], bins=4)
    result = ablation_study(model.classifier, codes, labels, top, controls, data.class_names)
    summary = result["summary"]
    assert summary["top_logit_drop_mean"] > summary["random_logit_drop_mean"]
    assert summary["classes_where_top_hurts_more"] >= 8
    assert len(result["per_class"]) == 10 and result["per_class"][0]["random"]["units"] == 5


def test_matched_controls_fall_in_the_same_firing_strength_bins():
    """Each control unit has its top unit's quantile bin of class-mean activation, is not a top
    unit, fires on the class, and no unit is drawn twice."""
    torch.manual_seed(0)
    means = torch.rand(200).pow(3)  # skewed, like mean activations
    fires = torch.rand(200) > 0.2
    means[~fires] = 0.0
    top = torch.argsort(-means)[:3]  # the strongest units: the top bin
    top = torch.cat([top, torch.tensor([int(fires.nonzero()[50]), int(fires.nonzero()[120])])])
    bins = quantile_bins(means, fires, 10)
    for seed in range(5):
        units, moved = matched_random_units(means, top, fires, 10, torch.Generator().manual_seed(seed))
        assert moved == 0 and len(units) == len(top) and len(set(units.tolist())) == len(top)
        assert torch.equal(bins[units], bins[top])
        assert fires[units].all() and not set(units.tolist()) & set(top.tolist())
    # an unmatched control (any firing unit) would mostly come from weaker bins
    assert (bins[fires] < bins[top[0]]).double().mean() > 0.8
    # a bin with too few units left: the nearest bin is used, and counted
    few = torch.zeros(20, dtype=torch.bool)
    few[:10] = True
    values = torch.arange(20, dtype=torch.float64)
    units, moved = matched_random_units(values, torch.tensor([9, 8]), few, 5, torch.Generator().manual_seed(0))
    assert moved >= 1 and len(units) == 2 and few[units].all()


def test_rankings_are_the_documented_scores():
    w = torch.tensor([[1.0, -3.0, 0.5], [-2.0, 1.0, 0.0]])
    m = torch.tensor([[0.5, 0.2, 4.0], [0.1, 1.0, 0.3]])
    scores = ranking_scores(w, m)
    assert torch.allclose(scores["importance"], (w.double().abs() * m.double()).t())
    assert torch.equal(scores["abs_weight"], w.abs().t().double())
    assert torch.equal(scores["mean_code"], m.t().double())
    assert torch.allclose(scores["signed"], (w.double() * m.double()).t())
    assert top_units(scores["signed"], 1).flatten().tolist() == [2, 1]
    assert top_units(scores["importance"], 1).flatten().tolist() == [2, 1]
    assert top_units(scores["abs_weight"], 1).flatten().tolist() == [1, 0]


def test_decoder_side_ablation_on_a_tiny_fixture():
    """Two pixels; unit 0 draws pixel 0, unit 1 pixel 1, unit 2 nothing. The pixel classifier picks
    the brighter pixel. Zeroing unit 0 in class-0 codes turns them into class 1; zeroing unit 2
    changes nothing."""
    decoder = torch.nn.Linear(3, 2, bias=False)
    pixels = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        pixels.weight.copy_(torch.eye(2))
    codes = torch.tensor([[1.0, 0.5, 0.3], [0.9, 0.2, 0.3], [0.2, 1.0, 0.3], [0.0, 0.8, 0.3]])
    labels = torch.tensor([0, 0, 1, 1])
    top = torch.tensor([[0], [1]])
    controls = [[torch.tensor([2])], [torch.tensor([2])]]
    result = decoder_side_ablation(decoder, pixels, codes, labels, top, controls, ["a", "b"])
    first, second = result["per_class"]
    assert (first["intact_class_accuracy"], first["top_class_accuracy"], first["random_class_accuracy_mean"]) == (1, 0, 1)
    assert (second["intact_class_accuracy"], second["top_class_accuracy"]) == (1, 0)
    assert result["summary"]["top_class_accuracy_drop_mean"] == 1.0
    assert result["summary"]["random_class_accuracy_drop_mean"] == 0.0
    assert result["summary"]["classes_where_top_hurts_more"] == 2
    assert torch.equal(codes[0], torch.tensor([1.0, 0.5, 0.3]))  # the caller's codes are untouched


def test_report_files_exist_and_every_referenced_figure_exists(runs, repo_root, tmp_path):
    out = study(repo_root, runs, tmp_path / "report").run()
    assert out == tmp_path / "report"
    markdown = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(linked) == 6 and all((out / path).is_file() for path in linked)
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(Path(p).name for p in linked)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["n_units"] == N_UNITS and numbers["k"] == K
    assert set(numbers["importance"]["top_units"]) == set(tiny_data(repo_root).class_names)
    assert len(numbers["ablation"]["per_class"]) == 10
    assert set(numbers["ablation"]["rankings"]) == {"importance", "abs_weight", "mean_code", "signed"}
    assert numbers["ablation"]["decoder_side"] is None  # no pixel probe given
    assert "Rankings side by side" in markdown and "Decoder-side" not in markdown
    assert 0 < numbers["probe"]["accuracy"] <= 1 and numbers["reconstruction"]["mse_per_pixel"] > 0
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging folder left behind


def test_a_failing_study_leaves_the_previous_report_untouched(runs, repo_root, tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("old report")
    (out / REPORT_MARKER).write_text("")  # an earlier report (only those are ever replaced)
    import analysis.ksparse.figures as figures

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "ablation_figure", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        study(repo_root, runs, out).run()
    assert (out / "report.md").read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_bad_artifacts_are_user_errors_and_write_nothing(runs, repo_root, tmp_path):
    ksae, probe = runs
    out = tmp_path / "report"
    with pytest.raises(UserError, match="has no encoder.pth"):
        study(repo_root, (tmp_path, probe), out).run()
    with pytest.raises(UserError, match="has no classifier.pth"):
        study(repo_root, (ksae, tmp_path), out).run()
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    torch.save(torch.nn.Linear(64, 10).state_dict(), wrong / "classifier.pth")
    with pytest.raises(UserError, match="classifies 64 features but the codes have 128"):
        study(repo_root, (ksae, wrong), out).run()
    with pytest.raises(UserError, match="larger than the code size"):
        study(repo_root, runs, out, top_units=500).run()
    assert not out.exists()


def test_the_study_reads_codes_with_the_probes_encode_k(runs, repo_root, tmp_path):
    """A probe trained with ``encode_k`` (its run's config.yaml) is read with codes of that many units;
    reconstructions and dead units keep the autoencoder's own k."""
    import shutil

    probe = tmp_path / "probe"
    shutil.copytree(runs[1], probe)
    (probe / "config.yaml").write_text("model:\n  init_args:\n    encode_k: 36\n")
    model = load_probed_autoencoder(runs[0], probe, input_dim=784)
    assert (model.k, model.probe_k) == (K, 36)
    images, _ = tiny_data(repo_root).split("test")
    x = tiny_data(repo_root).transform(images[:256])
    assert (model.codes(x) > 0).sum(1).max() > K and (model.codes(x, k=K) > 0).sum(1).max() <= K
    numbers = json.loads((study(repo_root, (runs[0], probe), tmp_path / "report").run() / "results.json").read_text())
    assert (numbers["k"], numbers["probe_k"]) == (K, 36)
    assert numbers["reconstruction"]["mean_active_per_image"] <= K
    (probe / "config.yaml").write_text("model:\n  init_args:\n    encode_k: 500\n")
    with pytest.raises(UserError, match="encode_k=500 must be between 1 and the encoder's 128 units"):
        load_probed_autoencoder(runs[0], probe)
    (probe / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="is not valid YAML"):
        load_probed_autoencoder(runs[0], probe)


def test_artifacts_load_with_weights_only(runs):
    for path in (runs[0] / "encoder.pth", runs[0] / "decoder.pth", runs[1] / "classifier.pth"):
        assert all(isinstance(v, torch.Tensor) for v in torch.load(path, weights_only=True).values())


def test_figures_go_to_wandb_offline(runs, repo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = study(repo_root, runs, tmp_path / "report", wandb=WandbOptions(enabled=True, mode="offline")).run()
    logged = list((out.parent / "wandb").glob("**/offline-run-*/files/media/images/figures/*.png"))
    assert len(logged) == 6


def test_analyze_entry_point_with_a_missing_run_is_one_line(repo_root, tmp_path):
    args = [sys.executable, "analyze.py", "--config", "configs/fashion_mnist/analysis.yaml",
            "--analysis.init_args.inputs.ksae_run", str(tmp_path / "none"),
            "--analysis.init_args.output_dir", str(tmp_path / "report")]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ") and not (tmp_path / "report").exists()


def test_the_report_judges_the_ablation_with_the_pixel_probe(runs, pixel_run, repo_root, tmp_path):
    out = study(repo_root, runs, tmp_path / "report", pixel_probe_run=str(pixel_run)).run()
    numbers = json.loads((out / "results.json").read_text())
    decoder_side = numbers["ablation"]["decoder_side"]
    assert decoder_side["judge"] == "raw-pixel probe" and len(decoder_side["per_class"]) == 10
    summary = decoder_side["summary"]
    assert summary["top_class_accuracy_drop_mean"] > summary["random_class_accuracy_drop_mean"]
    assert "Decoder-side ablation" in (out / "report.md").read_text()
    assert numbers["probe"]["pixel_baseline_accuracy"] == 0.8


@pytest.mark.parametrize("config", [None, "model:\n  init_args:\n    lr: 0.1\n", "trainer: {}\n"])
def test_an_unreadable_probe_config_stops_the_study_with_one_line(runs, repo_root, tmp_path, config):
    """No silent fallback to the autoencoder's k: without the probe's encode_k the study stops."""
    import shutil

    probe = tmp_path / "probe"
    shutil.copytree(runs[1], probe)
    if config is None:
        (probe / "config.yaml").unlink()
    else:
        (probe / "config.yaml").write_text(config)
    with pytest.raises(UserError) as error:
        study(repo_root, (runs[0], probe), tmp_path / "report").run()
    assert "\n" not in str(error.value) and "config.yaml" in str(error.value)
    assert ("cannot read" if config is None else "has no model.init_args.encode_k") in str(error.value)
    assert not (tmp_path / "report").exists()


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_the_results_sections_are_generated_from_a_fixture_of_runs(tmp_path):
    """Seeds → mean ± sample std; the sweep's chosen row is the validation-best eligible one even
    when another row is better on test; figures are published through the given callback."""
    from scripts.results_ksparse import ksparse_sections

    runs = tmp_path / "runs"
    for seed, (mse, never, rare, acc, val, alphak) in enumerate([(0.0044, 0, 3, 0.876, 0.880, 0.883),
                                                               (0.0046, 2, 5, 0.880, 0.884, 0.885)]):
        _write(runs / "fashion_mnist_ksae" / f"seed{seed}" / "results.json", {"test": {"test/loss": mse}})
        _write(runs / "fashion_mnist_ksae" / f"seed{seed}" / "firing.json",
               {"images": 100, "n_units": 4, "rare_threshold": 10, "never_fire": never,
                "fire_on_fewer_than_10": rare, "fires_on": [0, 5, 50, 100]})
        for name, value in (("fashion_mnist_probe", acc), ("fashion_mnist_probe_alphak", alphak)):
            _write(runs / name / f"seed{seed}" / "results.json", {"test": {"test/acc": value}})
            _write(runs / name / f"seed{seed}" / "metrics.csv", f"epoch,val/acc\n0,0.5\n1,{val}\n2,0.7\n")
    row = dict(val_rare_units=0, test_dead_units=0, test_rare_units=0, probe_val_acc=0.88, probe_acc=0.87, fit_s=1)
    _write(runs / "bench_ksae" / "epochs30.json", {"ablation": [
        {"row": "dead-heavy", "val_mse": 0.0040, "val_dead_units": 50, "test_mse": 0.0040, **row},
        {"row": "val-best", "val_mse": 0.0045, "val_dead_units": 0, "test_mse": 0.0047, **row},
        {"row": "test-best", "val_mse": 0.0046, "val_dead_units": 0, "test_mse": 0.0044, **row}]})
    published = []
    sections = dict(ksparse_sections(runs, lambda source, name: published.append(name) or f"figures/{name}"))
    headline = sections["k-sparse autoencoder: headline over seeds"]
    assert "**87.80 ± 0.28**" in headline  # mean and sample std of 87.6 and 88.0
    assert "88.20 ± 0.28" in headline  # best validation accuracy, from metrics.csv
    assert "0.00450 ± 0.00014" in headline and "1.0 ± 1.4" in headline
    assert "not met by the mean" in headline
    assert "+0.60 ± 0.14 points" in headline and "no difference" not in headline  # 0.7 and 0.5 points
    assert published == ["ksparse_firing.png"] and "figures/ksparse_firing.png" in headline
    sweep = sections["k-sparse: dead-unit cures and k schedule, chosen on validation"]
    chosen = [line for line in sweep.splitlines() if line.endswith("✓ |")]
    assert len(chosen) == 1 and "val-best" in chosen[0]
    # no seed runs: the section says which command makes them
    empty = dict(ksparse_sections(tmp_path / "none", lambda s, n: n))
    assert "scripts/ksparse_seeds.py" in empty["k-sparse autoencoder: headline over seeds"]
