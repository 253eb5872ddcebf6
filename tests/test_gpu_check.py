"""scripts/gpu_check.sh: one clear line without a GPU, a CPU-sized version that never hangs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scripts.gpu_check import Step, main, run_step

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def gpu_check(repo_root, *args, timeout=120):
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=repo_root, capture_output=True,
                          text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable,
                                                           "OMP_NUM_THREADS": "1", "HOME": str(repo_root)})


@no_cuda
def test_without_cuda_one_line_exit_2_nothing_written(repo_root, tmp_path):
    start = time.perf_counter()
    done = gpu_check(repo_root, str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("error: no CUDA GPU visible") and "--cpu-smoke" in done.stderr
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - start < 60


def test_usage_without_out_dir(repo_root):
    done = gpu_check(repo_root)
    assert done.returncode == 2 and done.stderr.startswith("usage: bash scripts/gpu_check.sh OUT_DIR")


def test_a_step_past_its_timeout_is_killed_with_its_children(tmp_path):
    """A hung step (here: a sleeping child of a sleeping parent) ends at its timeout, group and all."""
    pid_file = tmp_path / "child.pid"
    code = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    start = time.perf_counter()
    result = run_step(Step("hang", [sys.executable, "-c", code], timeout_s=3), tmp_path, tmp_path, budget_left=100)
    assert result.status == "timeout" and result.returncode is None
    assert time.perf_counter() - start < 20
    status = Path(f"/proc/{int(pid_file.read_text())}/status")
    time.sleep(0.5)
    # gone, or a zombie waiting for its new parent to reap it: not running either way
    assert not status.exists() or "\tZ" in status.read_text().split("State:")[1].splitlines()[0]


def test_no_budget_left_skips(tmp_path):
    result = run_step(Step("late", [sys.executable, "-c", "print(1)"], timeout_s=30), tmp_path, tmp_path, budget_left=2)
    assert result.status == "skipped" and "budget" in result.tail


@no_cuda
def test_cpu_smoke_with_a_tiny_budget_reports_and_stops(tmp_path, monkeypatch):
    """The CPU path with 8 s for everything: the first step times out, the rest are skipped, and
    the JSON and markdown summary are still written."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    code = main([str(tmp_path / "out"), "--cpu-smoke", "--budget-s", "8"])
    assert code == 1 and time.perf_counter() - start < 60
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert summary["mode"] == "cpu-smoke" and summary["machine"].startswith("machine: ")
    assert statuses["resnet50"] in ("timeout", "failed") and statuses["universality_report"] == "skipped"
    assert set(statuses.values()) <= {"timeout", "failed", "skipped"}
    assert "| resnet50 |" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
@no_cuda
def test_cpu_smoke_runs_every_step(repo_root, tmp_path):
    """The whole CPU-sized check passes: backbones, cache, both SAEs, the report, the benchmarks."""
    done = gpu_check(repo_root, str(tmp_path / "out"), "--cpu-smoke", timeout=1200)
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert done.returncode == 0, (statuses, done.stdout[-2000:])
    assert set(statuses) >= {"resnet50", "mobilenet_v3_large", "activation_cache", "usae", "independent",
                             "universality_report", "bench_topk_fp32", "bench_topk_bf16", "bench_extraction"}
    steps = {s["name"]: s for s in summary["steps"]}
    assert 0.0 <= steps["resnet50"]["metrics"]["test"]["test/acc"] <= 1.0
    assert steps["resnet50"]["startup"].startswith("start-up: machine: ")
    assert any(line.startswith("| ours |") for line in steps["bench_topk_bf16"]["metrics"]["tables"])
    assert steps["bench_extraction"]["metrics"]["images_per_s"]["ours"] > 0
