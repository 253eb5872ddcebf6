"""Benchmark output reaches the docs through scripts/bench_block.py, and the TopK step breakdown adds up."""

from __future__ import annotations

import re

import pytest

from common.errors import UserError
from scripts import bench_block
from helpers.runs import run_script


def test_block_holds_the_command_and_the_saved_output_and_nothing_else_changes(tmp_path):
    doc, out = tmp_path / "speed.md", tmp_path / "bench.md"
    doc.write_text("intro\n<!-- topk:begin -->\nold table\n<!-- topk:end -->\noutro\n")
    out.write_text("machine: TestCPU; ISA AVX2\n\n| part | ms |\n|---|---|\n| floor | 1 |\n")
    bench_block.insert(doc, "topk", out, "python benchmarks/bench_topk_sae.py --cpu-time")
    text = doc.read_text()
    assert text.startswith("intro\n<!-- topk:begin -->\nCommand: `python benchmarks/bench_topk_sae.py --cpu-time`")
    assert "machine: TestCPU; ISA AVX2" in text and "| floor | 1 |" in text
    assert "old table" not in text and text.endswith("<!-- topk:end -->\noutro\n")


def test_missing_markers_or_output_are_one_line_and_leave_the_doc_untouched(tmp_path):
    doc, out = tmp_path / "speed.md", tmp_path / "bench.md"
    doc.write_text("no markers here\n")
    out.write_text("machine: x\n")
    with pytest.raises(UserError, match="no <!-- topk:begin -->"):
        bench_block.insert(doc, "topk", out, "cmd")
    with pytest.raises(UserError, match="does not exist"):
        bench_block.insert(doc, "topk", tmp_path / "missing.md", "cmd")
    assert doc.read_text() == "no markers here\n"


def test_step_breakdown_lists_every_part_and_its_total_is_at_least_the_floor(repo_root):
    done = run_script(repo_root, "benchmarks/bench_topk_sae.py", "--quick", "--breakdown", "--cpu-time", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("machine: ")
    for part in ("encode", "backward", "Adam", "gradient projection", "renormalisation"):
        assert f"| {part}" in done.stdout
    ratios = [float(r) for r in re.findall(r"\*\*(\d+\.\d+)x\*\*", done.stdout)]
    assert len(ratios) == 2 and all(r >= 1.0 for r in ratios)  # the step includes the floor's matmul
