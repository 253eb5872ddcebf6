"""Speed of the TopK SAE engine against overcomplete's TopKSAE and a dense reference, same weights.

    python benchmarks/bench_topk_sae.py            # d = 2048 and 1280, n = 10,000, k = 32, B = 1024
    python benchmarks/bench_topk_sae.py --quick    # small sizes, runs in seconds

Contestants run round-robin (one repeat of each in turn, so background load hits all alike), after
warm-up; the table gives min and median over ``--repeats`` (>= 5) in milliseconds of wall-clock
time, or with ``--cpu-time`` of process CPU time on one thread (the work done, which other
processes competing for the cores do not inflate). Phases:
forward (with autograd recording, plus the MSE), forward+backward, and the full training step
(zero_grad, forward, backward, gradient projection, optimizer step, renormalisation). The floor
is the encoder forward matmul alone (``addmm``), which every contestant must do.

Contestants: ``ours`` (``components.sparse_coder.SparseCoder`` + fused Adam); ``overcomplete``
(``overcomplete.sae.TopKSAE`` + ``torch.optim.Adam`` defaults, as one would build on the library);
``overcomplete+fused`` (the same with fused Adam, to separate the optimizer's share); ``dense``
(plain PyTorch dense TopK SAE, autograd, default Adam). Then the USAE joint step (M = 2: every
model encodes, every code is decoded by every decoder, loss = Σ self + 1.5 Σ cross) on
``SAEBank`` with our coders vs ``benchmarks.overcomplete_backend`` (the library's, same weights).

By default this sets ``THP_MEM_ALLOC_ENABLE=1`` before importing torch (2 MB-aligned, huge-page
backed large allocations: fewer page faults for the 80 MB gradient tensors); ``--no-thp`` keeps
the plain allocator. Both settings apply to every contestant alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per contestant (>= 5)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's default, all cores; 1 with --quick)")
    p.add_argument("--no-thp", action="store_true", help="do not set THP_MEM_ALLOC_ENABLE=1")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with process CPU time on 1 thread: the work each contestant does, "
                        "unaffected by other processes competing for the cores")
    p.add_argument("--skip-usae", action="store_true", help="only the single-SAE table")
    p.add_argument("--breakdown", action="store_true",
                   help="instead: where our full step's time goes beyond the floor, part by part")
    p.add_argument("--device", default="cpu", help="where every contestant runs: cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: every phase under torch.autocast(bfloat16), as bf16-mixed training")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and not ARGS.no_thp:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.overcomplete_backend import overcomplete_bank  # noqa: E402
from common.hardware import detect  # noqa: E402
from components.sae_bank import SAEBank, make_adam  # noqa: E402
from components.sparse_coder import SparseCoder, SparseCoderConfig  # noqa: E402


class DenseTopKSAE(nn.Module):
    """The reference: dense TopK SAE, plain autograd (same math and weights as ``TopKSAE``)."""

    def __init__(self, src: TopKSAE) -> None:
        super().__init__()
        self.k = src.k
        self.W_enc = nn.Parameter(src.W_enc.detach().clone())
        self.b_enc = nn.Parameter(src.b_enc.detach().clone())
        self.W_dec = nn.Parameter(src.W_dec.detach().clone())

    def forward(self, x):
        z = F.linear(x, self.W_enc, self.b_enc).relu()
        vals, idx = torch.topk(z, self.k, dim=1)
        codes = torch.zeros_like(z).scatter(1, idx, vals)
        return codes @ self.W_dec

    @torch.no_grad()
    def before_step(self):
        g = self.W_dec.grad
        g -= (g * self.W_dec).sum(1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def after_step(self):
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)


def contestants(d: int, n: int, k: int, seed: int = 0):
    """name -> (forward(x) -> loss, optimizer, before_step, after_step), all on the same weights."""
    ours = SparseCoder(d, SparseCoderConfig(n_latents=n, k=k, select_dtype="float32"), seed=seed).to(DEVICE)
    oc = ours.to_overcomplete()
    oc2 = ours.to_overcomplete()
    dense = DenseTopKSAE(ours)

    def ours_fwd(x):
        return (ours.decode_sparse(ours.encode_sparse(x)) - x).square().mean()

    def oc_fwd(model):
        return lambda x: (model(x)[2] - x).square().mean()

    def dense_fwd(x):
        return (dense(x) - x).square().mean()

    nothing = lambda: None  # noqa: E731
    return {
        "ours": (ours_fwd, make_adam(ours.parameters(), 1e-4), ours.project_decoder_grad_, ours.normalize_decoder_),
        "overcomplete": (oc_fwd(oc), torch.optim.Adam(oc.parameters(), lr=1e-4), nothing, nothing),
        "overcomplete+fused": (oc_fwd(oc2), torch.optim.Adam(oc2.parameters(), lr=1e-4, fused=True), nothing, nothing),
        "dense": (dense_fwd, torch.optim.Adam(dense.parameters(), lr=1e-4), dense.before_step, dense.after_step),
    }, ours


def phases(fwd, opt, before, after, x):
    def forward():
        fwd(x)

    def fwd_bwd():
        opt.zero_grad(set_to_none=True)
        fwd(x).backward()

    def step():
        opt.zero_grad(set_to_none=True)
        fwd(x).backward()
        before()
        opt.step()
        after()

    return {"forward": forward, "fwd+bwd": fwd_bwd, "step": step}


CLOCK = time.perf_counter


DEVICE, DTYPE = torch.device("cpu"), torch.float32


def round_robin(jobs: dict[str, callable], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time every job once per round, ``repeats`` rounds after ``warmup`` rounds; seconds (on CUDA
    each job is synchronised before the clock stops)."""
    times = {name: [] for name in jobs}
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)
    for r in range(warmup + repeats):
        for name, job in jobs.items():
            sync()
            t0 = CLOCK()
            with torch.autocast(DEVICE.type, dtype=DTYPE, enabled=DTYPE != torch.float32):
                job()
            sync()
            dt = CLOCK() - t0
            if r >= warmup:
                times[name].append(dt)
    return times


def fmt(ts: list[float]) -> str:
    lo, med = min(ts) * 1e3, statistics.median(ts) * 1e3
    digits = 0 if lo >= 100 else 1 if lo >= 10 else 2
    return f"{lo:.{digits}f} / {med:.{digits}f}"


def bench_single(d: int, n: int, k: int, batch: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    x = F.normalize(torch.randn(batch, d).abs(), dim=1).to(DEVICE)
    cs, ours = contestants(d, n, k)
    jobs = {}
    for name, (fwd, opt, before, after) in cs.items():
        for phase, job in phases(fwd, opt, before, after, x).items():
            jobs[(name, phase)] = job
    w, b = ours.W_enc.detach(), ours.b_enc.detach()
    jobs[("floor", "forward")] = lambda: torch.addmm(b, x, w.t())
    times = round_robin(jobs, repeats)
    floor = min(times[("floor", "forward")])
    ours_step = min(times[("ours", "step")])
    lines = [f"\n### single SAE: d={d}, n={n}, k={k}, batch={batch} (ms, min / median of {repeats})\n",
             "| contestant | forward | fwd+bwd | full step | step vs ours | step / floor |",
             "|---|---|---|---|---|---|"]
    for name in cs:
        s = min(times[(name, "step")])
        lines.append(f"| {name} | {fmt(times[(name, 'forward')])} | {fmt(times[(name, 'fwd+bwd')])} | "
                     f"{fmt(times[(name, 'step')])} | {s / ours_step:.2f}x | {s / floor:.2f}x |")
    lines.append(f"| floor (encoder addmm) | {fmt(times[('floor', 'forward')])} | | | | 1.00x |")
    return lines


def bench_breakdown(d: int, n: int, k: int, batch: int, repeats: int) -> list[str]:
    """Our training step timed part by part (each part after the previous one, as a step runs them),
    beside the encoder-matmul floor: where the time between the floor and the full step goes."""
    torch.manual_seed(0)
    x = F.normalize(torch.randn(batch, d).abs(), dim=1).to(DEVICE)
    sae = SparseCoder(d, SparseCoderConfig(n_latents=n, k=k, select_dtype="float32"), seed=0).to(DEVICE)
    opt = make_adam(sae.parameters(), 1e-4)
    w, b = sae.W_enc.detach(), sae.b_enc.detach()
    state: dict = {}
    parts = {
        "floor (encoder addmm)": lambda: torch.addmm(b, x, w.t()),
        "zero_grad": lambda: opt.zero_grad(set_to_none=True),
        "encode (addmm + topk + gather)": lambda: state.update(codes=sae.encode_sparse(x)),
        "decode + MSE": lambda: state.update(loss=(sae.decode_sparse(state["codes"]) - x).square().mean()),
        "backward (sparse scatters)": lambda: state.pop("loss").backward(),
        "gradient projection": sae.project_decoder_grad_,
        "Adam (fused)": opt.step,
        "renormalisation": sae.normalize_decoder_,
    }
    times = round_robin(parts, repeats)
    floor = min(times["floor (encoder addmm)"])
    step = sum(min(t) for name, t in times.items() if not name.startswith("floor"))
    lines = [f"\n### our step, part by part: d={d}, n={n}, k={k}, batch={batch} (ms, min / median of {repeats})\n",
             "| part | ms | / floor |", "|---|---|---|"]
    lines += [f"| {name} | {fmt(t)} | {min(t) / floor:.2f}x |" for name, t in times.items()]
    lines.append(f"| **step (sum of the parts' minima)** | {fmt([step])} | **{step / floor:.2f}x** |")
    return lines


def bench_usae(dims: dict[str, int], n: int, k: int, batch: int, repeats: int) -> list[str]:
    torch.manual_seed(0)
    data = {name: F.normalize(torch.randn(batch, d).abs(), dim=1).to(DEVICE) for name, d in dims.items()}
    config = SparseCoderConfig(n_latents=n, k=k, select_dtype="float32")
    ours = SAEBank(dims, config, seed=0).to(DEVICE)
    ocs = [overcomplete_bank(dims, config, seed=0, weights_from=ours).to(DEVICE) for _ in range(2)]
    names = list(dims)

    def step_fn(bank, opt):
        def step():
            opt.zero_grad(set_to_none=True)
            loss, _ = bank.loss(data, names, "all", cross_weight=1.5)
            loss.backward()
            bank.project_decoder_grads_()
            opt.step()
            bank.normalize_and_revive_()
        return step

    enc = [(ours.saes[nm].b_enc.detach(), ours.saes[nm].W_enc.detach(), data[nm]) for nm in names]
    jobs = {
        "ours": step_fn(ours, make_adam(ours.parameters(), 1e-4)),
        "overcomplete": step_fn(ocs[0], torch.optim.Adam(ocs[0].parameters(), lr=1e-4)),
        "overcomplete+fused": step_fn(ocs[1], torch.optim.Adam(ocs[1].parameters(), lr=1e-4, fused=True)),
        "floor": lambda: [torch.addmm(b, x, w.t()) for b, w, x in enc],
    }
    times = round_robin(jobs, repeats)
    o, floor = min(times["ours"]), min(times["floor"])
    lines = [f"\n### USAE joint step, M={len(dims)} ({', '.join(f'd={d}' for d in dims.values())}), n={n}, "
             f"k={k}, batch={batch} (ms, min / median of {repeats})\n",
             "| contestant | joint step | vs ours | / floor |", "|---|---|---|---|"]
    for name, ts in times.items():
        lines.append(f"| {name if name != 'floor' else 'floor (encoder addmm, all models)'} | {fmt(ts)} | "
                     f"{min(ts) / o:.2f}x | {min(ts) / floor:.2f}x |")
    return lines


def main(args: argparse.Namespace) -> None:
    global CLOCK, DEVICE, DTYPE
    DEVICE, DTYPE = torch.device(args.device), getattr(torch, args.dtype)
    if args.cpu_time and DEVICE.type != "cpu":
        raise SystemExit("error: --cpu-time measures CPU work; drop it with --device cuda")
    if args.cpu_time:  # CPU time of a multi-threaded run would count the threads' spin-waits
        if args.threads not in (None, 1):
            raise SystemExit("error: --cpu-time measures one thread; drop --threads")
        args.threads, CLOCK = 1, time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick:  # tiny tensors: a second thread only adds synchronisation noise
        torch.set_num_threads(1)
    print(detect().line(), flush=True)
    if args.quick:
        dims, n, k, batch, repeats = [256, 128], 1000, 8, 128, args.repeats or 5
    else:
        dims, n, k, batch, repeats = [2048, 1280], 10_000, 32, 1024, args.repeats or 7
    if repeats < 5:
        raise SystemExit("error: --repeats must be at least 5")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, {args.dtype}, {DEVICE}, "
          f"{'process CPU time' if args.cpu_time else 'wall-clock time'}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start")
    for d in dims:
        bench = bench_breakdown if args.breakdown else bench_single
        print("\n".join(bench(d, n, k, batch, repeats)), flush=True)
    if not args.skip_usae and not args.breakdown:
        print("\n".join(bench_usae({"model_a": dims[0], "model_b": dims[1]}, n, k, batch, repeats)), flush=True)


if __name__ == "__main__":
    main(ARGS)
