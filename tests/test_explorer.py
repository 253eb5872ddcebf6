"""The concept explorer: records against hand-computed values, the site built from a tiny real run
(train.py) and opened in headless Chromium (sort, filter, latent page, images, next/back, no console
error), the k-sparse explorer, and bad input (one line, exit 2, nothing half-written)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from analysis.explorer import records as R
from analysis.explorer.browser import CHROMIUM, Browser
from common.errors import run_cli
from datamodules.batch_transform import BatchTransform
from datamodules.image_datamodule import ImageDataModule
from helpers.cifar100_fixture import class_images
from helpers.tiny_images import save_random_backbone

N_LATENTS, K = 32, 4


# ----- records against a hand-computed example ---------------------------------------------------------
def hand_codes() -> dict[str, torch.Tensor]:
    """6 images, 3 latents, 2 models. Latent 0 fires in both (rows 0, 1 in a; 0, 2 in b), latent 1 only
    in a (rows 3, 4, 5), latent 2 never."""
    a = torch.tensor([[0.9, 0, 0], [0.5, 0, 0], [0, 0, 0], [0, 0.2, 0], [0, 0.7, 0], [0, 0.4, 0]])
    b = torch.tensor([[0.3, 0, 0], [0, 0, 0], [0.8, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    return {"a": a, "b": b}


def test_records_match_a_hand_computed_example():
    codes = hand_codes()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    dicts = {"a": torch.eye(3, 4), "b": torch.eye(3, 4)}
    rec = R.usae_records(codes, labels, 3, dicts, 0.0, 0.2, 0.8, 1, 2, 4, 1)
    # entropy: latent 0 fires 2 and 2 times -> H = 1; latent 1 only in a -> H = 0; latent 2 dead
    assert rec.entropy[0] == pytest.approx(1.0) and rec.entropy[1] == pytest.approx(0.0)
    assert bool(rec.dead[2]) and math.isnan(rec.entropy[2])
    assert list(rec.tag) == ["universal", "specific:a", "dead"]
    assert rec.alive.tolist() == [0, 1]
    # top images, best first; a slot where the latent does not fire is -1
    assert rec.models["a"].top_rows[0].tolist() == [0, 1]
    assert rec.models["a"].top_codes[0].tolist() == pytest.approx([0.9, 0.5])
    assert rec.models["b"].top_rows[0].tolist() == [2, 0]
    assert rec.models["a"].top_rows[1].tolist() == [4, 5]
    assert rec.models["b"].top_rows[1].tolist() == [-1, -1]
    # classes of firings: latent 0 fires on rows 0,1 (class 0) in a, rows 0 (class 0), 2 (class 1) in b
    assert rec.models["a"].classes[0].tolist() == [2, 0, 0]
    assert rec.models["b"].classes[0].tolist() == [1, 1, 0]
    assert rec.dominant[0] == 0 and rec.purity[0] == pytest.approx(3 / 4)
    assert rec.dominant[1] == 2 and rec.purity[1] == pytest.approx(2 / 3)
    # co-firing IoU of latent 0: both on row 0, either on rows 0, 1, 2
    assert rec.iou["a|b"][0] == pytest.approx(1 / 3) and rec.iou_all[0] == pytest.approx(1 / 3)
    # histograms over (0, max] in 4 bins; latent 0's max is 0.9 (over both models)
    assert rec.hist_upper[0] == pytest.approx(0.9)
    assert rec.models["a"].hist[0].tolist() == [0, 0, 1, 1]  # 0.5 -> bin 2, 0.9 -> bin 3
    assert rec.models["b"].hist[0].tolist() == [0, 1, 0, 1]  # 0.3 -> bin 1, 0.8 -> bin 3
    # same-index Pearson r of latent 0 across models, by numpy
    assert rec.same_index["a|b"][0] == pytest.approx(np.corrcoef(codes["a"][:, 0], codes["b"][:, 0])[0, 1])
    assert math.isnan(rec.same_index["a|b"][1])  # never fires in b
    assert rec.decoder_cos["a|b"][:2].tolist() == pytest.approx([1.0, 1.0])
    assert rec.models["a"].mean_code[0] == pytest.approx(0.7)


def test_best_match_and_similarity_agree_with_dense_computations():
    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(200, 12, generator=g) - 0.8)
    b = torch.cat([a[:, [5, 2]] * 2 + 0.01 * torch.relu(torch.randn(200, 2, generator=g)),
                   torch.relu(torch.randn(200, 10, generator=g) - 0.8)], 1)
    ok = np.ones(12, bool)
    best, r = R.best_match(R.to_csr(a), R.to_csr(b), ok, ok)
    dense = np.corrcoef(a.T.numpy(), b.T.numpy())[:12, 12:]
    assert best.tolist() == dense.argmax(1).tolist()
    assert r == pytest.approx(dense.max(1), abs=1e-9)
    assert best[5] == 0 and best[2] == 1 and r[5] > 0.99
    from analysis.universality.correlation import pearson_columns
    from metrics.universality import CoFiring, FiringEntropy

    assert R.same_index_r(R.to_csr(a), R.to_csr(b), ok) == pytest.approx(pearson_columns(a, b), abs=1e-9)
    rec = R.usae_records({"a": a, "b": b}, torch.zeros(200, dtype=torch.long), 1,
                         {"a": torch.randn(12, 3, generator=g), "b": torch.randn(12, 5, generator=g)},
                         0.0, 0.2, 0.8, 1, 3, 4, 2)
    cof, ent = CoFiring(12, 2), FiringEntropy(12, 2)
    cof.update([a, b])
    ent.update([a, b])
    assert rec.iou_all == pytest.approx(cof.compute()["iou"].numpy(), nan_ok=True)
    assert rec.entropy == pytest.approx(ent.compute()["entropy"].numpy(), nan_ok=True)
    assert rec.decoder_cos["a|b"] is None  # 3-d and 5-d atoms are never compared
    fires = R.fires_matrix(R.to_csr(a), 0.0)
    ids, jac = R.similar_by_coactivation(fires, 2, np.arange(12))
    f = (a > 0).numpy()
    inter = f.T.astype(int) @ f.astype(int)
    union = f.sum(0)[:, None] + f.sum(0)[None, :] - inter
    expected = inter / union
    np.fill_diagonal(expected, -1)
    assert jac[:, 0] == pytest.approx(expected.max(1))


class ExplorerImages(ImageDataModule):
    """Separable synthetic 16×16 colour images of 4 classes, shown to the backbones at 32×32. (Options
    are plain attributes: under LightningCLI a nested datamodule's ``save_hyperparameters`` gets the
    outer one's.)"""

    num_classes = 4
    class_names = ("c0", "c1", "c2", "c3")

    def __init__(self, n_train: int = 96, n_test: int = 48, val_size: int = 16, seed: int = 0) -> None:
        super().__init__(32, val_size, None, seed, BatchTransform(32, 3, [0.5] * 3, [0.25] * 3, False, 0.0))
        self.n_train, self.n_test = n_train, n_test

    def load_split_tensors(self, train: bool):
        n = self.n_train if train else self.n_test
        rng = np.random.default_rng(int(train))
        labels = np.arange(n) % 4
        rng.shuffle(labels)
        return torch.from_numpy(class_images(labels, rng, 16)), torch.from_numpy(labels).long()


# ----- a tiny real run: two random CNNs, their cache, a USAE and independent SAEs (train.py) -----------
def _data(tmp: Path, archs: dict[str, str]) -> dict:
    specs = []
    for seed, (name, arch) in enumerate(archs.items()):
        path = save_random_backbone(tmp / "backbones" / f"{name}_{arch}.pth", arch, 4, seed=seed)
        specs.append({"name": name, "arch": arch, "checkpoint": str(path)})
    return {"class_path": "datamodules.activations.ActivationDataModule",
            "init_args": {"backbones": specs, "cache_dir": str(tmp / "cache"), "batch_size": 32,
                          "extract_batch_size": 64, "progress": False, "device": "cpu",
                          "images": {"class_path": "test_explorer.ExplorerImages", "init_args": {}}}}


def _train(root: Path, name: str, cls: str, data: dict) -> Path:
    import train

    model = {"class_path": cls, "init_args": {"feature_dims": {"r18": 512, "mb": 1024}, "lr": 1e-2,
                                               "sae": {"n_latents": N_LATENTS, "k": K, "pre_bias": True,
                                                       "select_dtype": "float32"}}}
    config = {"seed_everything": 0,
              "run": {"root": str(root), "name": name, "version": "main", "test_after_fit": False},
              "model": model, "data": data,
              "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 3, "enable_progress_bar": False,
                          "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
                          "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"save_last": True}}]}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    train.main(["--config", str(path)])
    return root / name / "main"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("explorer_runs")
    data = _data(root, {"r18": "resnet18", "mb": "mobilenet_v3_small"})
    usae = _train(root, "usae", "lightning_modules.universal_sae.UniversalSAE", data)
    indep = _train(root, "independent", "lightning_modules.independent_saes.IndependentSAEs", data)
    return {"usae": usae, "independent": indep, "root": root, "data": data}


def explorer_args(runs: dict, out: Path, *extra: str) -> list[str]:
    return ["--analysis", "analysis.explorer.study.ConceptExplorer",
            "--analysis.init_args.inputs.usae_checkpoint", str(runs["usae"] / "checkpoints" / "last.ckpt"),
            "--analysis.init_args.inputs.independent_checkpoint", str(runs["independent"] / "checkpoints" / "last.ckpt"),
            "--analysis.init_args.inputs.train_config", str(runs["usae"] / "config.yaml"),
            "--analysis.init_args.output_dir", str(out), "--analysis.init_args.firing.min_activations", "2",
            "--analysis.init_args.page.n_top_images", "4", "--analysis.init_args.inputs.device", "cpu", *extra]


@pytest.fixture(scope="module")
def site(runs, tmp_path_factory):
    import analyze

    out = tmp_path_factory.mktemp("explorer_site") / "explorer"
    analyze.main(explorer_args(runs, out, "--analysis.init_args.act_max.budget", "1",
                               "--analysis.init_args.act_max.settings.steps", "3",
                               "--analysis.init_args.act_max.settings.batch_size", "4"))
    return out


def test_site_files_and_records(site):
    data = json.loads((site / "latents.json").read_text())
    meta, rows = data["meta"], data["rows"]
    assert meta["n_latents"] == N_LATENTS and meta["n_images"] == 48 and sorted(meta["models"]) == ["mb", "r18"]
    keys = [c["key"] for c in meta["columns"]]
    assert {"H", "rate:r18", "rate:mb", "r:" + "|".join(meta["models"]), "match:r18", "iou", "dominant", "purity"} <= set(keys)
    assert rows and len(rows) == len(data["records"]) <= N_LATENTS
    ids = [r[0] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    first = data["records"][str(ids[0])]
    assert [m["name"] for m in first["models"]] == meta["models"]
    for m in first["models"]:
        assert len(m["top"]) <= 4 and sum(m["hist"]["counts"]) == m["hist"]["total"] == sum(m["classes"])
    pictures = [p for rec in data["records"].values() for m in rec["models"] for p in m["pictures"] if p.get("ref")]
    assert len(pictures) == 2  # budget 1: one latent, both backbones
    assert all((site / "sprites" / f).is_file() for b in meta["books"].values() for f in b["files"])
    assert (site / "data" / "index.js").read_text().startswith("window.EXPLORER_INDEX = ")
    assert not [p for p in site.parent.glob(".explorer.*")]
    build = json.loads((site / "build.json").read_text())
    assert build["codes"] == "encoded" and build["latents"] == len(rows)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium (scripts/setup.sh installs it)")
def test_site_in_headless_chromium(site, tmp_path):
    rows = json.loads((site / "latents.json").read_text())["rows"]
    ids = sorted(r[0] for r in rows)
    with Browser(tmp_path / "profile") as b:
        b.open((site / "index.html").as_uri())
        assert float(b.eval("document.body.getAttribute('data-ready-ms')")) > 0
        assert b.eval("document.querySelectorAll('#table tbody tr').length") == len(rows)
        # sort by latent id (ascending), then descending
        b.eval("document.querySelector('th[data-key=id]').click()")
        assert b.eval("[...document.querySelectorAll('#table tbody tr')].map(r => +r.dataset.id)") == ids
        b.eval("document.querySelector('th[data-key=id]').click()")
        assert b.eval("+document.querySelector('#table tbody tr').dataset.id") == ids[-1]
        # filter: id search, then entropy range
        b.eval(f"const s = document.getElementById('f-search'); s.value = '{ids[1]}';"
               "s.dispatchEvent(new Event('input'))")
        shown = b.eval("[...document.querySelectorAll('#table tbody tr')].map(r => r.dataset.id)")
        assert str(ids[1]) in shown and all(str(ids[1]) in s for s in shown)
        b.eval("document.getElementById('f-reset').click();"
               "const m = document.getElementById('f-min'); m.value = '0.9'; m.dispatchEvent(new Event('input'))")
        h_col = [c["key"] for c in json.loads((site / "latents.json").read_text())["meta"]["columns"]].index("H")
        expected = sum(1 for r in rows if r[h_col] is not None and r[h_col] >= 0.9)
        assert b.eval("+document.body.dataset.matches") == expected
        b.eval("document.getElementById('f-reset').click()")
        # open a latent page by its link; its images load
        b.navigate_by(f"document.querySelector('a[href=\"latent.html#{ids[0]}\"]').click()")
        b.wait("window.explorerReady && document.querySelectorAll('.model').length == 2")
        assert b.eval("document.querySelector('h1').textContent").startswith(f"USAE: latent {ids[0]}")
        b.wait("[...document.images].every(i => i.complete)")
        assert b.eval("document.images.length") > 2
        assert b.eval("[...document.images].filter(i => i.naturalWidth > 0).length") == b.eval("document.images.length")
        # next, then back to the index
        b.eval("window.explorerReady = false; document.getElementById('next').click()")
        b.wait("window.explorerReady")
        assert b.eval("document.querySelector('h1').textContent").startswith(f"USAE: latent {ids[1]}")
        b.navigate_by("document.getElementById('back').click()")
        b.wait("window.explorerReady")
        assert b.eval("document.querySelectorAll('#table tbody tr').length") == len(rows)
        assert b.errors == []


def test_reuses_the_report_codes_when_they_match(runs, tmp_path):
    """The report's codes file is used when it is from the same checkpoint, and ignored otherwise."""
    import analyze
    from analysis.universality.codes import extract_codes
    from analysis.universality.codes_file import save_sparse_codes
    from analysis.universality import inputs

    report = tmp_path / "universality_report"
    report.mkdir()
    (report / "report.json").write_text("{}")
    ckpt = runs["usae"] / "checkpoints" / "last.ckpt"
    dm = inputs.build_datamodule(None, str(runs["usae"] / "config.yaml"))
    split = inputs.load_split(dm, "test")
    codes = extract_codes(inputs.load_system(ckpt, "usae"), split.features, 64)
    save_sparse_codes(report / "codes_usae.npz", codes, ckpt, "test")
    # the report's activation-maximisation images of one latent, as UniversalityStudy saves them
    alive = int(torch.nonzero((codes.codes[codes.names[0]] > 0).any(0))[0])
    np.savez_compressed(report / "act_max_images.npz", latents=np.array([alive]),
                        **{m: np.full((1, 3, 32, 32), 0.5, np.float32) for m in codes.names})
    (report / "report.json").write_text(json.dumps({"config": {"act_max": {"method": "accentuation"}},
                                                    "visualised": {"activation_max": {
        m: [{"latent": alive, "start": 0.1, "final": 2.5}] for m in codes.names}}}))
    out = tmp_path / "explorer"
    analyze.main(explorer_args(runs, out, "--analysis.init_args.report_dir", str(report)))
    build = json.loads((out / "build.json").read_text())
    assert build["codes"] == "reused from the report"
    first = json.loads((out / "latents.json").read_text())
    pictures = {k: [p for m in r["models"] for p in m["pictures"] if p.get("ref")] for k, r in first["records"].items()}
    assert [k for k, p in pictures.items() if p] == [str(alive)]
    assert all("0.10 → 2.50 (report, accentuation)" in p["caption"] for p in pictures[str(alive)])
    assert len(pictures[str(alive)]) == 2
    save_sparse_codes(report / "codes_usae.npz", codes, runs["independent"] / "checkpoints" / "last.ckpt", "test")
    analyze.main(explorer_args(runs, out, "--analysis.init_args.report_dir", str(report)))
    assert json.loads((out / "build.json").read_text())["codes"] == "encoded"
    assert json.loads((out / "latents.json").read_text())["rows"] == first["rows"]


# ----- bad input: one line, exit 2, nothing written ---------------------------------------------------------
def _mismatched_config(runs: dict, tmp: Path) -> Path:
    """A training config whose cache has the same backbone names but other networks (other dims)."""
    config = yaml.safe_load((runs["usae"] / "config.yaml").read_text())
    config["data"] = _data(tmp, {"r18": "mobilenet_v3_small", "mb": "resnet18"})
    path = tmp / "other_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("case", ["no_checkpoint", "no_report", "other_cache", "latent_out_of_range"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, case):
    import analyze

    out = tmp_path / "explorer"
    extra = {
        "no_checkpoint": ["--analysis.init_args.inputs.usae_checkpoint", str(tmp_path / "missing" / "last.ckpt")],
        "no_report": ["--analysis.init_args.report_dir", str(tmp_path)],
        "other_cache": ["--analysis.init_args.inputs.train_config", str(_mismatched_config(runs, tmp_path))]
        if case == "other_cache" else [],
        "latent_out_of_range": ["--analysis.init_args.latents", f"[0, {N_LATENTS}]"],
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: analyze.main(explorer_args(runs, out, *extra)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert {"no_checkpoint": "does not exist", "no_report": "report.json", "other_cache": "activation cache",
            "latent_out_of_range": str(N_LATENTS)}[case] in err[0]
    assert not out.exists() and not [p for p in tmp_path.glob(".explorer*")]


def test_negative_act_max_budget_is_a_one_line_user_error():
    from analysis.explorer.study import ExplorerActMax
    from common.errors import UserError

    with pytest.raises(UserError, match=r"^act_max.budget=-1 must be at least 0$"):
        ExplorerActMax(budget=-1)


# ----- the k-sparse explorer ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ksparse_runs(tmp_path_factory, fashion_data_dir):
    """A tiny k-sparse AE (64 units) and a probe on its codes, trained without a Trainer."""
    import torch.nn.functional as F

    from components.sparse_coder import SparseCoder, SparseCoderConfig
    from datamodules.fashion_mnist import FashionMNISTDataModule

    torch.manual_seed(0)
    data = FashionMNISTDataModule(data_dir=str(fashion_data_dir), train_subset=2048, val_size=256)
    images, labels = data.split("train")
    x = data.transform(images).flatten(1)
    net = SparseCoder(784, SparseCoderConfig(n_latents=64, k=8, pre_bias=True, decoder_bias=True,
                                             sparse_max_density=1.0, select_dtype="float32"))
    net.init_pre_bias_(x.mean(0))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(2):
        for batch in x.split(256):
            loss = F.mse_loss(net(batch)[2], batch)
            optimizer.zero_grad()
            loss.backward()
            net.project_decoder_grad_()
            optimizer.step()
            net.normalize_decoder_()
    with torch.no_grad():
        codes = net.encode(x)[1]
    classifier = torch.nn.Linear(64, 10)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    for _ in range(40):
        loss = F.cross_entropy(classifier(codes), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    root = tmp_path_factory.mktemp("ksparse_runs")
    (root / "ksae").mkdir()
    (root / "probe").mkdir()
    torch.save(net.encoder.state_dict(), root / "ksae" / "encoder.pth")
    torch.save(net.decoder.state_dict(), root / "ksae" / "decoder.pth")
    torch.save(classifier.state_dict(), root / "probe" / "classifier.pth")
    (root / "probe" / "config.yaml").write_text("model:\n  init_args:\n    encode_k: null\n")  # as train.py writes it
    return {"ksae": root / "ksae", "probe": root / "probe", "data": data}


def test_single_unit_ablation_equals_zeroing_the_unit():
    from analysis.explorer.ksparse import single_unit_ablation
    from analysis.ksparse.ablation import ablate

    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(300, 16, generator=g) - 0.5)
    labels = torch.randint(0, 3, (300,), generator=g)
    classifier = torch.nn.Linear(16, 3)
    torch.nn.init.normal_(classifier.weight, generator=g)
    fast = single_unit_ablation(classifier, codes, labels)
    with torch.no_grad():
        base = (classifier(codes).argmax(1) == labels).double().mean().item()
        for unit in (0, 7, 15):
            for c in range(3):
                slow = ablate(classifier, codes, labels, torch.tensor([unit]), c)
                assert fast["logit_drop"][unit, c] == pytest.approx(slow["logit_drop"], abs=1e-5)
                class_base = (classifier(codes[labels == c]).argmax(1) == c).double().mean().item()
                assert fast["class_accuracy_change"][unit, c] == pytest.approx(slow["class_accuracy"] - class_base,
                                                                               abs=1e-9)
            assert fast["accuracy_change"][unit] == pytest.approx(slow["accuracy"] - base, abs=1e-9)


def test_ksparse_explorer_site_and_wandb_table(ksparse_runs, tmp_path, monkeypatch):
    from analysis.explorer.ksparse import KSparseExplorer
    from analysis.options import KSparseInputs, PageOptions
    from common.run_options import WandbOptions

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    out = tmp_path / "explorer"
    KSparseExplorer(KSparseInputs(ksparse_runs["data"], str(ksparse_runs["ksae"]), str(ksparse_runs["probe"])),
                    str(out), page=PageOptions(n_top_images=4, wandb_rows=5),
                    wandb=WandbOptions(enabled=True, mode="offline")).run()
    run_dir = list((tmp_path / "wandb").glob("**/offline-run-*"))
    assert len(run_dir) == 1
    tables = list(run_dir[0].glob("**/media/table/**/*.json"))
    assert len(tables) == 1 and len(json.loads(tables[0].read_text())["data"]) == 5
    staged = [p for p in (tmp_path / "wandb_data").rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x89PNG"]
    assert len(staged) == 10  # the artifact's table: atom and top image of each of the 5 rows
    data = json.loads((out / "latents.json").read_text())
    assert data["meta"]["n_latents"] == 64 and data["meta"]["kind"] == "ksparse"
    rec = data["records"][str(data["rows"][0][0])]
    assert len(rec["bars"][0]["values"]) == 10 and len(rec["tables"][0]["rows"]) == 10
    assert rec["models"][0]["pictures"][0]["ref"][0] == "atoms"
    if CHROMIUM.exists():
        with Browser(tmp_path / "profile") as b:
            b.open((out / "index.html").as_uri())
            first = b.eval("document.querySelector('#table tbody tr').dataset.id")
            b.navigate_by(f"document.querySelector('a[href=\"latent.html#{first}\"]').click()")
            b.wait("[...document.images].every(i => i.complete)")
            assert b.eval("[...document.images].filter(i => i.naturalWidth > 0).length") == \
                b.eval("document.images.length") > 1
            assert b.errors == []


def test_ksparse_explorer_bad_unit_and_missing_run(ksparse_runs, tmp_path):
    from analysis.explorer.ksparse import KSparseExplorer
    from analysis.options import KSparseInputs
    from common.errors import UserError

    out = tmp_path / "explorer"
    with pytest.raises(UserError, match="64"):
        KSparseExplorer(KSparseInputs(ksparse_runs["data"], str(ksparse_runs["ksae"]), str(ksparse_runs["probe"])),
                        str(out), units=[64]).run()
    with pytest.raises(UserError, match="encoder.pth"):
        KSparseExplorer(KSparseInputs(ksparse_runs["data"], str(tmp_path), str(ksparse_runs["probe"])), str(out)).run()
    assert not out.exists()
