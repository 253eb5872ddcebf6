"""scripts/stage.py trusts nothing it finds: garbage results.json / config.yaml, truncated checkpoints,
results of another config, names outside run.root. In-process through ``stage.prepare``; the
subprocess end-to-end runs are in test_pipeline.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers.runs import tiny_ksae_args, tree_state
from scripts import stage


def finished(tmp_path: Path, data_dir: Path, version: str = "main") -> tuple[dict, Path, list[str]]:
    """Fit a tiny run in-process; (the composed config as stage.py sees it, the run folder, args)."""
    import train

    args = tiny_ksae_args(tmp_path, data_dir, version)
    cli = train.main(args)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    return config, tmp_path / "fashion_mnist_ksae" / version, args


@pytest.fixture
def run(tmp_path, fashion_data_dir):
    return finished(tmp_path, fashion_data_dir)


def test_finished_run_is_up_to_date_and_left_alone(run):
    config, run_dir, _ = run
    before = tree_state(run_dir)
    said = []
    assert stage.prepare(config, [], say=said.append).extra is None
    assert said == [f"[stage fashion_mnist_ksae] up to date ({run_dir / 'results.json'}), skipped"]
    assert tree_state(run_dir) == before


def test_an_input_newer_than_the_run_reruns_it_and_an_older_one_does_not(run, tmp_path):
    import os
    import time

    config, run_dir, _ = run
    upstream = tmp_path / "upstream.json"
    upstream.write_text("{}")
    past = (run_dir / "config.yaml").stat().st_mtime - 60
    os.utime(upstream, (past, past))
    said = []
    assert stage.prepare(config, [upstream], say=said.append).extra is None and "up to date" in said[0]
    later = time.time() + 5  # the earlier stage ran again and rewrote its output
    os.utime(upstream, (later, later))
    said.clear()
    plan = stage.prepare(config, [upstream], say=said.append)
    assert plan.extra == [] and "newer input" in said[0]
    assert (run_dir.parent / "main.stale-1" / "results.json").exists() and not run_dir.exists()


def test_garbage_results_json_is_not_done_and_moved_aside(run):
    config, run_dir, _ = run
    (run_dir / "results.json").write_bytes(b"\x00\xffnot json")
    said = []
    plan = stage.prepare(config, [], say=said.append)
    assert plan.extra == ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]
    assert (run_dir / "results.json.corrupt-1").read_bytes() == b"\x00\xffnot json"
    assert len(said) == 1 and "results.json is unreadable" in said[0] and "corrupt-1" in said[0]


def test_results_of_another_config_are_not_up_to_date(run):
    """A results.json whose digest is not this config's (config.yaml rewritten by hand, or by an older
    train.py before it failed) is not taken for this config's result."""
    config, run_dir, _ = run
    results = json.loads((run_dir / "results.json").read_text())
    results["config_sha256"] = "0" * 64
    (run_dir / "results.json").write_text(json.dumps(results))
    said = []
    assert stage.prepare(config, [], say=said.append).extra == []
    assert (run_dir.parent / "main.stale-1" / "results.json").exists() and not run_dir.exists()
    assert "results.json is of another config" in said[0]


def test_changed_config_moves_the_run_aside_and_a_failed_start_puts_it_back(run, monkeypatch, capsys):
    config, run_dir, args = run
    before = tree_state(run_dir)
    changed = {**config, "data": {**config["data"], "init_args": {**config["data"]["init_args"], "image_size": 32}}}
    monkeypatch.setattr(stage, "composed_config", lambda _: changed)
    monkeypatch.setattr(stage.subprocess, "call", lambda *a, **k: 2)  # train.py refuses the config
    assert stage.main(args) == 2
    out = capsys.readouterr().out
    assert "config changed: old run moved to" in out and "the old run is back" in out
    assert tree_state(run_dir) == before and not (run_dir.parent / "main.stale-1").exists()


def test_garbage_config_yaml_is_one_line_and_moved_aside(run):
    config, run_dir, _ = run
    (run_dir / "config.yaml").write_bytes(bytes(range(256)))
    said = []
    assert stage.prepare(config, [], say=said.append).extra == []
    stale = run_dir.parent / "main.stale-1"
    assert (stale / "config.yaml").read_bytes() == bytes(range(256)) and (stale / "metrics.csv").exists()
    assert len(said) == 1 and "config.yaml is unreadable" in said[0] and str(stale) in said[0]


def test_truncated_last_ckpt_resumes_from_the_newest_valid_checkpoint(run, fashion_data_dir):
    import train

    config, run_dir, args = run
    (run_dir / "results.json").unlink()  # killed before the end
    last = run_dir / "checkpoints" / "last.ckpt"
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 3])
    (epoch,) = run_dir.glob("checkpoints/epoch*.ckpt")
    said = []
    plan = stage.prepare(config, [], say=said.append)
    assert plan.extra == ["--ckpt_path", str(epoch)]
    assert (run_dir / "checkpoints" / "last.ckpt.corrupt-1").stat().st_size == len(whole) // 3
    assert len(said) == 1 and "is unreadable" in said[0] and f"resuming from {epoch}" in said[0]
    rows_before = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    train.main([*args, *plan.extra])  # the resume works and keeps the history
    assert json.loads((run_dir / "results.json").read_text())["config_sha256"] == stage.config_digest(config)
    rows_after = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows_after) > len(rows_before) // 2 and rows_after[1:3] == rows_before[:2]


def test_no_valid_checkpoint_moves_the_run_aside_and_starts_fresh(run):
    config, run_dir, _ = run
    (run_dir / "results.json").unlink()
    for path in run_dir.glob("checkpoints/*.ckpt"):
        path.write_bytes(b"PK\x03\x04 truncated")
    said = []
    assert stage.prepare(config, [], say=said.append).extra == []
    stale = run_dir.parent / "main.stale-1"
    assert (stale / "checkpoints" / "last.ckpt.corrupt-1").exists() and not run_dir.exists()
    assert len(said) == 1 and "starting fresh" in said[0]


@pytest.mark.parametrize("key, value", [("name", "../../x"), ("version", "../../../x"), ("version", "a/b")])
def test_stage_refuses_names_outside_the_root(tmp_path, key, value):
    from common.errors import UserError

    config = {"run": {"root": str(tmp_path / "runs"), "name": "n", "version": "v", key: value}}
    with pytest.raises(UserError, match=f"run.{key} '.*' must be letters.*one folder name"):
        stage.prepare(config, [])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("version", [None, ""])
def test_stage_needs_a_pinned_run_version(tmp_path, version):
    from common.errors import UserError

    config = {"run": {"root": str(tmp_path / "runs"), "name": "n", "version": version}}
    with pytest.raises(UserError, match="needs a fixed run folder: set run.version"):
        stage.prepare(config, [])
    assert list(tmp_path.iterdir()) == []


def test_missing_after_file_is_refused_before_anything_moves(run, tmp_path):
    from common.errors import UserError

    config, run_dir, _ = run
    before = tree_state(run_dir)
    with pytest.raises(UserError, match="does not exist; run the stage that writes it first"):
        stage.prepare(config, [tmp_path / "missing.json"])
    assert tree_state(run_dir) == before
