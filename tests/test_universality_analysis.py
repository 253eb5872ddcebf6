"""Each universality computation against a direct numpy/scipy computation on small synthetic codes,
and activation maximisation on tiny backbones (raises the target, batched == one at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from scipy.stats import pearsonr
from torch import nn

from analysis.universality.activation_max import ActMaxSettings, maximize_latents
from analysis.universality.codes import SplitCodes, extract_codes
from analysis.universality.correlation import pair_correlation, pearson_columns
from analysis.universality.entropy import firing_entropy
from analysis.universality.feature_model import FeatureHead, L2Normalize, LatentObjective, frozen, sae_pre_activation
from analysis.universality.r2 import decode_sparse, r2_matrix
from analysis.base import REPORT_MARKER
from analysis.universality.report import atomic_dir, write_json
from analysis.universality.selection import check_latents, select_latents
from analysis.universality.stats import feature_statistics
from analysis.universality.top_images import top_activating
from common.errors import UserError
from helpers.tiny_objective import tiny_objective
from components.sparse_coder import SparseCoder, SparseCoderConfig
from lightning_modules.universal_sae import UniversalSAE


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: extra threads only fight other processes on 2 cores."""


def _codes(arrays: dict[str, np.ndarray], pre: dict[str, np.ndarray] | None = None) -> SplitCodes:
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in arrays.items()}
    p = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in (pre or arrays).items()}
    return SplitCodes(list(arrays), p, t)


def _sparse(rng, n_samples, n_latents, density):
    return rng.random((n_samples, n_latents)) * (rng.random((n_samples, n_latents)) < density)


# ----- firing entropy ---------------------------------------------------------------------------------
def test_entropy_histogram_matches_numpy_and_excludes_dead():
    rng = np.random.default_rng(0)
    models = {m: _sparse(rng, 200, 30, 0.2) for m in ("a", "b", "c")}
    for m in models.values():
        m[:, 25:] = 0.0  # 5 dead latents
    models["a"][:, :4] = 0.0  # latents 2, 3 fire in b and c only: H = log 2 / log 3
    models["c"][:, :2] = 0.0
    models["b"][:, 0] = 0.0  # latent 0: dead
    models["b"][:, 1] = rng.random(200) < 0.3  # latent 1: fires only in b: H = 0
    summary = firing_entropy(_codes(models), threshold=0.0, lo=0.2, hi=0.8, bins=10)

    fires = np.stack([(m > 0).sum(0) for m in models.values()]).astype(float)
    total = fires.sum(0)
    dead = total == 0
    p = fires[:, ~dead] / total[~dead]
    h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(0) / np.log(3)
    assert summary.n_dead == dead.sum() == 6  # 25..29 and latent 0
    np.testing.assert_allclose(summary.entropy[~dead], h, atol=1e-12)
    assert np.isnan(summary.entropy[dead]).all()
    counts, _ = np.histogram(h, bins=10, range=(0, 1))
    np.testing.assert_array_equal(summary.hist_counts, counts)
    assert summary.hist_counts.sum() == (~dead).sum()  # dead are not binned at 0
    assert summary.entropy[1] == 0.0 and summary.specific[1]
    num = summary.numbers()
    assert num["n_universal"] == (h >= 0.8).sum() and num["n_specific"] == (h <= 0.2).sum()
    assert num["share_universal"] == pytest.approx((h >= 0.8).mean())


def test_entropy_threshold_decides_what_fires():
    a = np.array([[0.05, 0.5], [0.05, 0.5]] * 10)
    b = np.array([[0.5, 0.5], [0.5, 0.5]] * 10)
    s = firing_entropy(_codes({"a": a, "b": b}), threshold=0.1, lo=0.2, hi=0.8, bins=5)
    assert s.entropy[0] == 0.0 and s.entropy[1] == pytest.approx(1.0)


# ----- correlation ------------------------------------------------------------------------------------
def test_hungarian_recovers_a_known_permutation_and_nulls_are_near_zero():
    rng = np.random.default_rng(1)
    n, lat = 3000, 40
    a = _sparse(rng, n, lat, 0.15)
    perm = rng.permutation(lat)
    b = np.zeros_like(a)
    b[:, perm] = a * (1 + 0.1 * rng.random(a.shape))  # latent f of a is latent perm[f] of b
    pc = pair_correlation(_codes({"a": a, "b": b}), "a", "b", threshold=0.0, min_activations=10, seed=0)
    np.testing.assert_array_equal(pc.matched_cols, perm[pc.matched_rows])
    assert pc.matched_rows.size == lat and pc.matched_r.min() > 0.9
    # a random pairing hits the true partner with chance 1/40 per latent: look at the median
    assert abs(np.median(pc.null_random_pairs)) < 0.03
    assert 0 <= pc.null_shuffled_images.mean() < 0.1  # the matching's selection bias, small
    assert pc.identity_rate == pytest.approx((perm == np.arange(lat)).mean())
    # the same index is unrelated for a permuted index, and aligned for the identity
    assert np.nanmean(pc.same_index) < 0.2
    same = pair_correlation(_codes({"a": a, "b": a}), "a", "b", 0.0, 10, 0)
    assert same.identity_rate == 1.0 and np.nanmin(same.same_index) > 0.999


def test_correlation_leaves_out_latents_with_fewer_than_min_activations():
    rng = np.random.default_rng(2)
    n = 400
    a = _sparse(rng, n, 6, 0.3)
    b = a + 0.3 * _sparse(rng, n, 6, 0.3)
    for col, count in ((0, 9), (1, 10)):  # latent 0 fires 9 times in a, latent 1 ten times
        a[:, col] = 0.0
        a[rng.choice(n, count, replace=False), col] = 1.0
    b[:, 2] = 0.0
    b[:5, 2] = 1.0  # latent 2 fires 5 times in b
    pc = pair_correlation(_codes({"a": a, "b": b}), "a", "b", threshold=0.0, min_activations=10, seed=0)
    assert np.isnan(pc.same_index[0]) and np.isnan(pc.same_index[2])
    for f in (1, 3, 4, 5):
        assert pc.same_index[f] == pytest.approx(pearsonr(a[:, f], b[:, f])[0], abs=1e-9)
    assert 0 not in pc.matched_rows and 2 not in pc.matched_cols
    assert [t["latent"] for t in pc.top(10)] == sorted((1, 3, 4, 5), key=lambda f: -pc.same_index[f])


def test_pearson_columns_constant_column_is_nan():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    r = pearson_columns(a, a * 2)
    assert r[0] == pytest.approx(1.0) and np.isnan(r[1])


# ----- feature statistics, top images, selection ----------------------------------------------------
def test_feature_statistics_match_numpy():
    rng = np.random.default_rng(3)
    a, b = _sparse(rng, 120, 8, 0.3), _sparse(rng, 120, 8, 0.3)
    a[:, 7] = 0.0
    norms = {"a": torch.full((8,), 2.0), "b": torch.ones(8)}
    st = feature_statistics(_codes({"a": a, "b": b}), 0.0, norms)
    np.testing.assert_allclose(st.frequency[0], (a > 0).mean(0))
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(st.mean_activation[0], a.sum(0) / (a > 0).sum(0), rtol=1e-6)
    assert np.isnan(st.mean_activation[0, 7])
    np.testing.assert_allclose(st.energy[0], (a ** 2).mean(0) * 4.0, rtol=1e-6)
    np.testing.assert_allclose(st.energy[1], (b ** 2).mean(0), rtol=1e-6)
    both, anyf = ((a > 0) & (b > 0)).sum(0), ((a > 0) | (b > 0)).sum(0)
    np.testing.assert_allclose(st.cofiring_iou, both / anyf, rtol=1e-6)
    shares = st.energy_shares({"first": np.arange(8) < 4})
    assert shares["b"]["first"] == pytest.approx((b[:, :4] ** 2).sum() / (b ** 2).sum())


def test_top_activating_ranks_by_code_then_pre_activation():
    codes = np.array([[0.0, 1.0], [3.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    pre = np.array([[0.5, 1.0], [3.0, -1.0], [2.0, 0.2], [0.9, -0.5]])
    top = top_activating(_codes({"a": codes}, {"a": pre}), "a", [0, 1], 3)
    np.testing.assert_array_equal(top.index, [[1, 2, 3], [0, 2, 3]])
    np.testing.assert_allclose(top.code, [[3.0, 2.0, 0.0], [1.0, 0.0, 0.0]])


def test_selection_picks_universal_and_round_robin_specific_and_checks_range():
    rng = np.random.default_rng(4)
    a, b = _sparse(rng, 300, 12, 0.2), _sparse(rng, 300, 12, 0.2)
    a[:, 0:3] = 0.0  # 0..2 fire only in b
    b[:, 3:6] = 0.0  # 3..5 fire only in a
    a[:, 11] = b[:, 11] = 0.0  # dead
    codes = _codes({"a": a, "b": b})
    ent = firing_entropy(codes, 0.0, 0.2, 0.8, 10)
    chosen = select_latents(ent, codes.fire_counts(0.0).numpy(), 4, 10)
    assert set(chosen["specific"]) <= set(range(6)) and len(chosen["specific"]) == 4
    assert {f < 3 for f in chosen["specific"]} == {True, False}  # both models' specific latents shown
    least = codes.fire_counts(0.0).numpy().min(0)[chosen["universal"]]
    assert list(least) == sorted(least, reverse=True) and set(chosen["universal"]) <= set(range(6, 11))
    assert (ent.entropy[chosen["universal"]] >= 0.8).all()
    with pytest.raises(UserError, match="latent index 12 is out of range"):
        check_latents([1, 12], 12, "feature_indices")


# ----- codes and R² of a real system ------------------------------------------------------------------
def test_codes_and_r2_of_a_system_match_direct_computation():
    torch.manual_seed(0)
    system = UniversalSAE({"p": 6, "q": 5}, sae=SparseCoderConfig(n_latents=16, k=3, pre_bias=True))
    with torch.no_grad():
        for sae in system.bank.saes.values():
            sae.b_dec.normal_(0, 0.1)
            sae.b_enc.normal_(0, 0.1)
    feats = {"p": torch.randn(50, 6), "q": torch.randn(50, 5)}
    codes = extract_codes(system, feats, batch_size=7)
    assert system.training  # restored
    for name, sae in system.bank.saes.items():
        x = feats[name]
        pre = (x - sae.b_dec.detach()) @ sae.W_enc.detach().T + sae.b_enc.detach()
        torch.testing.assert_close(codes.pre_codes[name], pre, rtol=1e-5, atol=1e-5)
        assert ((codes.codes[name] > 0).sum(1) <= 3).all()
    for name, sae in system.bank.saes.items():
        torch.testing.assert_close(decode_sparse(sae, codes.codes[name]), sae.decode(codes.codes[name]),
                                   rtol=1e-5, atol=1e-6)
    r2 = r2_matrix(system, codes, feats, batch_size=7)
    for i, src in enumerate("pq"):
        for j, dst in enumerate("pq"):
            sae = system.bank.saes[dst]
            xh = (codes.codes[src] @ sae.W_dec.detach() + sae.b_dec.detach()).double().numpy()
            x = feats[dst].double().numpy()
            expect = 1 - ((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
            assert r2[i, j] == pytest.approx(expect, rel=1e-6, abs=1e-6)


def test_empty_split_and_unaligned_rows_are_user_errors():
    system = UniversalSAE({"p": 6, "q": 5}, sae=SparseCoderConfig(n_latents=16, k=3))
    with pytest.raises(UserError, match="empty"):
        extract_codes(system, {"p": torch.zeros(0, 6), "q": torch.zeros(0, 5)}, 8)
    with pytest.raises(UserError, match="aligned"):
        extract_codes(system, {"p": torch.zeros(4, 6), "q": torch.zeros(3, 5)}, 8)


# ----- activation maximisation ------------------------------------------------------------------------
def test_pre_activation_of_the_target_equals_the_encoder():
    _, sae, _ = tiny_objective()
    x = torch.randn(5, 16)
    latents = torch.tensor([0, 3, 3, 31, 7])
    expect = sae.encode(x)[0].gather(1, latents.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(sae_pre_activation(sae, x, latents), expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,lr", [("pixel", 0.05), ("fourier", 0.5)])
def test_activation_max_raises_the_target_and_batching_changes_nothing(kind, lr):
    head, sae, objective = tiny_objective()
    latents = [0, 5, 5, 9, 30]
    keys = [(0, f) for f in latents]
    plain = ActMaxSettings(steps=25, lr=lr, method=kind, jitter=0, scale_jitter=0.0, batch_size=8, seed=3)
    jittered = ActMaxSettings(**{**plain.__dict__, "jitter": 1, "scale_jitter": 0.05})
    with frozen(head, sae):
        raised = maximize_latents(objective, latents, (1, 12, 12), plain, keys=keys)
        batched = maximize_latents(objective, latents, (1, 12, 12), jittered, keys=keys)
        single = maximize_latents(objective, latents, (1, 12, 12),
                                  ActMaxSettings(**{**jittered.__dict__, "batch_size": 1}), keys=keys)
    assert all(p.requires_grad for p in sae.parameters()) and head.training  # restored after
    assert raised.images.shape == (5, 1, 12, 12) and 0 <= raised.images.min() and raised.images.max() <= 1
    assert (raised.final > raised.start + 0.05).all()
    torch.testing.assert_close(batched.images, single.images, rtol=0, atol=1e-4)
    torch.testing.assert_close(batched.final, single.final, rtol=1e-4, atol=1e-4)
    # jobs 1 and 2 share the key (0, 5), hence the same initialisation, jitter and image
    torch.testing.assert_close(batched.images[1], batched.images[2])


def test_activation_max_on_a_torchvision_backbone_with_random_weights():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    net.fc = nn.Identity()  # features at avgpool, 512-d
    head = FeatureHead(net, L2Normalize())
    sae = SparseCoder(512, SparseCoderConfig(n_latents=64, k=8), seed=0)
    objective = LatentObjective(lambda x: (x - 0.45) / 0.25, head, sae)
    with frozen(head, sae):
        res = maximize_latents(objective, [1, 2], (3, 32, 32),
                               ActMaxSettings(steps=6, lr=0.5, jitter=0, scale_jitter=0.0, batch_size=2,
                                              method="fourier"))
    assert (res.final > res.start).all()


# ----- report plumbing --------------------------------------------------------------------------------
def test_atomic_dir_leaves_nothing_on_failure_and_keeps_the_old_report(tmp_path):
    out = tmp_path / "report"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir() if p.name != REPORT_MARKER) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_report_json_is_strict_json(tmp_path):
    import json

    obj = {"a": np.float32(np.nan), "b": np.arange(3), "c": torch.tensor([1.5, float("inf")]), "d": np.bool_(True)}
    write_json(tmp_path / "report.json", obj)
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": None, "b": [0, 1, 2],
                                                                  "c": [1.5, None], "d": True}


# ----- both dead definitions, one latent set per row, fit on one split and score on another ----------
def test_entropy_and_shares_leave_out_rare_latents_and_count_them():
    rng = np.random.default_rng(5)
    a, b = _sparse(rng, 300, 12, 0.2), _sparse(rng, 300, 12, 0.2)
    for m in (a, b):
        m[:, 10:] = 0.0  # 10, 11: never fire
    b[:, 0] = 0.0
    a[:, 0] = 0.0
    a[:4, 0] = 1.0  # latent 0 fires 4 times in a, never in b: rare, H = 0 but not "model-specific"
    s = firing_entropy(_codes({"a": a, "b": b}), 0.0, 0.2, 0.8, 10, min_activations=10)
    assert s.entropy[0] == 0.0 and s.rare[0] and not s.specific[0]
    num = s.numbers()
    assert (num["n_dead"], num["n_rare"], num["n_alive"]) == (2, 3, 9)
    assert s.hist_counts.sum() == 9
    assert num["share_specific"] == pytest.approx(s.specific.sum() / 9)
    loose = firing_entropy(_codes({"a": a, "b": b}), 0.0, 0.2, 0.8, 10, min_activations=1)
    assert loose.specific[0] and loose.numbers()["n_alive"] == 10


def test_every_number_of_a_row_is_over_the_same_latents():
    rng = np.random.default_rng(6)
    n, lat = 800, 20
    a = _sparse(rng, n, lat, 0.2)
    b = a * (1 + 0.2 * rng.random(a.shape))
    b[:, :5] = 0.0
    b[:3, :5] = 1.0  # latents 0-4 rare in b: out of the "alive in both" set
    pc = pair_correlation(_codes({"a": a, "b": b}), "a", "b", 0.0, 10, 0)
    num = pc.numbers(5)
    assert num["n_latents_set"] == 15 == pc.both.size
    for key in ("same_index", "hungarian_matched", "null_random_pairs", "null_shuffled_images"):
        assert num[key]["count"] == 15, key
    assert set(pc.matched_rows) == set(pc.matched_cols) == set(range(5, 20))
    assert num["alive_each"]["n_pairs"] == 15  # 20 alive in a, 15 in b
    # the index is aligned, so the matching keeps it and matched r equals same-index r
    assert pc.identity_rate == 1.0
    assert num["hungarian_matched"]["mean"] == pytest.approx(num["same_index"]["mean"])


def test_matching_fitted_on_one_split_is_scored_on_the_other():
    """Pure noise: matching in-sample finds r > 0 (its selection bias); fitted on another split and
    scored held-out it finds ~0, like the null."""
    rng = np.random.default_rng(7)
    fit = _codes({"a": _sparse(rng, 300, 40, 0.3), "b": _sparse(rng, 300, 40, 0.3)})
    score = _codes({"a": _sparse(rng, 300, 40, 0.3), "b": _sparse(rng, 300, 40, 0.3)})
    in_sample = pair_correlation(score, "a", "b", 0.0, 10, 0)
    held_out = pair_correlation(score, "a", "b", 0.0, 10, 0, fit=fit, fit_split="val", score_split="test")
    assert in_sample.matched_r.mean() > 0.08
    assert abs(held_out.matched_r.mean()) < 0.04 and abs(held_out.null_shuffled_images.mean()) < 0.04
    assert (held_out.fit_split, held_out.score_split) == ("val", "test")
    assert held_out.numbers(3)["fit_split"] == "val"
