"""Linear probe on the frozen k-sparse codes vs ``encode_k`` and solver, chosen on validation.

    python benchmarks/bench_probe_k.py                          # k' = 50 100 150 250 1024, L-BFGS
    python benchmarks/bench_probe_k.py --ks 50 --solvers lbfgs adam   # the two solvers side by side
    python benchmarks/bench_probe_k.py --encoder runs/fashion_mnist_ksae/main/encoder.pth --quick
    python benchmarks/bench_probe_k.py --ks 50 --solvers adam --pixels --adam 256:1e-3 1024:2e-3  # batch:lr

Makhzani & Frey (2013, Algorithm 1) train with the top k units and encode for classification with
the top αk (α ≥ 1). Each row fits ``LinearProbe`` with the options of ``configs/fashion_mnist/
probe.yaml`` (L-BFGS: one epoch per L2 weight of its grid; Adam: up to ``trainer.max_epochs``
epochs with early stopping on validation accuracy), keeps the epoch best on validation and tests
it once. The choice of ``encode_k`` (per solver) is made on the validation column and marked; the
test column is for information. ``--adam B:LR ...`` fits Adam once per batch size and learning
rate instead of probe.yaml's; the choice is then made per feature set among those pairs (ties: the
faster fit). Fit times are wall seconds of ``trainer.fit`` on features already extracted, rows run
one after the other in this process: on a shared machine they move with its load (the load
average is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint  # noqa: E402

from common.hardware import detect  # noqa: E402
from common.io import atomic_write_json, atomic_write_text  # noqa: E402
from datamodules.fashion_mnist import FashionMNISTDataModule  # noqa: E402
from datamodules.feature_data import FeatureData  # noqa: E402
from lightning_modules.linear_probe import LBFGSOptions, LinearProbe  # noqa: E402


def probe_config() -> dict:
    """The model and trainer options of configs/fashion_mnist/probe.yaml."""
    config = yaml.safe_load((ROOT / "configs/fashion_mnist/probe.yaml").read_text())
    model = dict(config["model"]["init_args"])
    early = next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("EarlyStopping"))
    return {"model": model, "max_epochs": config["trainer"]["max_epochs"], "patience": early["patience"],
            "batch_size": config["data"]["init_args"]["batch_size"]}


def fit_probe(encoder: str | None, encode_k: int | None, solver: str, args: argparse.Namespace,
              adam: tuple[int, float] | None = None) -> dict:
    """Fit one probe as probe.yaml does (Adam at ``adam`` = (batch, lr) if given); returns its
    validation choice, test accuracy and fit time."""
    config = probe_config()
    if adam is not None:
        config["batch_size"], config["model"]["lr"] = adam
    options = {k: v for k, v in config["model"].items() if k not in ("encoder_path", "encode_k", "solver", "lbfgs")}
    lbfgs = LBFGSOptions(**{**(config["model"].get("lbfgs") or {})})
    if lbfgs.l2_grid is not None:
        lbfgs.l2_grid = tuple(lbfgs.l2_grid)
    L.seed_everything(0, workers=True, verbose=False)
    probe = LinearProbe(encoder_path=encoder, encode_k=encode_k, solver=solver, lbfgs=lbfgs, **options)
    images = FashionMNISTDataModule(data_dir=args.data_dir, val_size=5000, seed=0, train_subset=args.train_subset)
    data = FeatureData(images, batch_size=config["batch_size"], seed=0)
    data.prepare_data()
    data.setup("fit")
    data.set_featurizer(probe.featurize, full_batch=solver == "lbfgs")
    for split in ("train", "val", "test"):
        data.features(split)  # extracted before the clock starts
    max_epochs = min(config["max_epochs"], args.max_epochs or config["max_epochs"])
    if solver == "lbfgs":
        max_epochs = max(max_epochs, len(lbfgs.l2_grid))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = ModelCheckpoint(dirpath=folder, monitor="val/acc", mode="max")
        callbacks = [checkpoint] + ([EarlyStopping("val/acc", mode="max", patience=config["patience"])]
                                    if solver == "adam" else [])
        trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                            num_sanity_val_steps=0)
        start = time.perf_counter()
        trainer.fit(probe, datamodule=data)
        fit_s = time.perf_counter() - start
        best_epoch = int(Path(checkpoint.best_model_path).stem.split("epoch=")[1].split("-")[0])
        test = trainer.test(probe, datamodule=data, ckpt_path="best", verbose=False)[0]
    return {"encode_k": encode_k, "solver": solver, "val_acc": float(checkpoint.best_model_score),
            "test_acc": float(test["test/acc"]), "l2": float(test["test/l2"]), "best_epoch": best_epoch,
            "epochs": trainer.current_epoch, "fit_s": fit_s, "batch_size": config["batch_size"],
            "lr": float(config["model"]["lr"]) if solver == "adam" else None}


def choose(rows: list[dict]) -> dict:
    """The row best on validation; ties go to the sparser code (smaller encode_k), then the faster fit."""
    return max(rows, key=lambda r: (r["val_acc"], -(r["encode_k"] if isinstance(r["encode_k"], int) else 0),
                                    -r["fit_s"]))


def adam_pair(text: str) -> tuple[int, float]:
    """'1024:2e-3' → (1024, 0.002)."""
    try:
        batch, lr = text.split(":")
        return int(batch), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not BATCH:LR (e.g. 1024:2e-3)") from None


def markdown(results: dict) -> str:
    lines = [f"encoder {results['encoder']}; {results['settings']}; torch threads {results['threads']}, "
             f"load average {results['load_average']} (shared machine: fit times move with its load)", "",
             "| encode_k | solver | batch, lr | val acc % (choice) | test acc % | L2 weight | best epoch / epochs "
             "| fit s |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        mark = "**" if r.get("chosen") else ""
        k = "encoder's k" if r["encode_k"] is None else r["encode_k"]
        lines.append(f"| {mark}{k}{mark} | {r['solver']} | {optimiser(r)} | {mark}{100 * r['val_acc']:.2f}{mark} | "
                     f"{100 * r['test_acc']:.2f} | {r['l2']:.0e} | {r['best_epoch'] + 1} / {r['epochs']} | "
                     f"{r['fit_s']:.1f} |")
    lines += ["", "Bold: chosen on validation for each solver (with --adam: for each feature set)."]
    return "\n".join(lines) + "\n"


def optimiser(row: dict) -> str:
    """'1024, 0.002' for an Adam row, 'full batch' for L-BFGS, '' for Adam rows of older files."""
    if row.get("lr") is not None:
        return f"{row['batch_size']}, {row['lr']:g}"
    return "full batch" if row["solver"] == "lbfgs" else ""


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default=str(ROOT / "runs/fashion_mnist_ksae/main/encoder.pth"),
                   help="encoder.pth (or a KSparseAutoencoder .ckpt) to probe")
    p.add_argument("--ks", type=int, nargs="*", default=[50, 100, 150, 250, 1024], help="values of encode_k")
    p.add_argument("--solvers", nargs="*", default=["lbfgs"], choices=["lbfgs", "adam"])
    p.add_argument("--pixels", action="store_true", help="also probe raw pixels (the baseline)")
    p.add_argument("--adam", type=adam_pair, nargs="*", default=None, metavar="BATCH:LR",
                   help="Adam batch sizes and learning rates to compare (default: probe.yaml's one pair)")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images")
    p.add_argument("--max-epochs", type=int, default=None, help="cap on Adam's epochs (default: probe.yaml's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_probe_k"), help="folder for the results")
    p.add_argument("--quick", action="store_true", help="2,048 training images, Adam 2 epochs (a smoke test)")
    args = p.parse_args(argv)
    print(detect().line(), flush=True)
    if args.quick:
        args.train_subset, args.max_epochs = args.train_subset or 2048, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = Path(args.encoder)
    if not encoder.is_file():
        sys.exit(f"error: encoder '{encoder}' does not exist; train it: "
                 f"python train.py --config configs/fashion_mnist/ksae.yaml")
    results = {"encoder": str(encoder), "threads": torch.get_num_threads(), "rows": [],
               "settings": f"train_subset={args.train_subset}" + (", quick" if args.quick else "")}
    out = Path(args.out)
    stem = "quick" if args.quick else "probe_k"
    def save() -> None:
        results["load_average"] = load_average()
        atomic_write_json(out / f"{stem}.json", results)
        atomic_write_text(out / f"{stem}.md", markdown(results))

    def record(group: list[dict] | None, r: dict, label: str) -> None:
        """Add a fitted row; within ``group`` (rows compared with each other) mark the validation choice."""
        print(f"{label}: val {100 * r['val_acc']:.2f}%, test {100 * r['test_acc']:.2f}%, L2 {r['l2']:.0e}, "
              f"fit {r['fit_s']:.1f} s", flush=True)
        results["rows"].append(r)  # the same dict: the marks below show in it
        if group is not None:
            group.append(r)
            for row in group:
                row["chosen"] = False
            choose(group)["chosen"] = True
        save()

    if args.adam:
        if args.solvers != ["adam"]:
            sys.exit("error: --adam compares Adam settings; pass --solvers adam with it")
        for k in args.ks + (["pixels"] if args.pixels else []):
            group: list[dict] = []
            encode = (None, None) if k == "pixels" else (str(encoder), k)
            for pair in args.adam:
                record(group, {**fit_probe(*encode, "adam", args, adam=pair), "encode_k": k}, f"{k}, adam {pair}")
    else:
        for solver in args.solvers:
            group = []
            for k in args.ks:
                record(group, fit_probe(str(encoder), k, solver, args), f"encode_k {k}, {solver}")
            if args.pixels:
                record(None, {**fit_probe(None, None, solver, args), "encode_k": "pixels"}, f"pixels, {solver}")
    print(markdown(results))
    print(f"written to {out / stem}.json / .md")
    return results


if __name__ == "__main__":
    main()
