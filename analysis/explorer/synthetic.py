"""A synthetic explorer of any size (random k-sparse codes, random images), to measure the viewer at
the CIFAR-100 recipe's scale without its runs:

    python -m analysis.explorer.synthetic /tmp/explorer_10k --latents 10000 --models 3 --classes 100
    python -m analysis.explorer.browser /tmp/explorer_10k
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from scipy import sparse

from analysis.explorer.records import usae_records
from analysis.explorer.site import folder_size, write_site
from analysis.explorer.study import ConceptExplorer
from analysis.options import PageOptions, SaeInputs
from common.io import atomic_write_json


def random_codes(n_images: int, n_latents: int, k: int, rng: np.random.Generator) -> sparse.csr_matrix:
    """(N, n) CSR with k random latents per row, codes uniform in (0, 1]."""
    cols = rng.integers(0, n_latents, (n_images, k))  # a repeat sums: a row may hold slightly fewer than k
    rows = np.repeat(np.arange(n_images), k)
    m = sparse.csr_matrix((1.0 - rng.random(n_images * k).astype(np.float32), (rows, cols.ravel())),
                          shape=(n_images, n_latents))
    m.sum_duplicates()
    return m


def build(out: Path, n_latents: int, n_models: int, n_classes: int, n_images: int, k: int, side: int,
          seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    names = [f"model{m}" for m in range(n_models)]
    start = time.perf_counter()
    codes = {m: random_codes(n_images, n_latents, k, rng) for m in names}
    labels = torch.from_numpy(rng.integers(0, n_classes, n_images))
    dicts = {m: torch.randn(n_latents, 64 * (j + 1)) for j, m in enumerate(names)}
    explorer = ConceptExplorer(SaeInputs(usae_checkpoint="(synthetic)", device="cpu"), output_dir=str(out),
                               page=PageOptions(title="Synthetic explorer"))
    firing, page = explorer.firing, explorer.page
    rec = usae_records(codes, labels, n_classes, dicts, firing.fire_threshold, firing.entropy_lo, firing.entropy_hi,
                       firing.min_activations, page.n_top_images, page.hist_bins, page.n_similar)
    data = SimpleNamespace(images=torch.from_numpy(rng.integers(0, 256, (n_images, 3, side, side), dtype=np.uint8)),
                           labels=labels, class_names=tuple(f"class{c}" for c in range(n_classes)))
    explorer._dims = {m: int(d.shape[1]) for m, d in dicts.items()}
    meta, rows, records, books = explorer._payload(rec, data, names, rec.alive, {}, "random", n_latents)
    write_site(out, meta, rows, records, books.values(), page.chunk_size)
    atomic_write_json(out / "build.json", {"timings_s": {"total": time.perf_counter() - start},
                                           "bytes": folder_size(out), "latents": len(rows), "n_latents": n_latents,
                                           "threads": torch.get_num_threads(), "synthetic": True})
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--latents", type=int, default=10000)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--side", type=int, default=32)
    args = parser.parse_args(argv)
    out = build(args.out, args.latents, args.models, args.classes, args.images, args.k, args.side)
    print(f"synthetic explorer: {out / 'index.html'}")
    return out


if __name__ == "__main__":
    main()
