"""Score one SAE training run on its validation and test splits: ``<run>/splits.json``.

    python scripts/eval_sae_splits.py runs/fashion_mnist_usae/main [more run folders ...]

Loads the run's best checkpoint (``results.json``; else ``checkpoints/last.ckpt``) and the data
section of its ``config.yaml``, encodes both splits and writes, per split: the R² matrix, self and
cross means, and per model the two dead fractions (never fires; fires on fewer than
``--rare-below`` images), from ``metrics.universality`` (definitions: ``docs/metrics.md``). The
sweep table of ``scripts/make_results.py`` reads these files, so every row is scored the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.universality import inputs  # noqa: E402
from analysis.universality.codes import extract_codes, saes_of  # noqa: E402
from analysis.universality.r2 import r2_matrix, r2_numbers  # noqa: E402
from common.errors import UserError, run_cli  # noqa: E402
from common.io import atomic_write_json  # noqa: E402
from metrics.universality import FiringCounts  # noqa: E402


def checkpoint_of(run: Path) -> Path:
    """The run's best checkpoint (as ``results.json`` names it), else ``checkpoints/last.ckpt``."""
    results = run / "results.json"
    if results.is_file():
        best = json.loads(results.read_text(encoding="utf-8")).get("best_checkpoint")
        if best:  # recorded relative to the repository root; a copied run folder keeps the file name
            for candidate in (Path(best), run / "checkpoints" / Path(best).name):
                if candidate.is_file():
                    return candidate
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise UserError(f"run folder '{run}' has no checkpoint (results.json's best_checkpoint or "
                        "checkpoints/last.ckpt); train it first")
    return last


def kind_of(run: Path) -> str:
    config = (run / "config.yaml").read_text(encoding="utf-8")
    return "independent" if "IndependentSAEs" in config else "usae"


@torch.no_grad()
def score_run(run: Path, rare_below: int = 10, batch_size: int = 1024) -> dict:
    """{"checkpoint", "rare_below", "val": {...}, "test": {...}} for one run folder."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise UserError(f"'{run}' is not a run folder (no config.yaml); pass runs/<experiment>/<version>")
    ckpt = checkpoint_of(run)
    system = inputs.load_system(ckpt, kind_of(run))
    dm = inputs.build_datamodule(None, str(run / "config.yaml"))
    out = {"checkpoint": ckpt.as_posix(), "rare_below": rare_below}
    for split in ("val", "test"):
        data = inputs.load_split(dm, split)
        codes = extract_codes(system, data.features, batch_size)
        names = codes.names
        r2 = r2_numbers(r2_matrix(system, codes, data.features, batch_size), names)
        counts = FiringCounts(codes.n_latents, len(names), 0.0, rare_below)
        counts.update(codes.code_list())
        res = counts.compute()
        out[split] = {
            "n_images": codes.n_samples, "n_latents": codes.n_latents,
            "r2_self_mean": r2["self_mean"], "r2_cross_mean": r2["cross_mean"], "r2": r2["entries"],
            "never_fraction": {n: float(res["dead_fraction_per_model"][m]) for m, n in enumerate(names)},
            "rare_fraction": {n: float(res["rare_fraction_per_model"][m]) for m, n in enumerate(names)},
            "n_alive": int(res["n_alive"]),
        }
    out["n_latents"] = int(next(iter(saes_of(system).values())).get_dictionary().shape[0])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--rare-below", type=int, default=10)
    parser.add_argument("--force", action="store_true", help="rescore runs that already have splits.json")
    args = parser.parse_args(argv)
    for run in args.runs:
        target = run / "splits.json"
        if target.is_file() and not args.force and target.stat().st_mtime >= checkpoint_of(run).stat().st_mtime:
            print(f"{target}: up to date")
            continue
        start = time.perf_counter()
        atomic_write_json(target, score_run(run, args.rare_below))
        print(f"{target}: written ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
