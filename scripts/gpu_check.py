"""One-call GPU check: the Fashion-MNIST study at 224 px in bf16-mixed, the SAE and extraction benchmarks.

    bash scripts/gpu_check.sh OUT_DIR                 # a machine with a CUDA GPU, offline, <= 8 min
    bash scripts/gpu_check.sh OUT_DIR --cpu-smoke     # the same steps, CPU-sized (a few minutes)
    make gpu-check OUT=OUT_DIR

Steps (each a subprocess with its own timeout, all within ``--budget-s``): fine-tune ResNet50 and
MobileNetV3-Large for one epoch; build their activation cache; train the Universal SAE and the
independent SAEs with 10,000 latents; the universality report; ``bench_topk_sae.py`` on the GPU in
fp32 and bf16 (ours vs overcomplete); ``bench_extraction.py`` images/s (eager, bf16, compiled);
with two or more GPUs a 2-process DDP smoke run of the Universal SAE. Everything is written under
OUT_DIR: ``work/`` (the runs, cache and data of the check; the repository's own ``runs/`` is not
touched), ``logs/<step>.log``, ``gpu_check.json`` (every number) and ``gpu_check.md`` (summary).
Without CUDA and without ``--cpu-smoke`` it stops at once with one line and exit status 2.
Exit status 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FM, GC = ROOT / "configs" / "fashion_mnist", ROOT / "configs" / "gpu_check"
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class Step:
    """One command of the check: ``argv`` run in the work folder, killed after ``timeout_s``."""

    name: str
    argv: list[str]
    timeout_s: float
    needs: list[str] = field(default_factory=list)  # steps that must have passed first


@dataclass
class StepResult:
    """What one step did: status ``ok`` / ``failed`` / ``timeout`` / ``skipped``, seconds, numbers."""

    name: str
    status: str
    seconds: float
    returncode: int | None
    command: str
    log: str
    startup: str | None = None
    metrics: dict = field(default_factory=dict)
    tail: str = ""


def run_step(step: Step, cwd: Path, log_dir: Path, budget_left: float, env: dict | None = None) -> StepResult:
    """Run ``step`` with a timeout of ``min(step.timeout_s, budget_left)``; its whole process group
    is killed on timeout (DDP workers included), so the check never hangs."""
    log = log_dir / f"{step.name}.log"
    command = " ".join(step.argv)
    limit = min(step.timeout_s, budget_left)
    if budget_left < 5:
        return StepResult(step.name, "skipped", 0.0, None, command, str(log), tail="no time left in the budget")
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(step.argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code, status = None, "timeout"
    seconds = time.perf_counter() - start
    text = log.read_text(encoding="utf-8", errors="replace")
    startup = next((line for line in text.splitlines() if line.startswith("start-up: ")), None)
    tail = "\n".join(re.split(r"[\r\n]+", text.strip())[-8:])
    return StepResult(step.name, status, round(seconds, 1), code, command, str(log), startup, tail=tail)


# ---- data --------------------------------------------------------------------------------------

def _write_idx(path: Path, array) -> None:
    """An idx file (the MNIST format): magic, big-endian int32 dims, uint8 data."""
    dims = array.shape
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", 0x0800 | len(dims)))
        fh.write(struct.pack(f">{len(dims)}I", *dims))
        fh.write(array.astype("uint8").tobytes())


def _read_idx(path: Path):
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        magic = struct.unpack(">I", fh.read(4))[0]
        dims = struct.unpack(f">{magic & 0xFF}I", fh.read(4 * (magic & 0xFF)))
        return np.frombuffer(fh.read(), dtype=np.uint8).reshape(dims)


def find_fashion_mnist(candidates: list[Path]) -> dict[str, Path] | None:
    """The four Fashion-MNIST files (idx or .gz) in the first candidate folder that has them all."""
    for folder in candidates:
        for sub in (folder / "FashionMNIST" / "raw", folder):
            found = {}
            for name in RAW_FILES:
                for path in (sub / name, sub / f"{name}.gz"):
                    if path.is_file():
                        found[name] = path
                        break
            if len(found) == len(RAW_FILES):
                return found
    return None


def prepare_data(data_dir: Path, candidates: list[Path], n_train: int | None, n_test: int | None) -> str:
    """Fill ``data_dir/FashionMNIST/raw``: the real files (the first ``n_train`` / ``n_test`` images
    when given), or seeded random images of the same format where none is found. Returns
    ``"real"``, ``"real subset"`` or ``"synthetic"``."""
    import numpy as np

    raw = data_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    found = find_fashion_mnist(candidates)
    if found and n_train is None:
        for name, path in found.items():
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as src, open(raw / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(path, raw / name)
        return "real"
    sizes = {"train": n_train or 2000, "t10k": n_test or 500}
    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        if found:
            images = _read_idx(found[f"{split}-images-idx3-ubyte"])[:n]
            labels = _read_idx(found[f"{split}-labels-idx1-ubyte"])[:n]
        else:
            labels = np.arange(n) % 10
            images = (rng.random((n, 28, 28)) * 64 + labels[:, None, None] * 19).astype(np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return "real subset" if found else "synthetic"


# ---- the plan ----------------------------------------------------------------------------------

def plan(cuda: bool, gpus: int, out: Path) -> list[Step]:
    """The steps of the check: GPU-sized with ``cuda``, else the CPU smoke version."""
    py = sys.executable
    sfx = "" if cuda else "cpu_"
    backbone, acts, sae, report = (GC / f"{sfx}{n}.yaml" for n in ("backbone", "activations", "sae", "analysis"))
    data = ["--config", str(FM / "activations.yaml"), "--config", str(acts)]
    usae = [*data, "--config", str(ROOT / "configs/sae/usae_joint.yaml"), "--config", str(FM / "usae.yaml"),
            "--config", str(sae)]
    indep = [*data, "--config", str(ROOT / "configs/sae/independent.yaml"), "--config",
             str(FM / "independent.yaml"), "--config", str(sae)]
    train, bench = str(ROOT / "train.py"), ROOT / "benchmarks"
    device = "cuda" if cuda else "cpu"
    topk = ["--skip-usae", "--device", device, "--repeats", "5"] + ([] if cuda else ["--quick"])
    extraction = (["--images", "2048", "--image-size", "224", "--batch-size", "256", "--repeats", "3", "--compile"]
                  if cuda else ["--images", "32", "--image-size", "32", "--batch-size", "16", "--repeats", "2"])
    steps = [
        Step("resnet50", [py, train, "--config", str(FM / "resnet50.yaml"), "--config", str(backbone)], 100),
        Step("mobilenet_v3_large", [py, train, "--config", str(FM / "mobilenet_v3_large.yaml"),
                                    "--config", str(backbone)], 100),
        Step("activation_cache", [py, str(ROOT / "build_cache.py"), *data], 100,
             needs=["resnet50", "mobilenet_v3_large"]),
        Step("usae", [py, train, *usae], 100, needs=["activation_cache"]),
        Step("independent", [py, train, *indep], 100, needs=["activation_cache"]),
        Step("universality_report", [py, str(ROOT / "analyze.py"), "--config",
                                     str(FM / "analysis_universality.yaml"), "--config", str(report)], 150,
             needs=["usae", "independent"]),
        Step("bench_topk_fp32", [py, str(bench / "bench_topk_sae.py"), *topk], 60),
        Step("bench_topk_bf16", [py, str(bench / "bench_topk_sae.py"), *topk, "--dtype", "bfloat16"], 60),
        Step("bench_extraction", [py, str(bench / "bench_extraction.py"), "--device", device, "--no-plain",
                                  "--bf16", *extraction, "--json", str(out / "extraction.json")], 150),
    ]
    if cuda and gpus >= 2:
        steps.append(Step("ddp_smoke", [py, train, *usae, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                                        "--trainer.max_steps", "20", "--run.name", "gpu_check_ddp",
                                        "--run.test_after_fit", "false"], 150, needs=["activation_cache"]))
    return steps


def collect_metrics(result: StepResult, work: Path, out: Path) -> dict:
    """The numbers a step left behind (test metrics, benchmark tables, images/s)."""
    runs = {"resnet50": "fashion_mnist_resnet50", "mobilenet_v3_large": "fashion_mnist_mobilenet_v3_large",
            "usae": "fashion_mnist_usae", "independent": "fashion_mnist_independent"}
    text = Path(result.log).read_text(encoding="utf-8", errors="replace") if Path(result.log).exists() else ""
    if result.name in runs:
        path = work / "runs" / runs[result.name] / "main" / "results.json"
        if path.exists():
            return {"test": json.loads(path.read_text()).get("test")}
    if result.name == "activation_cache":
        ready = [line for line in text.splitlines() if line.startswith("activation cache ready")]
        return {"summary": ready[-1]} if ready else {}
    if result.name == "universality_report":
        path = work / "runs" / "fashion_mnist_usae" / "main" / "universality_report" / "report.json"
        return {"report": str(path)} if path.exists() else {}
    if result.name.startswith("bench_topk"):
        return {"tables": [line for line in text.splitlines() if line.startswith(("|", "###"))]}
    if result.name == "bench_extraction" and (out / "extraction.json").exists():
        return json.loads((out / "extraction.json").read_text())
    return {}


SUMMARY_METRICS = ("test/acc", "test/loss", "test/r2_self_mean", "test/r2_cross_mean", "test/dead_fraction")


def markdown(summary: dict) -> str:
    lines = [f"# GPU check ({summary['mode']})", "", summary["machine"], "",
             f"data: {summary['data']}; budget {summary['budget_s']} s, used {summary['seconds']} s; "
             f"{summary['gpus']} CUDA device(s)", "",
             "| step | status | s | numbers |", "|---|---|---|---|"]
    for step in summary["steps"]:
        numbers = ""
        metrics = step["metrics"]
        if metrics.get("test"):
            numbers = ", ".join(f"{k} {v:.4g}" for k, v in metrics["test"].items()
                                if k in SUMMARY_METRICS and isinstance(v, (int, float)))
        elif "images_per_s" in metrics:
            numbers = ", ".join(f"{k} {v:.0f} img/s" for k, v in metrics["images_per_s"].items())
        elif "summary" in metrics:
            numbers = metrics["summary"]
        lines.append(f"| {step['name']} | {step['status']} | {step['seconds']} | {numbers} |")
    for step in summary["steps"]:
        if step["metrics"].get("tables"):
            lines += ["", f"## {step['name']}", "", *step["metrics"]["tables"]]
    failed = [s for s in summary["steps"] if s["status"] != "ok"]
    for step in failed:
        lines += ["", f"## {step['name']}: {step['status']}", "", "```", step["tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder for gpu_check.json, gpu_check.md, logs/ and work/")
    parser.add_argument("--cpu-smoke", action="store_true", help="without CUDA: run a CPU-sized version")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget of all steps (default 480 with CUDA, 900 for --cpu-smoke)")
    parser.add_argument("--data-dir", action="append", default=[],
                        help="folder holding Fashion-MNIST (idx or .gz); searched before data/ and "
                             "/usr/share/datasets/fashion-mnist")
    parser.add_argument("--only", nargs="*", default=None, help="run only these steps (by name)")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("error: no CUDA GPU visible (torch.cuda.is_available() is False); run this on a machine "
              "with one, or add --cpu-smoke for the CPU-sized version", file=sys.stderr)
        return 2
    from common.hardware import detect
    from common.io import atomic_write_json, atomic_write_text

    started = time.perf_counter()
    budget = args.budget_s or (480.0 if cuda else 900.0)
    out = Path(args.out).resolve()
    work, logs = out / "work", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    candidates = [Path(d) for d in args.data_dir] + [ROOT / "data", Path("/usr/share/datasets/fashion-mnist")]
    data = prepare_data(work / "data", candidates, None if cuda else 800, None if cuda else 200)
    gpus = torch.cuda.device_count() if cuda else 0
    env = {"PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    print(detect().line(), flush=True)
    results: dict[str, StepResult] = {}
    for step in plan(cuda, gpus, out):
        if args.only is not None and step.name not in args.only:
            continue
        missing = [n for n in step.needs if n in results and results[n].status != "ok"]
        if missing:
            results[step.name] = StepResult(step.name, "skipped", 0.0, None, " ".join(step.argv), "",
                                            tail=f"needs {', '.join(missing)}, which did not pass")
        else:
            left = budget - (time.perf_counter() - started)
            results[step.name] = run_step(step, work, logs, left, env)
            results[step.name].metrics = collect_metrics(results[step.name], work, out)
        r = results[step.name]
        print(f"[gpu-check] {r.name}: {r.status} in {r.seconds:.0f} s", flush=True)
    summary = {"mode": "cuda" if cuda else "cpu-smoke", "machine": detect().line(), "gpus": gpus,
               "data": data, "budget_s": budget, "seconds": round(time.perf_counter() - started, 1),
               "steps": [asdict(r) for r in results.values()]}
    atomic_write_json(out / "gpu_check.json", summary)
    atomic_write_text(out / "gpu_check.md", markdown(summary))
    print(f"[gpu-check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", flush=True)
    return 0 if all(r.status == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
