"""One k-sparse AE training step, sparse kernels vs dense matmuls, across k.

    python benchmarks/bench_ksae_step.py            # 784 → 1024, batch 256, k = 50 ... 300
    python benchmarks/bench_ksae_step.py --quick    # fewer repeats (seconds)

It first times the encoder matmul alone, (B, 784) by (784, n), in float32 and in bfloat16 (casts
included). A step is what ``KSparseAutoencoder`` does per batch: forward (encode, top-k, decode), MSE,
backward, decoder-gradient projection, fused Adam, renormalisation. Three contestants start from
the same weights and run round-robin (one repeat of each in turn): the sparse kernels, the dense
reference, and the sparse kernels with the encoder matmul in bfloat16 (``select_dtype``). The
table gives the median in ms, dense/sparse and sparse/(sparse bf16). Where dense/sparse drops below
1 the dense path is faster: that crossover is what ``sparse_max_density`` in
``configs/fashion_mnist/ksae.yaml`` encodes (early epochs of a k schedule select many units per
sample).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.hardware import detect  # noqa: E402
from components.sparse_coder import SparseCoder, SparseCoderConfig  # noqa: E402


def linear_in(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The engine's select matmul: ``addmm`` in ``dtype``, with the casts."""
    return torch.addmm(bias.to(dtype), x.to(dtype), weight.to(dtype).t())


def make_step(net: SparseCoder, x: torch.Tensor, k: int):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        loss = F.mse_loss(net.decode_sparse(net.encode_sparse(x, k)), x)
        optimizer.zero_grad()
        loss.backward()
        net.project_decoder_grad_()
        optimizer.step()
        net.normalize_decoder_()

    return step


def round_robin(fns: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each callable, after 3 warm-up calls, timed one call of each in turn."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(3):
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ks", type=int, nargs="*", default=[50, 100, 150, 200, 250, 300])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-units", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="5 repeats")
    args = p.parse_args(argv)
    print(detect().line(), flush=True)
    repeats = 5 if args.quick else args.repeats
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 784)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, 784 → {args.n_units}")
    weight, bias = torch.randn(args.n_units, 784) / 28, torch.zeros(args.n_units)
    mm = round_robin({str(dtype): lambda dtype=dtype: linear_in(x, weight, bias, dtype)
                      for dtype in (torch.float32, torch.bfloat16)}, max(repeats, 20))
    f32, bf16 = mm["torch.float32"], mm["torch.bfloat16"]
    print(f"encoder matmul alone (with the casts): float32 {f32:.2f} ms, bfloat16 {bf16:.2f} ms, {f32 / bf16:.2f}×")
    print("| k | density | sparse ms | dense ms | dense / sparse | sparse bf16 ms | sparse / sparse bf16 |\n"
          "|---|---|---|---|---|---|---|")
    for k in args.ks:
        options = dict(n_latents=args.n_units, k=k, pre_bias=True, sparse_max_density=1.0, select_dtype="float32")
        base = SparseCoder(784, SparseCoderConfig(**options), seed=0)
        dense, bf16 = copy.deepcopy(base), copy.deepcopy(base)
        dense.config = SparseCoderConfig(**{**options, "sparse": False})
        bf16.select_dtype = torch.bfloat16
        steps = {"sparse": make_step(base, x, k), "dense": make_step(dense, x, k),
                 "sparse bf16": make_step(bf16, x, k)}
        ms = round_robin(steps, repeats)
        s, d, b = ms["sparse"], ms["dense"], ms["sparse bf16"]
        print(f"| {k} | {k / args.n_units:.2f} | {s:.1f} | {d:.1f} | {d / s:.2f} | {b:.1f} | {s / b:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
