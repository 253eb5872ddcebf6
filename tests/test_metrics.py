"""Universality metrics against direct numpy computations, and invariance to batch splitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import UserError
from metrics.active_units import ActiveUnits
from metrics.universality import (CoFiring, DeadFraction, FiringCounts, FiringEntropy, FiringOptions, L0, R2Matrix,
                                 UniversalityMetrics)

DIMS = [7, 5, 6]
NL = 12  # latents
S = 90  # samples


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: extra threads only fight other processes on 2 cores."""


def _data(seed=0):
    """Non-negative features (like CNN activations), noisy reconstructions, sparse codes."""
    rng = np.random.default_rng(seed)
    feats = [rng.gamma(2.0, 1.0, size=(S, d)) + 3.0 * rng.random(d) for d in DIMS]
    recons = [[f + rng.normal(0, 0.3 + 0.2 * i, size=f.shape) for f in feats] for i in range(len(DIMS))]
    codes = []
    for m in range(len(DIMS)):
        c = rng.random((S, NL)) * (rng.random((S, NL)) < 0.3)
        c[:, -2:] = 0.0  # two latents never fire in any model: dead
        c[:, m] = 0.0  # latent m never fires in model m only
        codes.append(c)
    codes[0][:, 5] = np.where(codes[0][:, 5] > 0, 0.05, 0.0)  # fires only below threshold 0.1
    return feats, recons, codes


def _t(a):
    return torch.as_tensor(a, dtype=torch.float32)


def _splits(n, seed):
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), size=4, replace=False))
    return list(zip([0, *cuts], [*cuts, n]))


def _numpy_r2(feats, recons):
    m = len(feats)
    out = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            x, xh = feats[j].astype(np.float32).astype(np.float64), recons[i][j].astype(np.float32).astype(np.float64)
            out[i, j] = 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    return out


@pytest.mark.parametrize("split_seed", [0, 1])
def test_r2_matrix_matches_numpy_and_is_split_invariant(split_seed):
    feats, recons, _ = _data()
    metric = R2Matrix(DIMS)
    for a, b in _splits(S, split_seed):
        metric.update([_t(f[a:b]) for f in feats], [[_t(r[a:b]) for r in row] for row in recons])
    got = metric.compute().numpy()
    np.testing.assert_allclose(got, _numpy_r2(feats, recons), rtol=1e-10, atol=1e-10)
    # the grand-scalar-mean variant (overcomplete.metrics.r2_score) gives a different, inflated number
    x = feats[0].astype(np.float32).astype(np.float64)
    grand = 1 - ((x - recons[0][0].astype(np.float32)) ** 2).sum() / ((x - x.mean()) ** 2).sum()
    assert grand > got[0, 0] + 0.01


def _numpy_fire_counts(codes, thr):
    return np.stack([(c > thr).sum(0) for c in codes]).astype(np.float64)


@pytest.mark.parametrize("thr", [0.0, 0.1])
def test_firing_metrics_match_numpy_and_are_split_invariant(thr):
    _, _, codes = _data(1)
    metrics = [FiringEntropy(NL, 3, thr), DeadFraction(NL, 3, thr), CoFiring(NL, 3, thr), L0(3, thr)]
    for a, b in _splits(S, 3):
        for metric in metrics:
            metric.update([_t(c[a:b]) for c in codes])
    ent, dead, co, l0 = (m.compute() for m in metrics)

    counts = _numpy_fire_counts(codes, thr)
    total = counts.sum(0)
    ref_h = np.full(NL, np.nan)
    for f in np.nonzero(total)[0]:
        p = counts[:, f] / total[f]
        p = p[p > 0]
        ref_h[f] = -(p * np.log(p)).sum() / np.log(3)
    np.testing.assert_allclose(ent["entropy"].numpy(), ref_h, rtol=1e-12, equal_nan=True)
    assert int(ent["n_dead"]) == (total == 0).sum() >= 2
    np.testing.assert_array_equal(ent["dead"].numpy(), total == 0)

    np.testing.assert_allclose(dead["per_model"].numpy(), (counts == 0).mean(1), rtol=1e-12)
    np.testing.assert_allclose(float(dead["all"]), (total == 0).mean(), rtol=1e-12)

    fires = [c > thr for c in codes]
    every = np.logical_and.reduce(fires).sum(0).astype(float)
    some = np.logical_or.reduce(fires).sum(0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(some > 0, every / some, np.nan)
        per_model = np.where(counts > 0, every / counts, np.nan)
    np.testing.assert_allclose(co["iou"].numpy(), iou, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(co["per_model"].numpy(), per_model, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(float(co["iou_mean"]), np.nanmean(iou), rtol=1e-12)

    np.testing.assert_allclose(l0.numpy(), [(c > thr).sum(1).mean() for c in codes], rtol=1e-12)


def test_threshold_changes_what_fires():
    _, _, codes = _data(1)
    lo, hi = DeadFraction(NL, 3, 0.0), DeadFraction(NL, 3, 0.1)
    for m in (lo, hi):
        m.update([_t(c) for c in codes])
    assert float(hi.compute()["per_model"][0]) > float(lo.compute()["per_model"][0])


def test_entropy_extremes():
    """A latent firing in one model only has H = 0; equal firing in all models gives H = 1."""
    c = torch.zeros(4, 3)
    c[:, 0] = 1.0  # latent 0 fires everywhere in every model
    only_first = c.clone()
    only_first[:, 1] = 1.0  # latent 1 fires only in model 0
    ent = FiringEntropy(3, 2)
    ent.update([only_first, c])
    h = ent.compute()["entropy"]
    assert torch.isclose(h[0], torch.tensor(1.0, dtype=h.dtype)) and h[1] == 0 and torch.isnan(h[2])


def test_bundle_and_bad_shapes():
    feats, recons, codes = _data(2)
    bundle = UniversalityMetrics(DIMS, NL)
    bundle.update([_t(f) for f in feats], [[_t(r) for r in row] for row in recons], [_t(c) for c in codes])
    res = bundle.compute()
    np.testing.assert_allclose(res["r2"].numpy(), _numpy_r2(feats, recons), rtol=1e-10)
    assert res["r2"].dtype == torch.float64
    np.testing.assert_allclose(res["l0"].numpy(), [(c > 0).sum(1).mean() for c in codes], rtol=1e-12)
    bundle.reset()
    assert float(bundle["firing"].n_samples.sum()) == 0 and float(bundle["r2"].count.sum()) == 0
    with pytest.raises(UserError, match="shape"):
        FiringEntropy(NL, 3).update([_t(c[:, :5]) for c in codes])
    with pytest.raises(UserError, match="3x3"):
        R2Matrix(DIMS).update([_t(f) for f in feats], [[_t(r) for r in row[:2]] for row in recons])


@pytest.mark.parametrize("rare_below", [1, 10, 30])
def test_both_dead_definitions_and_frequency_histogram_match_numpy(rare_below):
    _, _, codes = _data(1)
    codes[1][:80, 7] = 0.0  # latent 7 fires on a few samples only in model 1
    metric = FiringCounts(NL, 3, rare_below=rare_below)
    for a, b in _splits(S, 4):
        metric.update([_t(c[a:b]) for c in codes])
    res = metric.compute()
    counts = _numpy_fire_counts(codes, 0.0)
    np.testing.assert_allclose(res["dead_fraction_per_model"].numpy(), (counts == 0).mean(1), rtol=1e-12)
    np.testing.assert_allclose(res["rare_fraction_per_model"].numpy(), (counts < rare_below).mean(1), rtol=1e-12)
    np.testing.assert_array_equal(res["rare_latents"].numpy(), (counts < rare_below).all(0))
    np.testing.assert_array_equal(res["alive"].numpy(), ~(counts < rare_below).all(0))
    assert int(res["n_alive"]) + int(res["n_rare"]) == NL
    if rare_below == 1:  # "rare" below one fire is "never fires"
        np.testing.assert_array_equal(res["rare"].numpy(), res["never"].numpy())
    else:
        assert float(res["rare_fraction_per_model"].sum()) > float(res["dead_fraction_per_model"].sum())
    edges = FiringOptions().hist_edges().numpy()
    for m in range(3):
        d = counts[m] / S
        ref, _ = np.histogram(np.clip(np.log10(d[d > 0]), edges[0], 0.0), bins=edges)
        np.testing.assert_array_equal(res["freq_hist"][m].numpy(), ref)
        assert res["freq_hist"][m].sum() == (counts[m] > 0).sum()  # never-firing latents are not binned


def _fake_world(metrics, calls=None):
    """A two-"process" sync for torchmetrics: gathering a state of one of ``metrics`` (the same
    metric on each "rank", found by identity) returns it from every rank, as
    ``gather_all_tensors`` would; appends the state's name to ``calls``."""
    calls = [] if calls is None else calls

    def gather(tensor, group=None):
        for m in metrics:
            for name in m._defaults:
                if getattr(m, name) is tensor:
                    calls.append(name)
                    return [getattr(other, name) for other in metrics]
        raise AssertionError("gathered a tensor that is no metric state")

    for m in metrics:
        m.dist_sync_fn, m.distributed_available_fn = gather, (lambda: True)
    return calls


def test_active_units_dead_fraction_reads_the_synced_state():
    """Rank 0 sees unit 0 fire, rank 1 unit 1: the pooled dead fraction is 1/3, not rank 0's 2/3."""
    ranks = [ActiveUnits(3), ActiveUnits(3)]
    calls = _fake_world(ranks)
    ranks[0].update(torch.tensor([[1.0, 0.0, 0.0]] * 12))
    ranks[1].update(torch.tensor([[0.0, 2.0, 0.0]] * 3))
    assert int(ranks[0].compute()) == 2
    assert float(ranks[0].dead_fraction()) == pytest.approx(1 / 3)
    assert float(ranks[0].rare_fraction()) == pytest.approx(2 / 3)  # unit 1 fires on 3 < 10 samples
    assert len(calls) == len(ranks[0]._defaults)  # one sync: dead_fraction reuses compute's
    assert float(ranks[0].fire_counts.sum()) == 12  # the local state is restored after the sync
    ranks[0].update(torch.tensor([[0.0, 0.0, 5.0]]))
    assert float(ranks[0].dead_fraction()) == 0.0  # a new update invalidates the cached summary


def test_universality_metrics_sync_each_state_once():
    feats, recons, codes = _data(3)
    ranks = [UniversalityMetrics(DIMS, NL), UniversalityMetrics(DIMS, NL)]
    calls = []
    for key in ("r2", "firing"):
        _fake_world([r[key] for r in ranks], calls)
    halves = [(0, S // 3), (S // 3, S)]
    for r, (a, b) in zip(ranks, halves):
        r.update([_t(f[a:b]) for f in feats], [[_t(x[a:b]) for x in row] for row in recons], [_t(c[a:b]) for c in codes])
    res = ranks[0].compute()
    n_states = sum(len(m._defaults) for m in ranks[0].values())
    assert len(calls) == n_states  # every state gathered once, the fire counts included
    counts = _numpy_fire_counts(codes, 0.0)
    np.testing.assert_allclose(res["fire_counts"].numpy(), counts)
    np.testing.assert_allclose(res["r2"].numpy(), _numpy_r2(feats, recons), rtol=1e-10)
    np.testing.assert_allclose(res["rare_fraction_per_model"].numpy(), (counts < 10).mean(1))
