"""The shared LR schedule reproduces the three schedules it replaced; the before/after table script."""

from __future__ import annotations

import json
import math

import pytest

from components.schedules import warmup_cosine
from scripts.compare_results import main as compare_main


def _sae_bank_lr_lambda(step, warmup, total, cosine):  # the SAE systems' former schedule
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if not cosine or total <= warmup:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _ksae_factor(step, total, hold, floor):  # the k-sparse AE's former hold-then-cosine
    done = min(max(step - hold, 0), total - hold) / max(1, total - hold)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))


@pytest.mark.parametrize("warmup, total, cosine", [(0, 100, True), (10, 100, True), (10, 100, False), (20, 15, True)])
def test_warmup_cosine_equals_the_former_sae_schedule(warmup, total, cosine):
    for step in range(0, total + 5):
        assert warmup_cosine(step, total, warmup=warmup, hold=warmup, cosine=cosine) == pytest.approx(
            _sae_bank_lr_lambda(step, warmup, total, cosine))


@pytest.mark.parametrize("hold, floor", [(0, 0.0), (50, 0.0), (50, 0.1)])
def test_warmup_cosine_equals_the_former_ksae_schedule(hold, floor):
    total = 120
    for step in range(0, total + 5):
        assert warmup_cosine(step, total, hold=hold, final=floor) == pytest.approx(_ksae_factor(step, total, hold, floor))
    assert warmup_cosine(total, total, hold=hold, final=floor) == pytest.approx(floor)


def test_compare_results_table_and_errors(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"test": {"test/loss": 0.5, "test/dead_fraction": 0.0}}))
    b.write_text(json.dumps({"test": {"test/loss": 0.25, "test/only_b": 1.0}}))
    assert compare_main([str(a), str(b)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| `test/loss` | 0.5 | 0.25 | -0.25 |" and len(out) == 3
    assert compare_main([str(a), str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert compare_main([str(a), str(b), "--keys", "test/dead_fraction"]) == 2
