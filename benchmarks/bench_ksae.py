"""Dead-unit ablation and training speed of the Fashion-MNIST k-sparse autoencoder.

    python benchmarks/bench_ksae.py                   # the full table: 30 epochs per row (~1 h on 2 cores)
    python benchmarks/bench_ksae.py --quick           # 2 epochs on 10,000 images per row (minutes)
    python benchmarks/bench_ksae.py --rows plain default --epochs 30
    python benchmarks/bench_ksae.py --speed-only      # only the sparse vs dense training-speed rows
    python benchmarks/bench_ksae.py --rows k_100_3 k_200_5 k_300_4 --no-speed   # the k-schedule sweep

(1) Ablation: the plain model (no cure), each cure alone,
and the default of ``configs/fashion_mnist/ksae.yaml``, on real Fashion-MNIST. Every row trains
through the same Lightning Trainer as ``train.py`` (validation each epoch, no checkpoint files, no
early stopping: exactly ``--epochs`` epochs), then reports on the validation split (5,000 images
held out of the training set; the columns every choice is made on) and, for information, on the
official 10k test images: MSE per pixel, dead units under both definitions (never fire; fire on
fewer than 10 images of the split), the accuracy of a linear probe on the k = 50 codes
(``LinearProbe`` + ``FeatureData``, Adam for a fixed ``--probe-epochs``), and the fit time. The
raw-pixel probe (row ``pixels``) is the baseline. The chosen row (marked) is the one with the
lowest validation MSE among the rows with at most 1% of units dead on validation (never fire).

(2) Speed: the default model trained ``--speed-epochs`` epochs three ways, one after the other: as
configured (sparse kernels, bfloat16 encoder matmul), with ``select_dtype: float32``, and through the
dense reference path (same math), reporting the fit wall time (train + validation + Lightning
overhead) and the projected time of 30 epochs.

Timings share the machine with whatever else runs; the load average is printed with the table.
Results are written to ``--out`` (JSON and Markdown) after every row. On a busy machine, rows can
run in parallel processes with one thread each (``--threads 1 --rows ... --tag a``): the quality
numbers do not depend on the thread count, the timings of such runs do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from common.io import atomic_write_json, atomic_write_text  # noqa: E402
from datamodules.fashion_mnist import FashionMNISTDataModule  # noqa: E402
from components.sparse_coder import SparseCoderConfig  # noqa: E402
from lightning_modules.ksparse_autoencoder import KSparseAutoencoder  # noqa: E402
from datamodules.feature_data import FeatureData  # noqa: E402
from lightning_modules.linear_probe import LinearProbe  # noqa: E402
from common.hardware import detect  # noqa: E402

RARE = 10  # "fires on fewer than RARE images of the split" is the second dead-unit definition
MAX_DEAD_FRACTION = 0.01  # rows above it on validation are not eligible for the choice

PLAIN = dict(unit_norm_decoder=False, tied_init=False, pre_bias=False, aux_k=0, k_start=None,
             k_anneal_epochs=0, revive_bias_step=0.0, lr=1e-3, lr_final_fraction=1.0, lr_decay_start=0.0)
GAO = dict(unit_norm_decoder=True, tied_init=True, pre_bias=True)  # Gao et al. 2024's recipe
CURES = {
    "+ unit-norm decoder": dict(unit_norm_decoder=True),
    "+ tied init": dict(tied_init=True),
    "+ pre-bias (data mean)": dict(pre_bias=True),
    "+ AuxK": dict(aux_k=392, dead_window=5000),
    "+ k schedule 100→50": dict(k_start=100, k_anneal_epochs=3),
    "+ revive bias": dict(revive_bias_step=1e-3, dead_window=1000),
    "+ lr 2e-3, decay": dict(lr=2e-3, lr_final_fraction=0.0, lr_decay_start=0.5),
}
# the k-schedule sweep (Makhzani & Frey's schedule): row k_<start>_<epochs> = the default, that schedule
K_SCHEDULES = [(100, 3), (200, 5), (200, 8), (200, 15), (300, 3), (300, 4), (300, 6), (400, 12), (500, 4)]
SWEEP_ROWS = {f"k_{start}_{epochs}": (start, epochs) for start, epochs in K_SCHEDULES}
ROW_KEYS = {"pixels": "raw-pixel probe (baseline)", "plain": "plain", "unit_norm": "+ unit-norm decoder",
            "tied": "+ tied init", "pre_bias": "+ pre-bias (data mean)", "auxk": "+ AuxK",
            "k_schedule": "+ k schedule 100→50", "revive": "+ revive bias", "lr": "+ lr 2e-3, decay",
            "gao": "unit-norm + tied + pre-bias", "gao_auxk": "unit-norm + tied + pre-bias + AuxK",
            "no_revive": "default without revive bias", "no_k_schedule": "default without k schedule",
            "no_lr": "default with constant lr 1e-3",
            **{key: f"default with k {start}→50 over {epochs} epochs"
               for key, (start, epochs) in SWEEP_ROWS.items()},
            "default": "default (ksae.yaml)"}
VARIANTS = {  # rows defined from the default: option → value
    "no_revive": dict(revive_bias_step=0.0),
    "no_k_schedule": dict(k_start=None, k_anneal_epochs=0),
    "no_lr": dict(lr=1e-3, lr_final_fraction=1.0),
    **{key: dict(k_start=start, k_anneal_epochs=epochs) for key, (start, epochs) in SWEEP_ROWS.items()},
}


SYSTEM_ARGS = ("input_dim", "lr", "lr_final_fraction", "lr_decay_start")


def default_model_args() -> dict:
    """The model options of configs/fashion_mnist/ksae.yaml (the chosen default), flattened: the
    system's arguments and the engine's (``sae``) options in one dict."""
    import yaml

    config = yaml.safe_load((ROOT / "configs/fashion_mnist/ksae.yaml").read_text())
    init = dict(config["model"]["init_args"])
    return {**init.pop("sae"), **init}


def build_model(options: dict) -> KSparseAutoencoder:
    """A ``KSparseAutoencoder`` from flattened options (``default_model_args`` layout)."""
    system = {k: v for k, v in options.items() if k in SYSTEM_ARGS}
    return KSparseAutoencoder(**system, sae=SparseCoderConfig(**{k: v for k, v in options.items()
                                                                 if k not in SYSTEM_ARGS}))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="training epochs per ablation row")
    p.add_argument("--quick", action="store_true", help="2 epochs on a 10,000-image subset")
    p.add_argument("--rows", nargs="*", default=[k for k in ROW_KEYS if k not in SWEEP_ROWS],
                   choices=list(ROW_KEYS),
                   help="ablation rows to run (default: all but the k-schedule sweep k_<start>_<epochs>)")
    p.add_argument("--probe-epochs", type=int, default=20, help="linear-probe epochs per row")
    p.add_argument("--speed-epochs", type=int, default=None,
                   help="epochs of the sparse-vs-dense speed rows (default: --epochs)")
    p.add_argument("--speed-only", action="store_true", help="skip the ablation table")
    p.add_argument("--no-speed", action="store_true", help="skip the speed rows")
    p.add_argument("--train-subset", type=int, default=None, help="train on this many images")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's choice, all cores); quality numbers do not depend on it")
    p.add_argument("--tag", default="", help="suffix of the result files (to run row subsets in parallel)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_ksae"), help="folder for the results")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.train_subset = args.train_subset or 10_000
        args.probe_epochs = min(args.probe_epochs, 5)
    args.speed_epochs = args.speed_epochs or args.epochs
    return args


class FitTimer(Callback):
    """Wall time of the whole fit and of the training part of each epoch (seconds)."""

    def __init__(self) -> None:
        self.fit_s, self.train_epoch_s, self._t0, self._epoch = 0.0, [], 0.0, 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.train_epoch_s.append(time.perf_counter() - self._epoch)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.fit_s = time.perf_counter() - self._t0


def trainer(epochs: int, callbacks: list[Callback]) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=callbacks, num_sanity_val_steps=0)


def images(args: argparse.Namespace) -> FashionMNISTDataModule:
    return FashionMNISTDataModule(data_dir=args.data_dir, batch_size=256, val_size=5000,
                                  train_subset=args.train_subset, seed=0)


@torch.no_grad()
def firing_counts(model: KSparseAutoencoder, data: FashionMNISTDataModule, split: str) -> torch.Tensor:
    """Images of ``split`` each unit fires on (n_units,), with the model's own k."""
    images, _ = data.split(split)
    x = data.transform(images, train=False).flatten(1)
    model.eval()
    return sum(((model.net.encoder(chunk) > 0).sum(0) for chunk in x.split(2048)),
               torch.zeros(model.sae_config.n_latents, dtype=torch.long))


def train_autoencoder(model_args: dict, epochs: int, args: argparse.Namespace) -> tuple[KSparseAutoencoder, dict]:
    """Fit one model; returns it and {fit_s, train_s_per_epoch_median, val_/test_ mse, dead_units,
    rare_units}."""
    L.seed_everything(0, workers=True, verbose=False)
    model = build_model(model_args)
    data = images(args)
    timer = FitTimer()
    fit = trainer(epochs, [timer])
    fit.fit(model, datamodule=data)
    val = fit.validate(model, datamodule=data, verbose=False)[0]
    test = fit.test(model, datamodule=data, verbose=False)[0]
    epoch_s = sorted(timer.train_epoch_s)[len(timer.train_epoch_s) // 2]
    result = {"fit_s": timer.fit_s, "train_s_per_epoch_median": epoch_s,
              "val_mse": val["val/loss"], "test_mse": test["test/loss"]}
    for split in ("val", "test"):
        counts = firing_counts(model, data, split)
        result[f"{split}_dead_units"] = int((counts == 0).sum())
        result[f"{split}_rare_units"] = int((counts < RARE).sum())
    result["dead_units"] = result["test_dead_units"]
    return model, result


def probe_accuracy(encoder_state: dict | None, args: argparse.Namespace) -> dict[str, float]:
    """Validation and test accuracy of the linear probe on the codes (``None``: on raw pixels),
    after exactly ``--probe-epochs`` epochs: {"val": ..., "test": ...}."""
    L.seed_everything(0, workers=True, verbose=False)
    with tempfile.TemporaryDirectory() as folder:
        path = None
        if encoder_state is not None:
            path = str(Path(folder) / "encoder.pth")
            torch.save(encoder_state, path)
        probe = LinearProbe(encoder_path=path, solver="adam")
        data = FeatureData(images(args), batch_size=256, seed=0)
        fit = trainer(args.probe_epochs, [])
        fit.fit(probe, datamodule=data)
        return {"val": float(fit.validate(probe, datamodule=data, verbose=False)[0]["val/acc"]),
                "test": float(fit.test(probe, datamodule=data, verbose=False)[0]["test/acc"])}


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def ablation(args: argparse.Namespace, save) -> list[dict]:
    """The ablation rows; ``save(rows)`` is called after each row."""
    base = {**default_model_args(), **PLAIN}
    rows = []
    for key in args.rows:
        name = ROW_KEYS[key]
        if key == "pixels":
            accuracy = probe_accuracy(None, args)
            rows.append({"row": name, "probe_val_acc": accuracy["val"], "probe_acc": accuracy["test"]})
            print(f"{name}: probe val {100 * accuracy['val']:.2f}%, test {100 * accuracy['test']:.2f}%", flush=True)
            save(rows)
            continue
        if key == "plain":
            options = base
        elif key == "default":
            options = default_model_args()
        elif key in VARIANTS:
            options = {**default_model_args(), **VARIANTS[key]}
        elif key in ("gao", "gao_auxk"):
            options = {**base, **GAO, **(CURES["+ AuxK"] if key == "gao_auxk" else {})}
        else:
            options = {**base, **CURES[name]}
        model, result = train_autoencoder(options, args.epochs, args)
        accuracy = probe_accuracy(model.net.encoder.state_dict(), args)
        result.update(probe_val_acc=accuracy["val"], probe_acc=accuracy["test"])
        result.update(row=name, key=key, options={k: options[k] for k in sorted(options)})
        rows.append(result)
        mark_choice(rows)
        print(f"{name}: val MSE {result['val_mse']:.5f}, val dead {result['val_dead_units']}, "
              f"test MSE {result['test_mse']:.5f}, test dead {result['test_dead_units']}, "
              f"probe val {100 * accuracy['val']:.2f}% / test {100 * accuracy['test']:.2f}%, "
              f"fit {result['fit_s']:.0f} s", flush=True)
        save(rows)
    return rows


def mark_choice(rows: list[dict], n_units: int = 1024) -> dict | None:
    """Mark (``chosen: True``) the row with the lowest validation MSE among the trained rows with at
    most ``MAX_DEAD_FRACTION`` of units never firing on validation; returns it (``None``: no row
    is eligible). Only validation numbers enter the choice."""
    trained = [r for r in rows if "val_mse" in r]
    for r in trained:
        r["chosen"] = False
    eligible = [r for r in trained if r["val_dead_units"] <= MAX_DEAD_FRACTION * n_units]
    if not eligible:
        return None
    best = min(eligible, key=lambda r: r["val_mse"])
    best["chosen"] = True
    return best


def speed(args: argparse.Namespace) -> list[dict]:
    rows = []
    contestants = {"sparse kernels (default)": {},
                   "sparse kernels, float32 select": {"select_dtype": "float32"},
                   "dense reference": {"sparse": False}}
    for label, overrides in contestants.items():
        options = {**default_model_args(), **overrides}
        _, result = train_autoencoder(options, args.speed_epochs, args)
        per_epoch = result["fit_s"] / args.speed_epochs
        if args.train_subset:
            label += f" ({args.train_subset} images)"
        rows.append({"row": label, "epochs": args.speed_epochs,
                     "fit_s": result["fit_s"], "projected_30_epochs_s": 30 * per_epoch,
                     "train_s_per_epoch_median": result["train_s_per_epoch_median"], "test_mse": result["test_mse"]})
        print(f"speed, {rows[-1]['row']}: {result['fit_s']:.1f} s for {args.speed_epochs} epochs "
              f"→ {30 * per_epoch:.0f} s per 30", flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = [f"# k-sparse AE benchmark ({results['settings']})", "",
             f"torch threads: {results['threads']}; load average at the end: {results['load_average']}", ""]
    if results.get("ablation"):
        lines += ["Choice on validation: the lowest val MSE among rows with ≤ 1% of units never firing on "
                  "validation (bold, ✓). Test columns for information; dead = never fires / fires on < 10 images.", "",
                  "| row | val MSE/pixel | val dead | val probe % | test MSE/pixel | test dead | test probe % | fit s | chosen |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results["ablation"]:
            if "test_mse" not in r:
                lines.append(f"| {r['row']} | | | {100 * r.get('probe_val_acc', float('nan')):.2f} | | | "
                             f"{100 * r['probe_acc']:.2f} | | |")
                continue
            mark = "**" if r.get("chosen") else ""
            val_dead = f"{r['val_dead_units']} / {r['val_rare_units']}" if "val_dead_units" in r else ""
            test_dead = (f"{r['test_dead_units']} / {r['test_rare_units']}" if "test_rare_units" in r
                         else f"{r['dead_units']}")
            val_mse = f"{mark}{r['val_mse']:.5f}{mark}" if "val_mse" in r else ""
            val_probe = f"{100 * r['probe_val_acc']:.2f}" if "probe_val_acc" in r else ""
            lines.append(f"| {mark}{r['row']}{mark} | {val_mse} | {val_dead} | {val_probe} | {r['test_mse']:.5f} | "
                         f"{test_dead} | {100 * r['probe_acc']:.2f} | {r['fit_s']:.0f} | {'✓' if r.get('chosen') else ''} |")
        lines.append("")
    if results.get("speed"):
        lines += ["| training path | epochs | fit s | s per 30 epochs | train s/epoch (median) | test MSE |",
                  "|---|---|---|---|---|---|"]
        for r in results["speed"]:
            lines.append(f"| {r['row']} | {r['epochs']} | {r['fit_s']:.1f} | {r['projected_30_epochs_s']:.0f} | "
                         f"{r['train_s_per_epoch_median']:.2f} | {r['test_mse']:.5f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(detect().line(), flush=True)
    settings = (f"{args.epochs} epochs, train_subset={args.train_subset}, probe {args.probe_epochs} epochs"
                + (", quick" if args.quick else ""))
    results = {"settings": settings, "threads": torch.get_num_threads()}
    out = Path(args.out)
    stem = ("quick" if args.quick else f"epochs{args.epochs}") + (f"-{args.tag}" if args.tag else "")

    def save(rows: list[dict] | None = None, key: str = "ablation") -> None:
        if rows is not None:
            results[key] = rows
        results["load_average"] = load_average()
        atomic_write_json(out / f"{stem}.json", results)
        atomic_write_text(out / f"{stem}.md", markdown(results))

    if not args.speed_only:
        ablation(args, save)
    if not args.no_speed:
        save(speed(args), "speed")
    save()
    print(markdown(results))
    print(f"written to {out / stem}.json / .md")
    return results


if __name__ == "__main__":
    main()
