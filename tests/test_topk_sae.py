"""The TopK engine (``SparseCoder``) at SAE shapes: same outputs and gradients as overcomplete's
TopKSAE and a dense reference, sparse gradients, dictionary maintenance, AuxK, conversions, the
SAE bank's loss, option checks and the select dtype's auto resolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks.overcomplete_backend import OvercompleteTopKSAE, overcomplete_bank
from common.errors import UserError
from common.hardware import Hardware
from components.sae_bank import SAEBank, make_adam
from components.sparse_coder import (
    SparseCoder, SparseCoderConfig, _GatherPreCodes, resolve_select_dtype, sparse_decode)

D, N, K, B = 24, 64, 5, 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: extra threads only fight other processes on 2 cores."""


def cfg(n=N, k=K, **options) -> SparseCoderConfig:
    return SparseCoderConfig(n_latents=n, k=k, select_dtype=options.pop("select_dtype", "float32"), **options)


def make_coder(d, n, k, seed=None, **options) -> SparseCoder:
    return SparseCoder(d, cfg(n, k, **options), seed=seed)


def _x(b=B, d=D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64).abs() + 0.1, dim=1).to(dtype)


def _dense_reference(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    """The engine's math written densely: x_hat = TopK(ReLU(W_enc (x - b_dec) + b_enc)) D (+ b_dec)."""
    xc = x - sae.b_dec if sae.b_dec is not None else x
    z = F.linear(xc, sae.W_enc, sae.b_enc).relu()
    vals, idx = torch.topk(z, sae.k, dim=1)
    out = torch.zeros_like(z).scatter(1, idx, vals) @ sae.W_dec
    return out + sae.b_dec if sae.b_dec is not None else out


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_same_weights_same_outputs_as_overcomplete_both_ways(mode):
    ours = make_coder(D, N, K, tied_init=False, seed=3)
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
    back = SparseCoder.from_overcomplete(oc).train(mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(back(x)[2], xh_b, rtol=1e-5, atol=1e-6)


def test_overcomplete_stale_eval_dictionary_is_refreshed_by_the_adapter():
    """overcomplete caches its eval dictionary at .eval(); the adapter refreshes it after loading."""
    ad = OvercompleteTopKSAE(D, N, K, seed=0).eval()
    other = make_coder(D, N, K, seed=9)
    ad.sae.load_state_dict(other.to_overcomplete_state_dict())  # bypasses the adapter's hook: stale
    assert not torch.allclose(ad.get_dictionary(), other.W_dec)
    ad.load_state_dict({f"sae.{k}": v for k, v in other.to_overcomplete_state_dict().items()})
    torch.testing.assert_close(ad.get_dictionary(), other.W_dec, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pre_bias", [False, True])
def test_gradients_equal_dense_autograd(pre_bias):
    sae = make_coder(D, N, K, pre_bias=pre_bias, tied_init=False, seed=1).double()
    sae.init_pre_bias_(torch.linspace(-0.1, 0.1, D, dtype=torch.float64))
    x = _x(dtype=torch.float64)
    (sae.decode_sparse(sae.encode_sparse(x)) - x).square().mean().backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    (_dense_reference(sae, x) - x).square().mean().backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-10, atol=1e-13, msg=name)
        assert p.grad.abs().sum() > 0, name


def test_gradients_equal_overcomplete_and_projection_removes_parallel_part():
    """overcomplete renormalises under no_grad, so its gradients are the raw ones: equal to ours."""
    ours = make_coder(D, N, K, tied_init=False, seed=2).double()
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
    ours.project_decoder_grad_()
    assert (ours.W_dec.grad * ours.W_dec).sum(1).abs().max() < 1e-12
    # what was removed is, row by row, parallel to the row
    torch.testing.assert_close(raw - ours.W_dec.grad, (raw * ours.W_dec).sum(1, keepdim=True) * ours.W_dec)


def test_encoder_gradient_touches_only_selected_rows():
    sae = make_coder(D, N, K, seed=4)
    x = _x(b=3)
    codes = sae.encode_sparse(x)
    (sae.decode_sparse(codes) - x).square().mean().backward()
    touched = torch.zeros(N, dtype=torch.bool)
    touched[codes.indices.reshape(-1)] = True
    assert sae.W_enc.grad[~touched].abs().max() == 0
    assert sae.W_dec.grad[~touched].abs().max() == 0
    assert (sae.W_enc.grad[touched].abs().sum(1) > 0).sum() >= K  # some selected rows really move


def test_decoder_maintenance_and_one_training_step():
    sae = make_coder(D, N, K, seed=5)
    opt = make_adam(sae.parameters(), lr=1e-2)
    assert opt.defaults.get("fused") is True  # the fused kernel works on CPU in this torch
    x = _x()
    before = sae.W_dec.detach().clone()
    loss0 = (sae.decode_sparse(sae.encode_sparse(x)) - x).square().mean()
    loss0.backward()
    sae.project_decoder_grad_()
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
    sae = make_coder(D, N, K, aux_k=8, dead_window=10, seed=6)
    x = _x()
    codes = sae.encode_sparse(x)
    x_hat = sae.decode_sparse(codes)
    assert float(sae.auxk_loss(x, x_hat, codes).detach()) == 0.0  # nothing dead yet
    sae.update_dead(codes)
    fired = torch.zeros(N, dtype=torch.bool)
    fired[codes.indices[codes.values > 0]] = True
    assert (sae.samples_since_fired[fired] == 0).all() and (sae.samples_since_fired[~fired] == B).all()
    dead = torch.arange(N) >= N - 10
    with torch.no_grad():
        sae.samples_since_fired.copy_(torch.where(dead, 10, 0))
        sae.b_enc[dead] = 0.5  # make the dead latents' pre-activations positive
    codes = sae.encode_sparse(x)
    aux = sae.auxk_loss(x, sae.decode_sparse(codes).detach(), codes)
    assert float(aux.detach()) > 0
    aux.backward()
    assert sae.W_enc.grad[~dead].abs().max() == 0 and sae.W_enc.grad[dead].abs().sum() > 0


@pytest.mark.parametrize("step", [0.0, 0.05])
def test_revive_bias_brings_a_silenced_latent_back_only_when_on(step):
    bank = SAEBank({"a": D}, cfg(revive_bias_step=step, dead_window=2 * B), seed=3)
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
        bank.normalize_and_revive_()
        # only latents silent for dead_window samples are raised, by exactly ``step``
        dead = sae.samples_since_fired[1:] >= 2 * B
        torch.testing.assert_close(sae.b_enc[1:].detach() - bias_before, dead.float() * step)
        if fired_at is None and sae.samples_since_fired[0] == 0:
            fired_at = i
    assert (fired_at is not None) == (step > 0)


def test_bf16_autocast_runs_and_stays_close():
    sae = make_coder(D, N, K, seed=7)
    x = _x()
    ref = sae.decode_sparse(sae.encode_sparse(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sae.encode_sparse(x)
        out = sae.decode_sparse(codes)
    assert codes.pre_codes.dtype == torch.bfloat16 and out.dtype == torch.float32
    out.square().mean().backward()
    assert sae.W_enc.grad.dtype == torch.float32 and torch.isfinite(sae.W_enc.grad).all()
    # bf16 may swap near-tied winners; where the winners agree the reconstructions must agree
    same = (codes.indices.sort(1).values == sae.encode_sparse(x).indices.sort(1).values).all(1)
    assert same.float().mean() > 0.5
    assert (out - ref)[same].abs().max() < 0.02


@pytest.mark.parametrize("options, message", [
    (dict(k=N), "sae.k=64"), (dict(k=0), "sae.k=0"), (dict(n=1, k=1), "n_latents=1"),
    (dict(aux_k=N + 1), "sae.aux_k"), (dict(revive_bias_step=-1.0), "revive_bias_step"),
    (dict(k_start=2), "sae.k_start=2"), (dict(k_start=N + 1), "k_start"),
    (dict(k_anneal_epochs=-1), "k_anneal_epochs=-1"), (dict(dead_window=0), "dead_window=0"),
    (dict(sparse_max_density=1.5), "sparse_max_density"), (dict(aux_coef=-1.0), "aux_coef"),
    (dict(select_dtype="float16"), "select_dtype='float16'"),
])
def test_bad_options_are_one_line_user_errors(options, message):
    with pytest.raises(UserError, match=message) as err:
        cfg(**options)
    assert "\n" not in str(err.value)


def test_bad_sizes_and_conversions_are_user_errors():
    with pytest.raises(UserError, match="decoder bias"):
        make_coder(D, N, K, pre_bias=True).to_overcomplete()
    with pytest.raises(UserError, match="backbone name"):
        SAEBank({"a.b": D}, cfg())
    with pytest.raises(UserError, match="unknown option"):
        SparseCoderConfig.coerce({"n_latents": N, "bogus": 1})
    with pytest.raises(UserError, match="loss_normalisation"):
        SAEBank({"a": D}, cfg()).loss({"a": _x()}, ["a"], "self", normalisation="bogus")


def test_state_dict_round_trip_and_legacy_keys():
    a = make_coder(D, N, K, pre_bias=True, seed=8)
    a.init_pre_bias_(torch.full((D,), 0.1))
    b = make_coder(D, N, K, pre_bias=True, seed=9)
    b.load_state_dict(a.state_dict())
    x = _x()
    torch.testing.assert_close(a(x)[2], b(x)[2])
    assert set(a.state_dict()) == {"encoder.weight", "encoder.bias", "encoder.pre_bias", "encoder.k",
                                   "decoder.weight", "decoder.bias", "samples_since_fired"}
    assert a.encoder.pre_bias is a.b_dec  # tied
    # checkpoints of the earlier engine named the tensors W_enc, b_enc, W_dec, b_dec
    legacy = {"W_enc": a.W_enc.detach(), "b_enc": a.b_enc.detach(), "W_dec": a.W_dec.detach(),
              "b_dec": a.b_dec.detach(), "samples_since_fired": a.samples_since_fired}
    c = make_coder(D, N, K, pre_bias=True, seed=10)
    c.load_state_dict(legacy)
    torch.testing.assert_close(c(x)[2], a(x)[2])
    torch.testing.assert_close(c.encoder.pre_bias, a.b_dec)


@pytest.mark.parametrize("backend", ["ours", "overcomplete"])
def test_bank_loss_equals_the_pairwise_definition(backend):
    """Σ self + w·Σ cross with every code decoded by every decoder, values and gradients."""
    dims = {"a": D, "b": 16, "c": 12}
    bank = (SAEBank(dims, cfg(), seed=0) if backend == "ours" else overcomplete_bank(dims, cfg(), seed=0)).double()
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


@pytest.mark.parametrize("pre_bias", [False, True])
def test_gathered_pre_codes_pass_gradcheck(pre_bias):
    """The sparse encoder gradient (weight, bias and the closed-form pre-bias term) is exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    pre = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(9, generator=g)[:3] for _ in range(5)])

    def f(w, b, p):
        inputs = (x - p).detach() if pre_bias else x
        z_pre = torch.addmm(b, inputs, w.t()).detach()
        out = _GatherPreCodes.apply(z_pre, inputs, p if pre_bias else None, w, b, idx)
        torch.testing.assert_close(out, torch.addmm(b, x - p if pre_bias else x, w.t()).gather(1, idx))
        return out

    assert torch.autograd.gradcheck(f, (weight, bias, pre))


def test_dense_fallback_above_the_density_gives_the_same_gradients():
    x = _x(dtype=torch.float64)
    grads = []
    for density in (1.0, 0.01):  # K / N = 0.08: sparse kernels at 1.0, dense autograd at 0.01
        sae = make_coder(D, N, K, pre_bias=True, aux_k=6, sparse_max_density=density, seed=1).double()
        sae.init_pre_bias_(torch.linspace(-0.1, 0.1, D, dtype=torch.float64))
        sae.samples_since_fired[::3] = 10**6
        assert sae.use_sparse() == (density == 1.0)
        codes = sae.encode_sparse(x)
        x_hat = sae.decode_sparse(codes)
        ((x_hat - x).square().mean() + sae.auxk_loss(x, x_hat, codes)).backward()
        grads.append({n: p.grad for n, p in sae.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-10, atol=1e-13, msg=name)


def test_k_schedule_and_encode_time_k():
    config = cfg(k=4, k_start=20, k_anneal_epochs=4)
    assert [config.k_at(e) for e in range(6)] == [20, 16, 12, 8, 4, 4]
    assert cfg(k=4).k_at(0) == 4
    sae = SparseCoder(D, config, seed=0)
    assert sae.encode_sparse(_x(), k=9).indices.shape == (B, 9)
    assert ((sae.encode(_x(), k=2)[1] > 0).sum(1) <= 2).all()


@pytest.mark.parametrize("native", [True, False])
def test_select_dtype_auto_follows_the_machine(native):
    hw = Hardware(cpu_model="test CPU", cpu_capability="AVX512" if native else "AVX2", cpu_native_bf16=native,
                  threads=1, cuda_device=None, cuda_bf16=False)
    resolved, line = resolve_select_dtype("auto", "cpu", hw)
    assert resolved == ("bfloat16" if native else "float32")
    assert line == f"select_dtype auto -> {resolved} ({hw.cpu_capability}, bf16 {'native' if native else 'emulated'})"
    assert resolve_select_dtype("float32", "cpu", hw)[0] == "float32"  # explicit values win
    assert resolve_select_dtype("bfloat16", "cpu", hw)[0] == "bfloat16"


@pytest.mark.parametrize("normalisation", ["mean", "squared_norm", "per_model_variance"])
def test_bank_loss_normalisations(normalisation):
    dims = {"a": D, "b": 16}
    bank = SAEBank(dims, cfg(), seed=0).double()
    batch = {name: _x(d=d, seed=i, dtype=torch.float64) for i, (name, d) in enumerate(dims.items())}
    total, parts = bank.loss(batch, list(dims), "all", cross_weight=1.5, normalisation=normalisation)
    ref = 0.0
    for (i, j), w in {("a", "a"): 1, ("b", "b"): 1, ("a", "b"): 1.5, ("b", "a"): 1.5}.items():
        mse = parts[f"mse/{i}->{j}"]
        scale = {"mean": 1.0, "squared_norm": dims[j],
                 "per_model_variance": 1 / batch[j].var(0, unbiased=False).mean()}[normalisation]
        ref = ref + w * scale * mse
    torch.testing.assert_close(total.detach(), torch.as_tensor(ref, dtype=total.dtype))
