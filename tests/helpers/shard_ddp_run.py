"""Train a tiny USAE for two epochs with 2 gloo ranks (Lightning ``strategy="ddp"``) streaming from
id-encoding shard stores; every rank writes the rows it saw per epoch to ``<out>/rank<r>.json``.

    python tests/helpers/shard_ddp_run.py ROOT OUT      (ROOT from helpers.shard_stores.write_id_stores)

Lightning's launcher starts rank 1 by running this script again with the same arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import lightning as L  # noqa: E402
import torch  # noqa: E402

from components.sparse_coder import SparseCoderConfig  # noqa: E402
from datamodules.shard_features import ShardFeatureData  # noqa: E402
from lightning_modules.universal_sae import UniversalSAE  # noqa: E402

DIMS = {"a": 6, "b": 5}


class RowsSeen(L.Callback):
    """Per epoch, the global rows of every training batch (column 0 of each backbone encodes it)."""

    def __init__(self, out: Path) -> None:
        self.out, self.epochs, self.aligned, self.val_rows = out, {}, True, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        rows = batch["a"][:, 0].long()
        self.aligned &= bool(torch.equal(rows, batch["b"][:, 0].long()) and torch.equal(rows, batch["row"]))
        self.epochs.setdefault(str(trainer.current_epoch), []).extend(rows.tolist())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val_rows.extend(batch["a"][:, 0].long().tolist())

    def on_fit_end(self, trainer, pl_module):
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
            {"world": trainer.world_size, "epochs": self.epochs, "aligned": self.aligned,
             "val_rows": self.val_rows, "steps": trainer.global_step}))


def main(root: str, out: str) -> None:
    torch.set_num_threads(1)
    data = ShardFeatureData(root, list(DIMS), DIMS, batch_size=8, seed=5, normalization="none",
                            memory_budget_mb=0.01, row_key="row")
    model = UniversalSAE(DIMS, sae=SparseCoderConfig(n_latents=16, k=2, select_dtype="float32"), lr=1e-3)
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[RowsSeen(Path(out))])
    trainer.fit(model, datamodule=data)


if __name__ == "__main__":
    main(*sys.argv[1:3])
