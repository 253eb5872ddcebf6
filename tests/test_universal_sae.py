"""UniversalSAE (joint and paper modes) and IndependentSAEs trained through a Lightning Trainer on
small synthetic aligned features; the universality logger; checkpoints; bad input."""

from __future__ import annotations

import csv
import random
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from callbacks.universality_logger import UniversalityLogger
from benchmarks.overcomplete_backend import overcomplete_bank
from common.errors import UserError
from components.sparse_coder import SparseCoderConfig
from lightning_modules.independent_saes import IndependentSAEs
from lightning_modules.universal_sae import UniversalSAE
from usae_synthetic import AlignedFeatures, make_features

DIMS = {"alpha": 24, "beta": 16}
def small(**sae_options) -> dict:
    """System arguments of a small USAE; float32 select, so runs compare exactly on any CPU."""
    return dict(sae=SparseCoderConfig(**{"n_latents": 64, "k": 4, "select_dtype": "float32", **sae_options}),
                lr=3e-3)


SMALL = small()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: extra threads only fight other processes on 2 cores."""


@pytest.fixture(scope="module")
def data():
    feats = make_features(DIMS, n=2560, seed=0)
    return {k: v[:2048] for k, v in feats.items()}, {k: v[2048:] for k, v in feats.items()}


def _loaders(data, batch_size=128, shuffle=True):
    train, val = data
    return (DataLoader(AlignedFeatures(train), batch_size=batch_size, shuffle=shuffle),
            DataLoader(AlignedFeatures(val), batch_size=256))


def _trainer(**kw):
    args = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(**(args | kw))


class _Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def _fit(model, data, epochs=5, **kw):
    losses = _Losses()
    trainer = _trainer(max_epochs=epochs, callbacks=[losses, *kw.pop("callbacks", [])], **kw)
    trainer.fit(model, *_loaders(data))
    return trainer, losses.losses


def test_joint_usae_learns_and_beats_independent_saes_on_cross_r2(data):
    usae = UniversalSAE(DIMS, mode="joint", **SMALL)
    shapes = {n: p.shape for n, p in usae.named_parameters()}
    trainer, losses = _fit(usae, data)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    usae_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {n: p.shape for n, p in usae.named_parameters()} == shapes
    for name in DIMS:
        torch.testing.assert_close(usae.dictionary(name).norm(dim=1), torch.ones(64))

    indep = IndependentSAEs(DIMS, **SMALL)
    trainer, losses = _fit(indep, data)
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    indep_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert usae_metrics["val/r2_cross_mean"] > indep_metrics["val/r2_cross_mean"] + 0.2
    assert usae_metrics["val/r2_self_mean"] > 0.2 and indep_metrics["val/r2_self_mean"] > 0.4
    assert usae_metrics["val/l0_mean"] <= 4


def test_paper_mode_steps_only_the_drawn_model(data):
    usae = UniversalSAE(DIMS, mode="paper", **SMALL)
    drawn = usae.train_sources()  # global step 0
    before = {n: p.detach().clone() for n, p in usae.named_parameters()}
    _trainer(max_steps=1, limit_val_batches=0).fit(usae, _loaders(data)[0])
    changed = {n for n, p in usae.named_parameters() if not torch.equal(p, before[n])}
    (src,) = drawn
    other = next(n for n in DIMS if n != src)
    assert {f"bank.saes.{src}.encoder.weight", f"bank.saes.{src}.decoder.weight",
            f"bank.saes.{src}.encoder.bias"} <= changed
    assert not any(f"saes.{other}." in n for n in changed)


def test_paper_mode_draw_is_seeded_by_step_not_by_global_rng():
    a, b = UniversalSAE(DIMS, mode="paper", seed=3, **SMALL), UniversalSAE(DIMS, mode="paper", seed=3, **SMALL)
    draws = []
    for model, rng_seed in ((a, 0), (b, 123)):
        torch.manual_seed(rng_seed)
        random.seed(rng_seed)
        seq = []
        for step in range(40):
            with mock.patch.object(type(model), "global_step", step):
                seq.extend(model.train_sources())
        draws.append(seq)
    assert draws[0] == draws[1] and set(draws[0]) == set(DIMS)


def test_paper_mode_every_scheduler_follows_the_global_step(data):
    usae = UniversalSAE(DIMS, mode="paper", warmup_steps=100, **SMALL)
    trainer = _trainer(max_steps=7, limit_val_batches=0)
    trainer.fit(usae, _loaders(data)[0])
    assert trainer.global_step == 7
    lrs = [opt.param_groups[0]["lr"] for opt in trainer.optimizers]
    assert len(lrs) == 2 and all(lr == pytest.approx(3e-3 * 8 / 100) for lr in lrs)


def test_overcomplete_backend_same_weights_same_metrics(data):
    ours = UniversalSAE(DIMS, **SMALL)
    oc = UniversalSAE(DIMS, **SMALL)
    oc.bank = overcomplete_bank(DIMS, ours.sae_config, weights_from=ours.bank)
    val = _loaders(data)[1]
    r_ours = _trainer().validate(ours, val, verbose=False)[0]
    r_oc = _trainer().validate(oc, val, verbose=False)[0]
    for key in ("val/r2_self_mean", "val/r2_cross_mean", "val/loss", "val/dead_fraction"):
        assert r_ours[key] == pytest.approx(r_oc[key], rel=1e-4, abs=1e-5), key
    _, losses = _fit(oc, data, epochs=1)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_checkpoint_round_trip_with_load_from_checkpoint(data, tmp_path):
    model = UniversalSAE(DIMS, **small(pre_bias=True, aux_k=8, dead_window=256))
    trainer, _ = _fit(model, data, epochs=1)
    assert model.bank.saes["alpha"].b_dec.abs().sum() > 0  # pre-bias was set from data
    path = tmp_path / "usae.ckpt"
    trainer.save_checkpoint(path)
    loaded = UniversalSAE.load_from_checkpoint(path)
    assert loaded.hparams.feature_dims == DIMS and loaded.hparams.sae["pre_bias"]
    assert loaded.sae_config == model.sae_config and model.hparams.select_dtype_resolved == "float32"
    x = data[1]["beta"][:16]
    model.eval()
    loaded.eval()
    with torch.no_grad():
        codes = model.encode("beta", x)
        torch.testing.assert_close(loaded.encode("beta", x).indices.sort(1).values, codes.indices.sort(1).values)
        torch.testing.assert_close(loaded.decode("alpha", codes), model.decode("alpha", codes))
        assert loaded.dense_codes("beta", x).shape == (16, 64)
    indep = IndependentSAEs(DIMS, **SMALL)
    t = _trainer(max_steps=1, limit_val_batches=0)
    t.fit(indep, _loaders(data)[0])
    t.save_checkpoint(tmp_path / "indep.ckpt")
    back = IndependentSAEs.load_from_checkpoint(tmp_path / "indep.ckpt")
    assert set(back.state_dict()) == set(indep.state_dict())
    torch.testing.assert_close(back.dictionary("alpha"), indep.dictionary("alpha"))


def test_logger_callback_writes_csv_numbers_and_wandb_figures(data, tmp_path):
    wandb_logger = mock.MagicMock(spec=WandbLogger)
    wandb_logger.save_dir = None
    loggers = [CSVLogger(tmp_path, name="run"), wandb_logger]
    _fit(UniversalSAE(DIMS, **SMALL), data, epochs=1, logger=loggers, callbacks=[UniversalityLogger()],
         log_every_n_steps=4)
    rows = list(csv.DictReader(open(tmp_path / "run" / "version_0" / "metrics.csv")))
    cols = set(rows[0])
    for key in ("val/r2/alpha->beta", "val/r2/beta->alpha", "val/r2/alpha->alpha", "val/dead_fraction",
                "val/dead_fraction/beta", "val/r2_self_mean", "val/entropy_mean", "train/loss", "train/loss_epoch"):
        assert key in cols, key
    val_rows = [r for r in rows if r["val/r2/alpha->beta"]]
    assert len(val_rows) == 1 and -10 < float(val_rows[0]["val/r2/alpha->beta"]) <= 1
    import wandb

    logged = [c.args[0] for c in wandb_logger.experiment.log.call_args_list]
    assert any(isinstance(d.get("val/entropy_hist"), wandb.Image) for d in logged)


def test_bf16_mixed_precision_trains(data):
    _, losses = _fit(UniversalSAE(DIMS, **SMALL), data, epochs=1, precision="bf16-mixed", limit_train_batches=4)
    assert len(losses) == 4 and all(l == l for l in losses)


def _batch(rows=8):
    return {"alpha": torch.rand(rows, 24), "beta": torch.rand(rows, 16)}


def test_bad_input_is_one_line_user_error(data):
    with pytest.raises(UserError, match="k=64"):
        UniversalSAE(DIMS, sae=SparseCoderConfig(n_latents=64, k=64))
    with pytest.raises(UserError, match="k=64"):  # as a checkpoint's hparams give it
        UniversalSAE(DIMS, sae={"n_latents": 64, "k": 64})
    with pytest.raises(UserError, match="model.lr=0"):
        UniversalSAE(DIMS, **{**SMALL, "lr": 0.0})
    with pytest.raises(UserError, match="model.warmup_steps=-1"):
        UniversalSAE(DIMS, warmup_steps=-1, **SMALL)
    with pytest.raises(UserError, match="loss_normalisation='l1'"):
        UniversalSAE(DIMS, loss_normalisation="l1", **SMALL)
    with pytest.raises(UserError, match="at least 2 backbones"):
        UniversalSAE({"alpha": 24}, **SMALL)
    model = UniversalSAE(DIMS, **SMALL)
    bad = _batch()
    bad["beta"] = torch.rand(8, 17)
    with pytest.raises(UserError, match=r"batch 3: model 'beta'.*\(8, 17\).*expected \(batch, 16\)"):
        model.bank.check_batch(bad, 3)
    bad = _batch()
    bad["alpha"] = torch.rand(7, 24)
    with pytest.raises(UserError, match="different row counts"):
        model.bank.check_batch(bad, 0)
    with pytest.raises(UserError, match="no features for model 'beta'"):
        model.bank.check_batch({"alpha": torch.rand(8, 24)}, 0)
    train, val = data
    poisoned = {k: v.clone() for k, v in train.items()}
    poisoned["beta"][5 * 128 + 3, 2] = float("nan")
    loader = DataLoader(AlignedFeatures(poisoned), batch_size=128)
    with pytest.raises(UserError, match="batch 5: NaN or inf in the features of beta") as err:
        _trainer(max_epochs=1, limit_val_batches=0).fit(model, loader)
    assert "\n" not in str(err.value)
    assert model.global_step == 5  # stopped before stepping on the bad batch
