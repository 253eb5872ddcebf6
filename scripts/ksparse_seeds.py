"""The k-sparse study's headline over several seeds: autoencoder, probe on the k = 50 codes, αk probe.

    python scripts/ksparse_seeds.py                       # seeds 0 1 2 → runs/*/seed<S>/
    python scripts/ksparse_seeds.py --seeds 0 1 2 3 --reuse-main 0
    python scripts/ksparse_seeds.py --quick               # 1 epoch on 2,048 images per run (a smoke test)

For each seed S, ``train.py`` with ``--seed_everything S`` (the autoencoder's initialisation, the
data order and the train/val split; the official test split is the same for all) runs
``ksae.yaml`` → ``runs/fashion_mnist_ksae/seed<S>``, then ``probe.yaml`` on its encoder →
``runs/fashion_mnist_probe/seed<S>`` and ``probe.yaml`` + ``probe_alphak.yaml`` →
``runs/fashion_mnist_probe_alphak/seed<S>``. Finished runs (a results.json) are kept and an
interrupted autoencoder fit resumes from its ``last.ckpt``, so the script can be stopped and rerun. Each autoencoder run then gets ``firing.json``: how many test images each unit
fires on, and the dead units under both definitions (never fires; fires on fewer than 10 test
images). ``--reuse-main S`` takes the ``main`` runs as seed S (they must have been trained with it).
``scripts/results_ksparse.py`` reads these folders.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from common.io import atomic_write_json  # noqa: E402

RARE = 10  # a unit firing on fewer test images than this counts as dead under the second definition
STAGES = {  # run name → extra configs composed after the first
    "fashion_mnist_ksae": ["configs/fashion_mnist/ksae.yaml"],
    "fashion_mnist_probe": ["configs/fashion_mnist/probe.yaml"],
    "fashion_mnist_probe_alphak": ["configs/fashion_mnist/probe.yaml", "configs/fashion_mnist/probe_alphak.yaml"],
}
QUICK = {"fashion_mnist_ksae": ["--trainer.max_epochs", "1", "--data.init_args.train_subset", "2048"],
         "fashion_mnist_probe": ["--data.init_args.images.init_args.train_subset", "2048"],
         "fashion_mnist_probe_alphak": ["--data.init_args.images.init_args.train_subset", "2048"]}


def train(name: str, seed: int, root: Path, extra: list[str]) -> Path:
    """Run one ``train.py`` stage for ``seed`` unless its results.json exists; returns the run folder."""
    run = root / name / f"seed{seed}"
    if (run / "results.json").is_file():
        return run
    args = [sys.executable, "train.py"]
    for config in STAGES[name]:
        args += ["--config", config]
    args += ["--seed_everything", str(seed), "--run.root", str(root), "--run.version", f"seed{seed}",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *extra]
    if (run / "checkpoints" / "last.ckpt").is_file():
        args += ["--ckpt_path", str(run / "checkpoints" / "last.ckpt")]  # an interrupted fit resumes
    print(" ".join(args[1:]), flush=True)
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"error: {name} seed {seed} failed: {tail}")
    return run


@torch.no_grad()
def firing(ksae_run: Path, data_dir: str) -> dict:
    """Test images each unit of ``ksae_run``'s encoder fires on, and the two dead counts."""
    from components.ksparse import encoder_from_state, read_state_dict
    from datamodules.fashion_mnist import FashionMNISTDataModule

    encoder = encoder_from_state(read_state_dict(ksae_run / "encoder.pth", "net.encoder.", "encoder"),
                                 f"'{ksae_run / 'encoder.pth'}'", 784).eval()
    data = FashionMNISTDataModule(data_dir=data_dir)
    images, _ = data.split("test")
    x = data.transform(images, train=False).flatten(1)
    counts = sum(((encoder(chunk) > 0).sum(0) for chunk in x.split(2048)), torch.zeros(encoder.n_units, dtype=torch.long))
    return {"split": "test", "images": len(x), "n_units": encoder.n_units, "rare_threshold": RARE,
            "never_fire": int((counts == 0).sum()), f"fire_on_fewer_than_{RARE}": int((counts < RARE).sum()),
            "fires_on": counts.tolist()}


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default=str(ROOT / "runs"), help="run root (as train.py's --run.root)")
    p.add_argument("--reuse-main", type=int, default=None, metavar="S",
                   help="copy the 'main' runs (trained with seed S) as seed S instead of training them again")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--quick", action="store_true", help="1 epoch on 2,048 images (a smoke test)")
    args = p.parse_args(argv)
    root = Path(args.root)
    if args.reuse_main is not None:
        for name in STAGES:
            main_run, target = root / name / "main", root / name / f"seed{args.reuse_main}"
            if (main_run / "results.json").is_file() and not target.exists():
                shutil.copytree(main_run, target, ignore=shutil.ignore_patterns("checkpoints", "report"))
    runs = []
    for seed in args.seeds:
        ksae = train("fashion_mnist_ksae", seed, root, QUICK["fashion_mnist_ksae"] if args.quick else [])
        encoder = ["--model.init_args.encoder_path", str(ksae / "encoder.pth")]
        for name in ("fashion_mnist_probe", "fashion_mnist_probe_alphak"):
            train(name, seed, root, encoder + (QUICK[name] if args.quick else []))
        atomic_write_json(ksae / "firing.json", firing(ksae, args.data_dir))
        summary = json.loads((ksae / "firing.json").read_text())
        print(f"seed {seed}: never fire {summary['never_fire']}, fire on < {RARE} test images "
              f"{summary[f'fire_on_fewer_than_{RARE}']}", flush=True)
        runs.append(ksae)
    return runs


if __name__ == "__main__":
    main()
