"""docs/at_scale.md's benchmark tables come from the benchmarks' JSON (scripts/at_scale_tables.py)."""

from __future__ import annotations

import json

from common.io import replace_between_markers
from scripts import at_scale_tables as at


def _rank(peak: float, start: float) -> dict:
    return {"peak_rss_mb": peak, "rss_at_train_start_mb": start, "peak_over_start_mb": peak - start,
            "steps_per_s": 2.0, "aligned": True, "batches_checked": 6}


STREAMING = {"machine": "machine: TestCPU; ISA AVX2", "args": {
    "store": "artifacts/shards/synthetic", "names": ["a", "b"], "steps": 300, "batch_size": 1024,
    "memory_budget_mb": 1024.0, "rows_in_memory": 100000, "n_latents": 4096, "k": 32},
    "stream": {"ranks": [_rank(1500.4, 900), _rank(1490, 905)], "steps_per_s": 1.9, "wall_s": 200.2},
    "memory": {"ranks": [_rank(2500, 2400), _rank(2510, 2400)], "steps_per_s": 2.0, "wall_s": 190},
    "rows_seen_per_rank": [307200, 307200], "ranks_disjoint_within_epoch": True, "aligned": True,
    "throughput_ratio_stream_over_memory": 0.95}
EXTRACTION = {"machine": "machine: TestCPU; ISA AVX2", "images": 20000, "side": 32, "arch": "resnet18",
              "shard_rows": 1024, "batch_size": 128, "threads_per_process": 1, "workers_per_process": 1,
              "one_process": {"rows": 20000, "processes": 1, "seconds": 100.0, "images_per_s": 200.0},
              "two_processes": {"rows": 20000, "processes": 2, "seconds": 55.0, "images_per_s": 363.6},
              "ratio_two_over_one": 1.818, "kill": {"train_shards_before_kill": 6, "train_shards": 18,
                                                     "resume": {"rows": 13000}},
              "checks": {"two_equals_one": True, "resumed_equals_unbroken": False}, "shards": 22}


def test_tables_replace_only_their_blocks_and_carry_the_machine_and_the_figures(tmp_path):
    page = tmp_path / "at_scale.md"
    page.write_text("intro\n<!-- bench-extraction:begin -->\nold\n<!-- bench-extraction:end -->\nmiddle\n"
                    "<!-- bench-streaming:begin -->\n<!-- bench-streaming:end -->\nend\n")
    (tmp_path / "s.json").write_text(json.dumps(STREAMING))
    (tmp_path / "e.json").write_text(json.dumps(EXTRACTION))
    assert at.main(["--update", str(page), "--streaming", str(tmp_path / "s.json"),
                    "--extraction", str(tmp_path / "e.json"), str(tmp_path / "e.json")]) == 0
    text = page.read_text()
    assert text.startswith("intro\n") and "\nmiddle\n" in text and text.endswith("end\n") and "old" not in text
    assert text.count("machine: TestCPU") == 3  # streaming + two extraction runs
    assert "| streamed from the shard store, budget 1024 MiB per rank | 1.90 | 1500, 1490 | 900, 905 | 200 |" in text
    assert "streamed / in-memory steps/s: **0.950**" in text
    assert "| 2 | 20,000 | 55.0 | 364 |" in text and "**1.82×**" in text
    assert "the resumed cache equals the unbroken one: **False**" in text  # a failed check shows as failed
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- at-scale:begin -->\n<!-- at-scale:end -->\n")
    assert at.main(["--update", str(page), "--streaming", str(tmp_path / "s.json"),
                    "--extraction", str(tmp_path / "e.json"), str(tmp_path / "e.json"), "--readme", str(readme)]) == 0
    summary = readme.read_text()
    assert "peak RSS 1500 MiB per rank, 0.95× the steps/s" in summary and "614,400 rows seen" in summary
    assert "2 processes over 1: 1.82× with 1 decoding worker(s) per process, 1.82×" in summary
    assert "unbroken run's: False" in summary


def test_missing_json_or_markers_fail_with_one_line_and_leave_the_page(tmp_path, capsys):
    page = tmp_path / "at_scale.md"
    page.write_text("no markers\n")
    assert at.main(["--update", str(page), "--streaming", str(tmp_path / "absent.json")]) == 2
    assert "bench_streaming.py" in capsys.readouterr().err
    (tmp_path / "s.json").write_text(json.dumps(STREAMING))
    assert at.main(["--update", str(page), "--streaming", str(tmp_path / "s.json")]) == 2
    assert page.read_text() == "no markers\n"
    assert not replace_between_markers(page, "<!-- a -->", "<!-- b -->", "x")
