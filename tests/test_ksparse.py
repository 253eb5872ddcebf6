"""The k-sparse autoencoder: component math (no Trainer), training, determinism, bad input."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from components.ksparse import TopKEncoder, decoder_from_state, encoder_from_state, read_state_dict, topk_mask
from components.sparse_coder import SparseCoder, SparseCoderConfig, _GatherPreCodes
from lightning_modules.ksparse_autoencoder import KSparseAutoencoder


def make_net(sparse: bool = True, **overrides) -> SparseCoder:
    """The k-sparse AE's engine at a small size (20 pixels, 32 units, k = 4), seeded."""
    options = dict(n_latents=32, k=4, unit_norm_decoder=True, tied_init=True, pre_bias=True,
                   decoder_bias=True, sparse=sparse, sparse_max_density=1.0, select_dtype="float32")
    options.update(overrides)
    return SparseCoder(20, SparseCoderConfig(**options), seed=0)


def train_forward(net: SparseCoder, x: torch.Tensor, k: int | None = None):
    codes = net.encode_sparse(x, k)
    return codes, net.decode_sparse(codes)


# ----- component math ------------------------------------------------------------------------

def test_topk_keeps_exactly_k_largest_per_row():
    torch.manual_seed(0)
    pre = torch.randn(8, 50).abs() + 0.1
    out = topk_mask(pre, 7)
    assert ((out != 0).sum(1) == 7).all()
    kept_min = out.masked_fill(out == 0, float("inf")).min(1).values
    dropped_max = pre.masked_fill(out != 0, -float("inf")).max(1).values
    assert (kept_min > dropped_max).all()


def test_encoder_codes_have_at_most_k_nonzeros_and_are_nonnegative():
    net = make_net()
    _, codes = net.encode(torch.rand(16, 20))
    assert codes.shape == (16, 32)
    assert ((codes > 0).sum(1) <= 4).all() and (codes >= 0).all()
    out, _ = train_forward(net, torch.rand(16, 20))
    assert out.values.shape == out.indices.shape == (16, 4)


def test_unit_norm_after_renormalisation_and_tied_init():
    net = make_net()
    assert torch.allclose(net.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    assert torch.equal(net.encoder.weight, net.decoder.weight)  # encoder = decoderᵀ (rows = atoms)
    assert torch.all(net.encoder.bias == 0)
    with torch.no_grad():
        net.decoder.weight.mul_(torch.rand(32, 1) * 5 + 0.1)
    net.normalize_decoder_()
    assert torch.allclose(net.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    plain = make_net(unit_norm_decoder=False)
    with torch.no_grad():
        plain.decoder.weight.mul_(3.0)
    plain.normalize_decoder_()  # off: atoms keep their norm
    assert torch.allclose(plain.W_dec.norm(dim=1), torch.full((32,), 3.0), atol=1e-5)


def test_pre_bias_is_tied_to_the_decoder_bias():
    net = make_net()
    net.init_pre_bias_(torch.full((20,), 0.25))
    assert net.encoder.pre_bias is net.decoder.bias
    assert torch.all(net.decoder.bias == 0.25)
    untied = make_net(pre_bias=False)
    assert not isinstance(untied.encoder.pre_bias, torch.nn.Parameter) and untied.b_dec is not None
    assert make_net(pre_bias=False, decoder_bias=False).b_dec is None


def test_gradient_projection_removes_the_component_along_each_atom():
    net = make_net()
    x = torch.rand(16, 20)
    F.mse_loss(train_forward(net, x)[1], x).backward()
    assert (net.decoder.weight.grad * net.decoder.weight).sum(1).abs().max() > 1e-6
    before = net.decoder.weight.grad.clone()
    net.project_decoder_grad_()
    grad, atoms = net.decoder.weight.grad, net.decoder.weight
    assert (grad * atoms).sum(1).abs().max() < 1e-7
    # what is left is the original minus its parallel part
    parallel = atoms * (before * atoms).sum(1, keepdim=True)
    assert torch.allclose(grad, before - parallel, atol=1e-7)


def test_sparse_kernels_match_the_dense_reference_with_auxk():
    net = make_net(sparse=True, aux_k=6)
    net.init_pre_bias_(torch.rand(20))
    ref = copy.deepcopy(net)
    ref.config = SparseCoderConfig(**{**net.config.as_dict(), "sparse": False})
    x = torch.rand(16, 20)
    for model in (net, ref):
        model.samples_since_fired[::3] = 10**6
        codes, recon = train_forward(model, x)
        aux = model.auxk_loss(x, recon, codes)
        assert aux > 0
        (F.mse_loss(recon, x) + aux).backward()
    assert torch.allclose(train_forward(net, x)[1], train_forward(ref, x)[1], atol=1e-6)
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
    # the dense codes of encode() reconstruct like the training path
    assert torch.allclose(net.decode(net.encode(x)[1]), train_forward(net, x)[1], atol=1e-6)


def test_bfloat16_select_trains_close_to_float32_and_evaluates_in_float32():
    """``select_dtype`` bfloat16 rounds the winners' forward values (so they differ from float32, by
    bfloat16's precision); the gradients it feeds stay close; evaluation mode is float32 exactly."""
    net = make_net(n_latents=64, k=8)
    net.init_pre_bias_(torch.rand(20))
    low = copy.deepcopy(net)
    low.select_dtype = torch.bfloat16
    x = torch.rand(32, 20)
    outs = []
    for model in (net, low):
        codes, recon = train_forward(model, x)
        F.mse_loss(recon, x).backward()
        outs.append((codes, recon))
    assert not torch.equal(outs[0][1], outs[1][1])
    (c0, _), (c1, _) = outs
    same = c0.indices.sort(1).values == c1.indices.sort(1).values
    assert same.float().mean() > 0.9
    rows = same.all(1)  # samples with the same winners: values agree to bfloat16 precision
    assert rows.sum() > 16
    assert torch.allclose(c0.values.gather(1, c0.indices.argsort(1))[rows],
                          c1.values.gather(1, c1.indices.argsort(1))[rows], rtol=2e-2, atol=1e-2)
    for (name, p), (_, q) in zip(net.named_parameters(), low.named_parameters()):
        assert (p.grad - q.grad).norm() < 0.1 * p.grad.norm(), name
    net.eval(), low.eval()
    assert torch.equal(train_forward(net, x)[1], train_forward(low, x)[1])


def test_select_dtype_other_than_auto_float32_or_bfloat16_is_a_user_error():
    with pytest.raises(UserError, match="sae.select_dtype='float16' must be 'auto', 'float32' or 'bfloat16'"):
        KSparseAutoencoder(input_dim=20, sae=SparseCoderConfig(n_latents=32, k=4, select_dtype="float16"))


@pytest.mark.parametrize("native", [True, False])
def test_select_dtype_auto_resolves_once_at_setup_and_is_recorded(native, monkeypatch):
    import common.hardware as hardware

    fake = hardware.Hardware(cpu_model="test", cpu_capability="AVX512" if native else "AVX2",
                             cpu_native_bf16=native, threads=1, cuda_device=None, cuda_bf16=False)
    monkeypatch.setattr(hardware, "detect", lambda: fake)
    model = KSparseAutoencoder(input_dim=20, sae=SparseCoderConfig(n_latents=32, k=4))
    model.setup("fit")
    expected = "bfloat16" if native else "float32"
    assert model.hparams.select_dtype_resolved == expected
    assert model.net.select_dtype == getattr(torch, expected)
    explicit = KSparseAutoencoder(input_dim=20, sae=SparseCoderConfig(n_latents=32, k=4, select_dtype="float32"))
    explicit.setup("fit")
    assert explicit.net.select_dtype == torch.float32  # an explicit value wins


def test_dense_steps_leave_the_sparse_kernels(monkeypatch):
    """Above ``sparse_max_density`` a step takes the dense path: same numbers, no sparse kernel."""
    calls = []
    original = _GatherPreCodes.apply
    monkeypatch.setattr(_GatherPreCodes, "apply", lambda *a: calls.append(1) or original(*a))
    net = make_net(sparse=True, sparse_max_density=0.25)  # 8 of 32 units
    ref = make_net(sparse=False)
    x = torch.rand(16, 20)
    assert torch.allclose(train_forward(net, x, k=8)[1], train_forward(ref, x, k=8)[1], atol=1e-6)
    assert len(calls) == 1
    train_forward(net, x, k=9)
    assert len(calls) == 1
    aux = make_net(sparse=True, sparse_max_density=0.25, aux_k=6)
    train_forward(aux, x, k=4)  # 4 + 6 AuxK units > 8
    assert len(calls) == 1


def test_auxk_loss_is_zero_without_dead_units_and_positive_with():
    net = make_net(aux_k=4)
    x = torch.rand(16, 20)
    codes, recon = train_forward(net, x)
    assert net.auxk_loss(x, recon, codes) == 0
    net.samples_since_fired.fill_(10**6)
    codes, recon = train_forward(net, x)
    aux = net.auxk_loss(x, recon, codes)
    assert aux > 0
    # Σ(ê - e)² / Σe²: the top-4 dead (here: all) pre-activations, ReLU'd, decode the residual e
    residual = (x - recon).detach()
    vals, idx = codes.pre_codes.topk(4, dim=1)
    aux_hat = torch.zeros(16, 32).scatter(1, idx, vals.relu()) @ net.W_dec.detach()
    expected = (aux_hat - residual).square().sum() / residual.square().sum()
    torch.testing.assert_close(aux.detach(), expected, rtol=1e-5, atol=1e-7)


def test_k_larger_than_code_size_is_a_user_error():
    with pytest.raises(UserError, match="sae.k=40 must satisfy 1 <= k < n_latents=32"):
        KSparseAutoencoder(input_dim=20, sae=SparseCoderConfig(n_latents=32, k=40))
    with pytest.raises(UserError, match="model.lr=0"):
        KSparseAutoencoder(input_dim=20, sae=SparseCoderConfig(n_latents=32, k=4), lr=0)
    with pytest.raises(ValueError):
        TopKEncoder(20, 8, 9)


def test_sparse_max_density_outside_unit_interval_is_a_user_error():
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match=f"sae.sparse_max_density={bad} must be in \\[0, 1\\]"):
            SparseCoderConfig(n_latents=32, k=4, sparse_max_density=bad)


def test_encoder_and_decoder_load_from_state_and_reject_other_shapes(tmp_path: Path):
    net = make_net()
    torch.save(net.encoder.state_dict(), tmp_path / "encoder.pth")
    state = read_state_dict(tmp_path / "encoder.pth", "net.encoder.", "encoder")
    encoder = encoder_from_state(state, "encoder", input_dim=20)
    x = torch.rand(4, 20)
    assert torch.equal(encoder(x), net.encode(x)[1])
    assert decoder_from_state(net.decoder.state_dict(), "decoder").weight.shape == (32, 20)
    with pytest.raises(UserError, match="encodes 20 inputs but the data has 784"):
        encoder_from_state(state, "encoder", input_dim=784)
    with pytest.raises(UserError, match="another model"):
        encoder_from_state({**state, "extra": torch.zeros(1)}, "encoder")
    with pytest.raises(UserError, match="shape"):
        encoder_from_state({**state, "bias": torch.zeros(5)}, "encoder")
    with pytest.raises(UserError, match="k=40"):
        encoder_from_state({**state, "k": torch.tensor(40)}, "encoder")
    with pytest.raises(UserError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth", "net.encoder.", "encoder")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch weights file"):
        read_state_dict(tmp_path / "junk.pth", "net.encoder.", "encoder")
    torch.save({"state_dict": {"backbone.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="checkpoint of another model"):
        read_state_dict(tmp_path / "other.ckpt", "net.encoder.", "encoder")


# ----- training through the Trainer ------------------------------------------------------------

def _train(tmp_path: Path, repo_root: Path, version: str, epochs: int = 2, extra: list[str] = ()) -> dict:
    args = [sys.executable, "train.py", "--config", "configs/fashion_mnist/ksae.yaml",
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
            "--data.init_args.train_subset", "2048",
            "--data.init_args.val_size", "512", "--run.root", str(tmp_path), "--run.version", version,
            "--model.init_args.sae.n_latents", "256", "--model.init_args.sae.k", "16",
            "--model.init_args.sae.k_start", "64", *extra]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "fashion_mnist_ksae" / version / "results.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root) -> Path:
    root = tmp_path_factory.mktemp("ksae")
    _train(root, repo_root, "a")
    return root


def test_training_reduces_loss_logs_active_units_and_exports_weights(trained: Path):
    run = trained / "fashion_mnist_ksae" / "a"
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"train/loss", "val/loss", "val/active_units", "test/loss", "test/active_units"} <= set(header)
    val = [float(r.split(",")[header.index("val/loss")]) for r in rows[1:]
           if r.split(",")[header.index("val/loss")]]
    assert len(val) == 2 and val[1] < val[0]
    encoder = torch.load(run / "encoder.pth", weights_only=True)
    decoder = torch.load(run / "decoder.pth", weights_only=True)
    assert encoder["weight"].shape == (256, 784) and int(encoder["k"]) == 16
    assert decoder["weight"].shape == (256, 784) and decoder["bias"].shape == (784,)
    assert torch.equal(encoder["pre_bias"], decoder["bias"])
    import yaml

    hparams = yaml.safe_load((run / "hparams.yaml").read_text())  # the run records the resolved dtype
    assert hparams["select_dtype_resolved"] in ("float32", "bfloat16") and hparams["sae"]["k"] == 16


class _LogsEveryStep(KSparseAutoencoder):
    def _logging_step(self) -> bool:
        return True


def _step_logs(cls: type, data_dir: Path, root: Path) -> list[dict]:
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from datamodules.fashion_mnist import FashionMNISTDataModule

    L.seed_everything(0, verbose=False)
    model = cls(sae=SparseCoderConfig(n_latents=64, k=8, dead_window=32, pre_bias=True, decoder_bias=True,
                                      revive_bias_step=1e-3))
    data = FashionMNISTDataModule(data_dir=str(data_dir), batch_size=32, val_size=64, train_subset=384,
                                  download=False)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=CSVLogger(root), log_every_n_steps=5,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              num_sanity_val_steps=0, deterministic=True).fit(model, datamodule=data)
    with open(Path(model.logger.log_dir) / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row.get("train/loss")]


def test_step_logs_skipped_between_writes_change_nothing_written(fashion_data_dir: Path, tmp_path: Path):
    """``self.log`` runs only on the steps Lightning writes: the CSV holds the same rows and values
    as when every step logs (12 steps, written every 5)."""
    skipping = _step_logs(KSparseAutoencoder, fashion_data_dir, tmp_path / "skip")
    every = _step_logs(_LogsEveryStep, fashion_data_dir, tmp_path / "every")
    assert [row["step"] for row in skipping] == [row["step"] for row in every] and len(every) == 2
    assert skipping == every and all(row["train/dead_units"] for row in skipping)


def test_same_config_and_seed_twice_gives_the_same_numbers(trained: Path, repo_root: Path):
    again = _train(trained, repo_root, "b")
    first = json.loads((trained / "fashion_mnist_ksae" / "a" / "results.json").read_text())
    assert again["test"] == first["test"]
    a = torch.load(trained / "fashion_mnist_ksae" / "a" / "encoder.pth", weights_only=True)
    b = torch.load(trained / "fashion_mnist_ksae" / "b" / "encoder.pth", weights_only=True)
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("override, message", [(("--model.init_args.sae.k", "2000"), "k=2000"),
                                               (("--model.init_args.sae.select_dtype", "float16"), "select_dtype")])
def test_bad_model_options_from_the_command_line_are_one_line(override, message, tmp_path: Path,
                                                              repo_root: Path):
    args = [sys.executable, "train.py", "--config", "configs/fashion_mnist/ksae.yaml", *override,
            "--run.root", str(tmp_path)]
    done = subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())
