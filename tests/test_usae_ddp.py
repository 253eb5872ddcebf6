"""Two CPU processes (gloo DDP) give the same metrics, and the same training, as one process.

Slow: each run spawns two Python processes. Run with ``python -m pytest -m slow tests/test_usae_ddp.py``.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler

from components.sparse_coder import SparseCoderConfig
from lightning_modules.universal_sae import UniversalSAE
from usae_synthetic import AlignedFeatures, make_features

pytestmark = pytest.mark.slow

DIMS = {"alpha": 24, "beta": 16, "gamma": 12}
SMALL = dict(sae=SparseCoderConfig(n_latents=64, k=4, select_dtype="float32"), lr=3e-3)
KEYS = ("val/r2_self_mean", "val/r2_cross_mean", "val/dead_fraction", "val/l0_mean", "val/loss")


class _WeightsAgreeAcrossRanks(L.Callback):
    """At the end of training, every rank writes the largest parameter gap to rank 0's weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()])
        gathered = trainer.strategy.all_gather(flat)  # (world, P)
        gap = float((gathered - gathered[0]).abs().max()) if gathered.ndim == 2 else 0.0
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump({"gap": gap, "world": trainer.world_size}, fh)


class _Aligned(L.LightningDataModule):
    """Global batch ``batch`` split over the ranks as an unshuffled DistributedSampler would.

    (Lightning's own DDP sampler always shuffles training data, so it is off here to make the
    two-process run see exactly the global batches of the one-process run.)
    """

    def __init__(self, train, val, batch: int) -> None:
        super().__init__()
        self.train, self.val, self.batch = train, val, batch

    def _loader(self, features):
        ds = AlignedFeatures(features)
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(ds, batch_size=self.batch // world, sampler=sampler)

    def train_dataloader(self):
        return self._loader(self.train)

    def val_dataloader(self):
        return self._loader(self.val)


@pytest.fixture(scope="module")
def data():
    feats = make_features(DIMS, n=1024 + 512, seed=1)
    return {k: v[:1024] for k, v in feats.items()}, {k: v[1024:] for k, v in feats.items()}


@pytest.fixture(autouse=True)
def _one_thread_per_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # inherited by the spawned ranks


def _trainer(devices: int, strategy, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kw)


def _loader(features, batch_size):
    return DataLoader(AlignedFeatures(features), batch_size=batch_size, shuffle=False)


def _metrics(results) -> dict[str, float]:
    return {k: float(results[k]) for k in KEYS}


def test_validation_metrics_identical_on_two_processes(data):
    model = UniversalSAE(DIMS, **SMALL)
    one = _trainer(1, "auto").validate(model, _loader(data[1], 64), verbose=False)[0]
    two = _trainer(2, "ddp_spawn").validate(model, _loader(data[1], 64), verbose=False)[0]
    for key in KEYS:
        assert one[key] == pytest.approx(two[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("mode", ["joint", "paper"])
def test_two_process_training_matches_one_process(data, tmp_path, mode):
    """Global batch 128 as 2×64 over two ranks trains like batch 128 in one process."""
    single = UniversalSAE(DIMS, mode=mode, **SMALL)
    t1 = _trainer(1, "auto", max_epochs=1, use_distributed_sampler=False)
    t1.fit(single, datamodule=_Aligned(*data, batch=128))

    ddp = UniversalSAE(DIMS, mode=mode, **SMALL)
    # paper mode leaves the undrawn encoders without gradient in every step
    strategy = DDPStrategy(start_method="spawn", find_unused_parameters=(mode == "paper"))
    t2 = _trainer(2, strategy, max_epochs=1, use_distributed_sampler=False,
                  callbacks=[_WeightsAgreeAcrossRanks(str(tmp_path))])
    t2.fit(ddp, datamodule=_Aligned(*data, batch=128))

    gaps = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(g["world"] == 2 and g["gap"] == 0.0 for g in gaps), gaps  # ranks stayed in lockstep
    a, b = _metrics(t1.callback_metrics), _metrics(t2.callback_metrics)
    for key in KEYS:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (key, a, b)
    for (name, p), q in zip(single.named_parameters(), ddp.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
