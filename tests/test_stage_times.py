"""scripts/stage_times.py: the per-stage table from a make demo log."""

from __future__ import annotations

from scripts.stage_times import main, parse_log

LOG = """\
python3 -m pip ...
==== [23:58:00] k-sparse autoencoder
start-up: machine: Test CPU; ISA AVX2; CPU bf16 emulated; 2 cores, 2 torch threads; torch 2.x; CUDA none; threads=2
Epoch 0: 10%\r Epoch 0: 100%
[stage fashion_mnist_ksae] done in 95 s
==== [23:59:40] fine-tune ResNet50
[stage fashion_mnist_resnet50] up to date (runs/x/results.json), skipped
==== [23:59:45] universality report
report written to runs/fashion_mnist_usae/main/universality_report
==== [00:01:05] Fashion-MNIST study done: runs/...
==== [00:01:05] Concept explorers: runs/...
"""


def test_parse_log_times_every_stage_across_midnight():
    parsed = parse_log(LOG)
    assert parsed["machine"].startswith("machine: Test CPU; ISA AVX2")
    assert [(s["stage"], s["seconds"]) for s in parsed["stages"]] == [
        ("k-sparse autoencoder", 100), ("fine-tune ResNet50", 5), ("universality report", 80)]
    assert parsed["stages"][0]["note"] == "train.py 95 s" and "skipped" in parsed["stages"][1]["note"]
    assert parsed["total_s"] == 185


def test_unfinished_log_and_side_by_side_table(tmp_path, capsys):
    (tmp_path / "a.log").write_text(LOG)
    (tmp_path / "b.log").write_text(LOG.split("==== [00:01:05]")[0])  # killed during the report
    assert main([f"avx2={tmp_path / 'a.log'}", f"avx512={tmp_path / 'b.log'}", "--out", str(tmp_path / "t.md")]) == 0
    text = (tmp_path / "t.md").read_text()
    assert "| stage | avx2 (s) | avx512 (s) |" in text
    assert "| universality report | 80 | unfinished in this log |" in text
    assert "| **total** | **3.1 min** | **1.8 min** |" in text
    assert main([str(tmp_path / "missing.log")]) == 2
    assert "make demo 2>&1 | tee demo.log" in capsys.readouterr().err


def test_update_replaces_only_the_marked_block(tmp_path):
    (tmp_path / "a.log").write_text(LOG)
    doc = tmp_path / "speed.md"
    doc.write_text("# Speed\n\n<!-- stage-times:begin -->\nold\n<!-- stage-times:end -->\n\nafter\n")
    assert main([f"avx2={tmp_path / 'a.log'}", "--update", str(doc), "--note", "measured on x"]) == 0
    text = doc.read_text()
    assert text.startswith("# Speed\n\n<!-- stage-times:begin -->\nmeasured on x\n")
    assert "old" not in text and "| k-sparse autoencoder | 100 |" in text and text.endswith("-->\n\nafter\n")
    doc.write_text("no markers")
    assert main([str(tmp_path / "a.log"), "--update", str(doc)]) == 2
