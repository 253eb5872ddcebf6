"""Linear probe on the frozen k-sparse codes, encoded with k' = encode_k units per image (issue 3).

    python benchmarks/bench_probe_k.py                       # k' = 50 100 150 250 1024 on the demo encoder
    python benchmarks/bench_probe_k.py --ks 50 150 --encoder runs/fashion_mnist_ksae/main/encoder.pth

Makhzani & Frey (2013, Algorithm 1) train with the top k units and encode for classification with
the top αk (α ≥ 1). Each row is ``train.py --config configs/fashion_mnist/probe.yaml`` with
``model.init_args.encode_k`` set (the probe.yaml protocol: early stopping on validation accuracy,
the best epoch tested); pick k' by the validation column, the test column is the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.hardware import detect  # noqa: E402


def probe(encoder: Path, encode_k: int, out: Path, extra: list[str]) -> dict:
    """Train and test one probe; returns {encode_k, best_val_acc, test_acc, best_epoch}."""
    version = f"k{encode_k}"
    args = [sys.executable, "train.py", "--config", "configs/fashion_mnist/probe.yaml",
            "--model.init_args.encoder_path", str(encoder), "--model.init_args.encode_k", str(encode_k),
            "--run.root", str(out), "--run.version", version, "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", *extra]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: the probe with encode_k={encode_k} failed: {done.stderr.strip().splitlines()[-1]}")
    results = json.loads((out / "fashion_mnist_probe" / version / "results.json").read_text())
    best = Path(results["best_checkpoint"]).stem  # epochNN-val_accX.XXXX
    epoch, val = best.split("-val_acc")
    return {"encode_k": encode_k, "best_val_acc": float(val), "best_epoch": int(epoch.removeprefix("epoch")),
            "test_acc": results["test"]["test/acc"]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", default=str(ROOT / "runs/fashion_mnist_ksae/main/encoder.pth"),
                   help="encoder.pth (or a KSparseAutoencoder .ckpt) to probe")
    p.add_argument("--ks", type=int, nargs="*", default=[50, 100, 150, 250, 1024], help="values of encode_k")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_probe_k"), help="folder for the probe runs")
    p.add_argument("--quick", action="store_true", help="2 epochs on 2,048 training images (a smoke test)")
    args = p.parse_args(argv)
    print(detect().line(), flush=True)
    encoder = Path(args.encoder)
    if not encoder.is_file():
        sys.exit(f"error: encoder '{encoder}' does not exist; train it: "
                 f"python train.py --config configs/fashion_mnist/ksae.yaml")
    extra = (["--trainer.max_epochs", "2", "--data.init_args.images.init_args.train_subset", "2048"]
             if args.quick else [])
    rows = []
    print(f"encoder {encoder}\n\n| encode_k | best val acc % | epoch | test acc % |\n|---|---|---|---|")
    for k in args.ks:
        rows.append(probe(encoder, k, Path(args.out), extra))
        r = rows[-1]
        print(f"| {k} | {100 * r['best_val_acc']:.2f} | {r['best_epoch']} | {100 * r['test_acc']:.2f} |",
              flush=True)
    chosen = max(rows, key=lambda r: (r["best_val_acc"], -r["encode_k"]))  # ties: the sparser code
    print(f"\nchosen by validation accuracy: encode_k = {chosen['encode_k']} "
          f"(test {100 * chosen['test_acc']:.2f}%)")
    return rows


if __name__ == "__main__":
    main()
