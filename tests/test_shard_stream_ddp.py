"""A real two-process gloo DDP run through Lightning's Trainer streaming from shard stores.

Slow: two Python processes. Run with ``python -m pytest -m slow tests/test_shard_stream_ddp.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers.shard_stores import write_id_stores

pytestmark = pytest.mark.slow

BAD = {"a": (3, 40), "b": (40, 77)}


def test_two_ranks_stream_disjoint_aligned_rows_in_lockstep(tmp_path, repo_root):
    write_id_stores(tmp_path / "shards", 101, {"a": 6, "b": 5}, {"a": 16, "b": 12}, bad=BAD)
    write_id_stores(tmp_path / "shards", 17, {"a": 6, "b": 5}, {"a": 16, "b": 12}, splits=("val",))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    done = subprocess.run([sys.executable, str(repo_root / "tests/helpers/shard_ddp_run.py"),
                           str(tmp_path / "shards"), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    good = set(range(101)) - {3, 40, 77}  # 98 good rows: 49 per rank, 7 batches of 8 (the last of 1)
    assert all(r["world"] == 2 and r["aligned"] for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 14
    for epoch in ("0", "1"):
        a, b = (r["epochs"][epoch] for r in ranks)
        assert len(a) == len(b) == 49 and not set(a) & set(b) and set(a) | set(b) == good
    assert ranks[0]["epochs"]["0"] != ranks[0]["epochs"]["1"]  # a new order per epoch
    # validation: row order, contiguous parts of 8 and 9 rows, every row once per epoch
    assert ranks[0]["val_rows"] == list(range(8)) * 2 and ranks[1]["val_rows"] == list(range(8, 17)) * 2
