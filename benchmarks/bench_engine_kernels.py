"""Which sparse-gradient kernel the TopK engine should use at each shape (CPU, one thread).

    python benchmarks/bench_engine_kernels.py --cpu-time

Two kernels compute the same (n, d) weight gradient ``G = Σ_b Σ_i g[b,i] · rows[b] e_{idx[b,i]}``
of a k-sparse selection (encoder weight: rows = inputs; dictionary: rows = grad of the output):

* ``coo``: a sparse-COO (n, B) matrix times the dense (B, d) rows (``torch.sparse.mm``);
* ``bag``: entries sorted by latent, then one ``F.embedding_bag`` whose bags are the latents;
* ``native`` (dictionary only): ``F.embedding_bag``'s own weight backward.

and for the gradient projection (remove each atom's gradient component along the atom, (n, d)):

* ``vecdot``: ``g -= W · vecdot(g, W)`` (two passes over memory);
* ``blocked``: the same in row blocks of 2^19 elements that stay in cache.

Prints the machine line, then per shape the min over ``--repeats`` round-robin rounds and the ratio
to the fastest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.hardware import detect  # noqa: E402
from components.sparse_coder import scatter_rows_bag, scatter_rows_coo  # noqa: E402

SHAPES = {"k-sparse AE (B=256, d=784, n=1024, k=50)": (256, 784, 1024, 50),
          "USAE demo (B=1024, d=2048, n=4096, k=32)": (1024, 2048, 4096, 32),
          "USAE demo (B=1024, d=1280, n=4096, k=32)": (1024, 1280, 4096, 32),
          "USAE study (B=1024, d=2048, n=10000, k=32)": (1024, 2048, 10_000, 32)}


def project_vecdot(g: torch.Tensor, w: torch.Tensor) -> None:
    g.addcmul_(w, torch.linalg.vecdot(g, w).unsqueeze(1), value=-1.0)


def project_blocked(g: torch.Tensor, w: torch.Tensor) -> None:
    rows = max(1, (1 << 19) // w.shape[1])
    buf = torch.empty(min(rows, w.shape[0]), w.shape[1], dtype=g.dtype)
    for start in range(0, w.shape[0], rows):
        gc, wc = g[start:start + rows], w[start:start + rows]
        prod = torch.mul(gc, wc, out=buf[: gc.shape[0]])
        gc.addcmul_(prod.sum(1, keepdim=True), wc, value=-1.0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall-clock")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="first shape only, 3 repeats")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(detect().line(), f"| torch {torch.__version__} | 1 thread |",
          "process CPU time" if args.cpu_time else "wall-clock time")
    shapes = dict(list(SHAPES.items())[:1]) if args.quick else SHAPES
    for label, (b, d, n, k) in shapes.items():
        torch.manual_seed(0)
        idx = torch.rand(b, n).topk(k, dim=1).indices
        g, rows = torch.randn(b, k), torch.randn(b, d)
        weight = torch.randn(n, d, requires_grad=True)
        vals = torch.rand(b, k)

        def native():
            out = F.embedding_bag(idx, weight, per_sample_weights=vals, mode="sum")
            (grad_w,) = torch.autograd.grad(out, weight, rows)
            return grad_w

        jobs = {"coo": lambda: scatter_rows_coo(idx, g, rows, n),
                "bag": lambda: scatter_rows_bag(idx, g, rows, n),
                "native (dictionary)": native}
        ref = jobs["coo"]()
        torch.testing.assert_close(jobs["bag"](), ref, rtol=1e-4, atol=1e-4)
        times = {name: [] for name in jobs}
        for r in range(1 + (3 if args.quick else args.repeats)):
            for name, job in jobs.items():
                t0 = clock()
                job()
                if r:
                    times[name].append(clock() - t0)
        wd = torch.nn.functional.normalize(torch.randn(n, d), dim=1)
        grad = torch.randn(n, d)
        proj = {"projection vecdot": lambda: project_vecdot(grad, wd), "projection blocked": lambda: project_blocked(grad, wd)}
        for r in range(1 + (3 if args.quick else args.repeats)):
            for name, job in proj.items():
                t0 = clock()
                job()
                if r:
                    times.setdefault(name, []).append(clock() - t0)
        best = min(min(t) for name, t in times.items() if not name.startswith("projection"))
        best_proj = min(min(t) for name, t in times.items() if name.startswith("projection"))
        print(f"\n{label}")
        for name, t in times.items():
            ref = best_proj if name.startswith("projection") else best
            print(f"  {name:22s} {min(t) * 1e3:8.2f} ms  {min(t) / ref:5.2f}x")


if __name__ == "__main__":
    main()
