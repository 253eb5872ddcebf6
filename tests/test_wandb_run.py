"""``analysis.wandb_run``: the analyses' one W&B writer (offline runs beside the report folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.wandb_run import log_analysis, wandb_dir
from common.run_options import WandbOptions

pytest.importorskip("wandb")


def test_log_analysis_writes_one_offline_run_beside_the_report(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("WANDB_MODE", "offline")
    report = tmp_path / "study" / "report"
    report.mkdir(parents=True)
    plt.imsave(report / "fig.png", np.zeros((4, 4)))
    folder = log_analysis(WandbOptions(enabled=True, mode="offline", tags=["t"]), "test/run", report, "analysis",
                          figures={"figures/fig": report / "fig.png"},
                          tables={"tab": (["a", "b"], [[1, "x"], [2, None], [3, object()]])},
                          numbers={"acc": 0.5, "name": "skipped"}, config={"k": 4})
    runs = list(wandb_dir(report).glob("**/offline-run-*"))
    assert len(runs) == 1 and str(runs[0]) == folder and list(runs[0].glob("run-*.wandb"))
    assert len(list(runs[0].glob("**/media/images/figures/*.png"))) == 1
    tables = list(runs[0].glob("**/media/table/**/*.json"))
    assert len(tables) == 1 and len(json.loads(tables[0].read_text())["data"]) == 3
    assert not list(report.glob("*wandb*")), "the report folder holds only the report"


def test_disabled_writes_nothing(tmp_path):
    assert log_analysis(WandbOptions(enabled=False), "off", tmp_path / "report", "analysis") is None
    assert not wandb_dir(tmp_path / "report").exists()
