"""The fast TopK SAE engine: same outputs and gradients as overcomplete's TopKSAE and a dense
reference, sparse gradients, dictionary maintenance, AuxK, conversions and bad sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from components.sae_bank import SAEBank, make_adam
from components.topk_sae import OvercompleteTopKSAE, TopKSAE, sparse_decode

D, N, K, B = 24, 64, 5, 32


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared 2-core box
    yield
    torch.set_num_threads(prev)


def _x(b=B, d=D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64).abs() + 0.1, dim=1).to(dtype)


def _dense_reference(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    """The DESIGN math written densely: x_hat = TopK(ReLU(W_enc (x - b_dec) + b_enc)) D (+ b_dec)."""
    xc = x - sae.b_dec if sae.b_dec is not None else x
    z = F.linear(xc, sae.W_enc, sae.b_enc).relu()
    vals, idx = torch.topk(z, sae.k, dim=1)
    out = torch.zeros_like(z).scatter(1, idx, vals) @ sae.W_dec
    return out + sae.b_dec if sae.b_dec is not None else out


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_same_weights_same_outputs_as_overcomplete_both_ways(mode):
    ours = TopKSAE(D, N, K, tied_init=False, seed=3)
    with torch.no_grad():
        ours.b_enc.normal_(0, 0.05)
    oc = ours.to_overcomplete()
    ours.train(mode == "train")
    oc.train(mode == "train")
    x = _x()
    with torch.no_grad():
        pre_a, z_a, xh_a = ours(x)
        pre_b, z_b, xh_b = oc(x)
    torch.testing.assert_close(pre_a, pre_b)
    torch.testing.assert_close(z_a, z_b)
    torch.testing.assert_close(xh_a, xh_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.decode(z_a), oc.decode(z_b), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.get_dictionary(), oc.get_dictionary(), rtol=1e-5, atol=1e-7)
    assert (z_a > 0).sum(1).max() <= K

    # and back: overcomplete -> ours
    back = TopKSAE.from_overcomplete(oc).train(mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(back(x)[2], xh_b, rtol=1e-5, atol=1e-6)


def test_overcomplete_stale_eval_dictionary_is_refreshed_by_the_adapter():
    """overcomplete caches its eval dictionary at .eval(); the adapter refreshes it after loading."""
    ad = OvercompleteTopKSAE(D, N, K, seed=0).eval()
    other = TopKSAE(D, N, K, seed=9)
    ad.sae.load_state_dict(other.to_overcomplete_state_dict())  # bypasses the adapter's hook: stale
    assert not torch.allclose(ad.get_dictionary(), other.W_dec)
    ad.load_state_dict({f"sae.{k}": v for k, v in other.to_overcomplete_state_dict().items()})
    torch.testing.assert_close(ad.get_dictionary(), other.W_dec, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pre_bias", [False, True])
def test_gradients_equal_dense_autograd(pre_bias):
    sae = TopKSAE(D, N, K, pre_bias=pre_bias, tied_init=False, seed=1).double()
    sae.init_pre_bias_(torch.linspace(-0.1, 0.1, D, dtype=torch.float64))
    x = _x(dtype=torch.float64)
    (sae.decode_topk(sae.encode_topk(x)) - x).square().mean().backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    (_dense_reference(sae, x) - x).square().mean().backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-10, atol=1e-13, msg=name)
        assert p.grad.abs().sum() > 0, name


def test_gradients_equal_overcomplete_and_projection_removes_parallel_part():
    """overcomplete renormalises under no_grad, so its gradients are the raw ones: equal to ours."""
    ours = TopKSAE(D, N, K, tied_init=False, seed=2).double()
    ours.normalize_decoder_()  # unit rows in float64, as overcomplete will make them
    oc = ours.to_overcomplete().double()
    oc.load_state_dict(ours.to_overcomplete_state_dict())
    x = _x(dtype=torch.float64)
    (ours(x)[2] - x).square().mean().backward()
    (oc(x)[2] - x).square().mean().backward()
    # overcomplete divides by (norm + 1e-8): rows differ by ~1e-8 relative, hence the tolerance
    tol = dict(rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.W_dec.grad, oc.dictionary._weights.grad, **tol)
    torch.testing.assert_close(ours.W_enc.grad, oc.encoder.final_block[0].weight.grad, **tol)
    torch.testing.assert_close(ours.b_enc.grad, oc.encoder.final_block[0].bias.grad, **tol)
    raw = ours.W_dec.grad.clone()
    assert (raw * ours.W_dec).sum(1).abs().max() > 1e-6
    ours.remove_parallel_grad_()
    assert (ours.W_dec.grad * ours.W_dec).sum(1).abs().max() < 1e-12
    # what was removed is, row by row, parallel to the row
    torch.testing.assert_close(raw - ours.W_dec.grad, (raw * ours.W_dec).sum(1, keepdim=True) * ours.W_dec)


def test_encoder_gradient_touches_only_selected_rows():
    sae = TopKSAE(D, N, K, seed=4)
    x = _x(b=3)
    codes = sae.encode_topk(x)
    (sae.decode_topk(codes) - x).square().mean().backward()
    touched = torch.zeros(N, dtype=torch.bool)
    touched[codes.idx.reshape(-1)] = True
    assert sae.W_enc.grad[~touched].abs().max() == 0
    assert sae.W_dec.grad[~touched].abs().max() == 0
    assert (sae.W_enc.grad[touched].abs().sum(1) > 0).sum() >= K  # some selected rows really move


def test_decoder_maintenance_and_one_training_step():
    sae = TopKSAE(D, N, K, seed=5)
    opt = make_adam(sae.parameters(), lr=1e-2)
    assert opt.defaults.get("fused") is True  # the fused kernel works on CPU in this torch
    x = _x()
    before = sae.W_dec.detach().clone()
    loss0 = (sae.decode_topk(sae.encode_topk(x)) - x).square().mean()
    loss0.backward()
    sae.remove_parallel_grad_()
    opt.step()
    assert not torch.allclose(sae.W_dec, before)
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() > 1e-4  # Adam's step leaves the sphere ...
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(N))  # ... renorm puts it back
    assert sae.W_dec.shape == (N, D) and sae.W_enc.shape == (N, D)


def test_sparse_decode_matches_dense_product():
    g = torch.Generator().manual_seed(0)
    dictionary = torch.randn(N, D, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])
    vals = torch.rand(B, K, generator=g, dtype=torch.float64, requires_grad=True)
    dense = torch.zeros(B, N, dtype=torch.float64).scatter(1, idx, vals)
    torch.testing.assert_close(sparse_decode(idx, vals, dictionary), dense @ dictionary)
    small = (idx[:4, :3] % 10, vals[:4, :3].detach().requires_grad_(), dictionary[:10, :6].detach().requires_grad_())
    assert torch.autograd.gradcheck(lambda v, w: sparse_decode(small[0], v, w), small[1:])


def test_aux_loss_reaches_only_dead_latents():
    sae = TopKSAE(D, N, K, aux_k=8, dead_window=10, seed=6)
    x = _x()
    codes = sae.encode_topk(x)
    x_hat = sae.decode_topk(codes)
    assert float(sae.aux_loss(x, x_hat, codes).detach()) == 0.0  # nothing dead yet
    sae.update_dead_tracker(codes)
    fired = torch.zeros(N, dtype=torch.bool)
    fired[codes.idx[codes.vals > 0]] = True
    assert (sae.samples_since_fired[fired] == 0).all() and (sae.samples_since_fired[~fired] == B).all()
    dead = torch.arange(N) >= N - 10
    with torch.no_grad():
        sae.samples_since_fired.copy_(torch.where(dead, 10, 0))
        sae.b_enc[dead] = 0.5  # make the dead latents' pre-activations positive
    codes = sae.encode_topk(x)
    aux = sae.aux_loss(x, sae.decode_topk(codes).detach(), codes)
    assert float(aux.detach()) > 0
    aux.backward()
    assert sae.W_enc.grad[~dead].abs().max() == 0 and sae.W_enc.grad[dead].abs().sum() > 0


@pytest.mark.parametrize("step", [0.0, 0.05])
def test_revive_bias_brings_a_silenced_latent_back_only_when_on(step):
    bank = SAEBank({"a": D}, N, K, revive_bias_step=step, dead_window=2 * B, seed=3)
    sae = bank.saes["a"]
    with torch.no_grad():
        sae.b_enc[0] = -1.0  # never wins: its pre-activation is below every other latent's
    opt = make_adam(bank.parameters(), 1e-3)
    fired_at = None
    for i in range(60):
        opt.zero_grad()
        loss, _ = bank.loss({"a": _x(seed=i)}, ["a"], "self", 0.0, training=True)
        loss.backward()
        opt.step()
        bias_before = sae.b_enc[1:].detach().clone()
        bank.after_optimizer_step()
        # only latents silent for dead_window samples are raised, by exactly ``step``
        dead = sae.samples_since_fired[1:] >= 2 * B
        torch.testing.assert_close(sae.b_enc[1:].detach() - bias_before, dead.float() * step)
        if fired_at is None and sae.samples_since_fired[0] == 0:
            fired_at = i
    assert (fired_at is not None) == (step > 0)


def test_bf16_autocast_runs_and_stays_close():
    sae = TopKSAE(D, N, K, seed=7)
    x = _x()
    ref = sae.decode_topk(sae.encode_topk(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sae.encode_topk(x)
        out = sae.decode_topk(codes)
    assert codes.pre_codes.dtype == torch.bfloat16 and out.dtype == torch.float32
    out.square().mean().backward()
    assert sae.W_enc.grad.dtype == torch.float32 and torch.isfinite(sae.W_enc.grad).all()
    # bf16 may swap near-tied winners; where the winners agree the reconstructions must agree
    same = (codes.idx.sort(1).values == sae.encode_topk(x).idx.sort(1).values).all(1)
    assert same.float().mean() > 0.5
    assert (out - ref)[same].abs().max() < 0.02


def test_bad_sizes_and_conversions_are_user_errors():
    with pytest.raises(UserError, match="k=64"):
        TopKSAE(D, N, N)
    with pytest.raises(UserError, match="aux_k"):
        TopKSAE(D, N, K, aux_k=N + 1)
    with pytest.raises(UserError, match="decoder bias"):
        TopKSAE(D, N, K, pre_bias=True).to_overcomplete()
    with pytest.raises(UserError, match="backbone name"):
        SAEBank({"a.b": D}, N, K)
    with pytest.raises(UserError, match="only in the 'ours' backend"):
        SAEBank({"a": D}, N, K, backend="overcomplete", aux_k=4)
    with pytest.raises(UserError, match="only in the 'ours' backend"):
        SAEBank({"a": D}, N, K, backend="overcomplete", revive_bias_step=1e-3)
    with pytest.raises(UserError, match="revive_bias_step"):
        TopKSAE(D, N, K, revive_bias_step=-1.0)


def test_state_dict_round_trip():
    a = TopKSAE(D, N, K, pre_bias=True, seed=8)
    b = TopKSAE(D, N, K, pre_bias=True, seed=9)
    b.load_state_dict(a.state_dict())
    x = _x()
    torch.testing.assert_close(a(x)[2], b(x)[2])
    assert set(a.state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec", "samples_since_fired"}


@pytest.mark.parametrize("backend", ["ours", "overcomplete"])
def test_bank_loss_equals_the_pairwise_definition(backend):
    """Σ self + w·Σ cross with every code decoded by every decoder, values and gradients."""
    dims = {"a": D, "b": 16, "c": 12}
    bank = SAEBank(dims, N, K, backend=backend, seed=0).double()
    batch = {name: _x(d=d, seed=i, dtype=torch.float64) for i, (name, d) in enumerate(dims.items())}
    total, parts = bank.loss(batch, list(dims), "all", cross_weight=1.5)
    total.backward()
    got = {n: p.grad.clone() for n, p in bank.named_parameters()}
    bank.zero_grad()
    ref = 0.0
    for i in dims:
        codes = bank.encode(i, batch[i])
        for j in dims:
            mse = (bank.decode(j, codes) - batch[j]).square().mean()
            ref = ref + (1.0 if i == j else 1.5) * mse
            torch.testing.assert_close(parts[f"mse/{i}->{j}"], mse.detach())
    ref.backward()
    torch.testing.assert_close(total, ref, **({} if backend == "ours" else dict(rtol=1e-6, atol=1e-9)))
    # overcomplete re-divides its dictionary by (norm + 1e-8) in every forward: ~1e-8 drift per call
    tol = dict(rtol=1e-9, atol=1e-12) if backend == "ours" else dict(rtol=1e-6, atol=1e-9)
    for n, p in bank.named_parameters():
        torch.testing.assert_close(got[n], p.grad, **tol, msg=n)
    self_only, parts = bank.loss(batch, ["b"], "self")
    assert set(parts) == {"mse/b->b"}
