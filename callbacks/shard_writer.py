"""``ShardWriter``: a ``BasePredictionWriter`` that exports predicted feature rows as complete shards.

Rows arrive batch by batch (``FeatureExtraction.predict_step``); each shard's rows are gathered in
one preallocated ``(shard_rows, d)`` array of the store's dtype and written (atomically, with its
manifest entry) the moment its last row arrives, so a killed run leaves only complete shards.
Rows whose image could not be decoded are zeros and listed in the shard's ``bad_rows``.
"""

from __future__ import annotations

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from features.shards import ShardStore


class ShardWriter(BasePredictionWriter):
    """Writes the shards of the current ``stores`` (split → ``ShardStore``) as they complete.

    The trainer's datamodule says which split each predict loader holds (``loader_splits``) and
    how many rows each split has (``totals``), as ``ShardExtractionData`` does. After a run:
    ``written`` lists ``(split, shard index)`` written by this rank, ``bad_rows`` counts the
    undecodable rows recorded.
    """

    def __init__(self, stores: dict[str, ShardStore] | None = None) -> None:
        super().__init__(write_interval="batch")
        self.stores = stores or {}
        self.written: list[tuple[str, int]] = []
        self.bad_rows = 0
        self._open: dict[tuple[str, int], dict] = {}

    def on_predict_start(self, trainer, pl_module) -> None:
        self._open.clear()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx: int = 0) -> None:
        data = trainer.datamodule
        split = data.loader_splits[dataloader_idx]
        store, total = self.stores[split], data.totals[split]
        rows = prediction["rows"].numpy()
        features = prediction["features"].numpy()
        index = int(rows[0]) // store.shard_rows
        start, stop = store.shard_range(index, total)
        if rows[-1] >= stop or not np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            raise RuntimeError(f"batch rows {rows[0]}..{rows[-1]} are not consecutive rows of shard {index}")
        shard = self._open.get((split, index))
        if shard is None:
            shard = {"rows": np.zeros((stop - start, features.shape[1]), dtype=store.dtype),
                     "filled": 0, "bad": []}
            if features.shape[1] != store.dim:  # one-line UserError from the store
                store.write_shard(index, start, features)
            self._open[(split, index)] = shard
        local = rows - start
        shard["rows"][local] = features
        for offset, problem in zip(local.tolist(), prediction["problems"]):
            if problem:
                shard["rows"][offset] = 0
                shard["bad"].append(offset)
        shard["filled"] += len(rows)
        if shard["filled"] == stop - start:
            store.write_shard(index, start, shard["rows"], shard["bad"])
            self.bad_rows += len(shard["bad"])
            self.written.append((split, index))
            del self._open[(split, index)]
