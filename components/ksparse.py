"""The k-sparse autoencoder network (Makhzani & Frey, 2013, "k-Sparse Autoencoders"), with ReLU.

``z = TopK_k(ReLU(W_e (x - b_pre) + b_e))``, ``x̂ = W_d z + b_d``. The options are the known cures
for dead units (DESIGN.md; Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): unit-norm
decoder atoms with the gradient component along each atom removed, encoder initialised as the
decoder's transpose, a pre-bias tied to the decoder bias and set to the data mean, and an auxiliary
loss on dead units (AuxK).

Storage: ``decoder.weight`` is ``(n_units, input_dim)``, row ``i`` = atom ``i`` = column ``i`` of the
``W_d`` above (the layout of ``overcomplete``'s dictionary), so a sparse decode is one
``F.embedding_bag`` over the k winners. ``encoder.weight`` is ``(n_units, input_dim)`` like
``nn.Linear``; "encoder = decoderᵀ" at init is then a plain copy.

Speed (``sparse=True``): only the k winners (and the AuxK units) of each sample carry a gradient, so
the encoder's weight gradient, the decode and its backward touch only those rows (DESIGN.md "Speed";
Gao et al. 2024 use the same trick in their kernels). The dense path (``sparse=False``) computes the
same numbers with plain autograd and is the reference the tests compare against. In training, the
sparse path may compute the encoder matmul in bfloat16 (``select_dtype``): it only picks the winners
and their forward values; every gradient is float32.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError
from common.safe_load import check_finite_weights, load_weights


def topk_mask(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of each row of ``pre`` (B, n), zero the rest."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values)


def linear_in(x: Tensor, weight: Tensor, bias: Tensor, dtype: torch.dtype) -> Tensor:
    """``F.linear(x, weight, bias)`` computed in ``dtype`` and returned in ``x``'s dtype; bfloat16
    runs about 2× faster than float32 on CPUs with AVX512-BF16 or AMX (``bench_ksae_step.py``)."""
    if dtype == x.dtype:
        return F.linear(x, weight, bias)
    return F.linear(x.to(dtype), weight.to(dtype), bias.to(dtype)).to(x.dtype)


def densify(values: Tensor, indices: Tensor, n_units: int) -> Tensor:
    """Sparse codes ``(values, indices)``, each (B, k), as a dense (B, n_units) tensor."""
    return values.new_zeros(values.shape[0], n_units).scatter_(-1, indices, values)


class _GatheredLinear(torch.autograd.Function):
    """``((x - pre_bias) @ W.T + b).gather(1, idx)`` whose forward reuses precomputed values and whose
    backward touches only the gathered rows of ``W``: B·K·d work instead of the dense B·n·d, and the
    pre-bias gradient summed over the batch in closed form (``-grad_b @ W``) instead of per sample."""

    @staticmethod
    def forward(ctx, x_c: Tensor, pre_bias: Tensor, weight: Tensor, bias: Tensor, idx: Tensor,
                values: Tensor) -> Tensor:
        ctx.save_for_backward(x_c, weight, idx)
        ctx.mark_non_differentiable(idx)
        return values.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_c, weight, idx = ctx.saved_tensors
        n_units, batch, kk = weight.shape[0], idx.shape[0], idx.shape[1]
        flat_idx, flat_grad = idx.reshape(-1), grad.reshape(-1)
        grad_w = grad_b = grad_pre = None
        if ctx.needs_input_grad[2]:
            # G^T (n_units, B) with K non-zeros per sample, times x_c (B, d)
            rows = torch.arange(batch, device=x_c.device).repeat_interleave(kk)
            g_t = torch.sparse_coo_tensor(torch.stack([flat_idx, rows]), flat_grad,
                                          (n_units, batch), check_invariants=False)
            grad_w = torch.sparse.mm(g_t, x_c)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_b = grad.new_zeros(n_units).index_add_(0, flat_idx, flat_grad)
            if ctx.needs_input_grad[1]:
                grad_pre = -(grad_b @ weight)
        return None, grad_pre, grad_w, grad_b, None, None


class TopKEncoder(nn.Module):
    """Images (B, input_dim) → codes: ``TopK_k(ReLU(W (x - pre_bias) + b))``; self-contained, so its
    state_dict (weight, bias, pre_bias, k) is all a probe needs.

    Args:
        input_dim: pixels per image (784 for 28×28).
        n_units: code size.
        k: units kept per sample (stored as a buffer so a saved encoder carries it).
        pre_bias: a ``(input_dim,)`` Parameter to subtract first (the decoder bias, tied), or ``None``
            for a zero buffer.
    """

    def __init__(self, input_dim: int, n_units: int, k: int, pre_bias: nn.Parameter | None = None) -> None:
        super().__init__()
        if not 0 < k <= n_units:
            raise ValueError(f"k must be in [1, n_units={n_units}], got {k}")
        self.input_dim, self.n_units = input_dim, n_units
        bound = 1 / math.sqrt(input_dim)  # nn.Linear's default init
        self.weight = nn.Parameter(torch.empty(n_units, input_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_units).uniform_(-bound, bound))
        if pre_bias is None:
            self.register_buffer("pre_bias", torch.zeros(input_dim))
        else:
            self.pre_bias = pre_bias
        self.register_buffer("k", torch.tensor(k))

    def pre_activations(self, x: Tensor) -> Tensor:
        """(B, input_dim) → (B, n_units), before the ReLU and top-k."""
        return F.linear(x.flatten(1) - self.pre_bias, self.weight, self.bias)

    def forward(self, x: Tensor, k: int | None = None) -> Tensor:
        """Dense codes (B, n_units) with at most ``k`` (default: the stored k) non-zeros per row."""
        return topk_mask(F.relu(self.pre_activations(x)), int(self.k) if k is None else k)

    def select(self, x: Tensor, k: int, dead: Tensor | None = None, k_aux: int = 0, sparse: bool = True,
               select_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Sparse codes for training: ``(values, indices)`` (B, k) of the winners and, when ``dead``
        (bool, n_units) has any unit, ``(aux_values, aux_indices)`` (B, ≤k_aux) of the top dead units
        (AuxK), else ``None``s. Values are ReLU'd and carry gradients to every parameter.

        ``select_dtype``: the sparse path computes the pre-activations (which units win, and their
        values) in this dtype; the gradients are float32 either way. The dense path is float32."""
        x = x.flatten(1)
        if sparse:
            with torch.no_grad():
                x_c = x - self.pre_bias
                pre = linear_in(x_c, self.weight, self.bias, select_dtype)
        else:  # one linear, autograd; W (x - p) + b = W x + (b - W p) spares the (B, d) gradient of x - p
            pre = F.linear(x, self.weight, self.bias - self.weight @ self.pre_bias)
        with torch.no_grad():
            scores = pre.detach()
            idx = scores.topk(k, dim=-1, sorted=False).indices
            aux_idx = None
            n_dead = 0 if dead is None or k_aux <= 0 else int(dead.sum())
            if n_dead > 0:
                aux_idx = scores.masked_fill(~dead, -math.inf).topk(min(k_aux, n_dead), dim=-1, sorted=False).indices
                idx = torch.cat([idx, aux_idx], dim=1)
        if sparse:
            values = _GatheredLinear.apply(x_c, self.pre_bias, self.weight, self.bias, idx,
                                           scores.gather(1, idx))
        else:
            values = pre.gather(1, idx)
        values = F.relu(values)
        if aux_idx is None:
            return values, idx, None, None
        return values[:, :k], idx[:, :k], values[:, k:], idx[:, k:]


class Decoder(nn.Module):
    """Codes (B, n_units) → reconstruction (B, input_dim) = ``codes @ weight + bias``.

    ``weight`` is ``(n_units, input_dim)``: row ``i`` is the atom of unit ``i``.
    """

    def __init__(self, input_dim: int, n_units: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(n_units)  # nn.Linear(n_units, input_dim)'s default init
        self.weight = nn.Parameter(torch.empty(n_units, input_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))

    def forward(self, codes: Tensor) -> Tensor:
        """Dense codes (B, n_units) → (B, input_dim)."""
        return torch.addmm(self.bias, codes, self.weight)

    def decode_sparse(self, values: Tensor, indices: Tensor, bias: bool = True, sparse: bool = True) -> Tensor:
        """Sparse codes (B, k) values + indices → (B, input_dim); ``bias=False`` leaves out ``bias``."""
        if sparse:
            out = F.embedding_bag(indices, self.weight, per_sample_weights=values, mode="sum")
        else:
            out = densify(values, indices, self.weight.shape[0]) @ self.weight
        return out + self.bias if bias else out


class KSparseOutput(NamedTuple):
    """One training forward: winners ``(values, indices)`` (B, k), reconstruction (B, input_dim),
    and the AuxK units ``(aux_values, aux_indices)`` (B, k_aux) or ``None``s."""

    values: Tensor
    indices: Tensor
    recon: Tensor
    aux_values: Tensor | None
    aux_indices: Tensor | None


class KSparseAE(nn.Module):
    """input_dim → n_units ReLU + top-k encoder, linear decoder back to input_dim.

    Args:
        input_dim: pixels per image (784 for 28×28).
        n_units: code size.
        k: units kept per sample.
        unit_norm_decoder: keep every atom (decoder row) at unit L2 norm (call ``normalize_decoder``
            after each step and ``project_decoder_grad`` before it).
        tied_init: initialise the encoder weight as the decoder's transpose (Gao et al. 2024 §A).
        pre_bias: subtract the decoder bias before encoding (tied; set it to the data mean with
            ``init_pre_bias``).
        sparse: train through the sparse kernels (same numbers as the dense reference, faster).
        sparse_max_density: ... but only while at most this share of the units is selected per
            sample (k + AuxK units over n_units); above it dense matmuls are faster (at 784 → 1024,
            batch 256 on 2 CPU cores the crossover is k ≈ 175-200: ``benchmarks/bench_ksae_step.py``).
        select_dtype: dtype of the sparse path's encoder matmul in training mode (``self.training``),
            which picks the winners and gives their values; evaluation and the dense path use float32.
    """

    def __init__(self, input_dim: int, n_units: int, k: int, unit_norm_decoder: bool,
                 tied_init: bool, pre_bias: bool, sparse: bool, sparse_max_density: float,
                 select_dtype: torch.dtype) -> None:
        super().__init__()
        if not 0 < k <= n_units:
            raise ValueError(f"k must be in [1, n_units={n_units}], got {k}")
        self.input_dim, self.n_units, self.k = input_dim, n_units, k
        self.unit_norm_decoder, self.sparse = unit_norm_decoder, sparse
        self.sparse_max_density, self.select_dtype = sparse_max_density, select_dtype
        self.decoder = Decoder(input_dim, n_units)
        self.encoder = TopKEncoder(input_dim, n_units, k, self.decoder.bias if pre_bias else None)
        if unit_norm_decoder:
            self.normalize_decoder()
        if tied_init:
            with torch.no_grad():
                self.encoder.weight.copy_(self.decoder.weight)
                self.encoder.bias.zero_()

    @torch.no_grad()
    def init_pre_bias(self, data_mean: Tensor) -> None:
        """Set the decoder bias (the pre-bias when tied) to the data mean, shape (input_dim,)."""
        self.decoder.bias.copy_(data_mean.reshape(-1))

    def encode(self, x: Tensor, k: int | None = None) -> Tensor:
        """Dense codes (B, n_units) of images (B, ...) with input_dim pixels."""
        return self.encoder(x, self.k if k is None else k)

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction (B, input_dim) from dense codes (B, n_units)."""
        return self.decoder(codes)

    def forward(self, x: Tensor, k: int | None = None, dead: Tensor | None = None,
                k_aux: int = 0) -> KSparseOutput:
        """Training forward for images (B, ...); ``dead`` (bool, n_units) + ``k_aux`` add AuxK units."""
        k = self.k if k is None else k
        sparse = self.use_sparse(k + (k_aux if dead is not None else 0))
        dtype = self.select_dtype if self.training else torch.float32
        values, indices, aux_values, aux_indices = self.encoder.select(x, k, dead, k_aux, sparse, dtype)
        recon = self.decoder.decode_sparse(values, indices, sparse=sparse)
        return KSparseOutput(values, indices, recon, aux_values, aux_indices)

    def use_sparse(self, selected: int) -> bool:
        """Whether a step that selects ``selected`` units per sample takes the sparse kernels."""
        return self.sparse and selected <= self.sparse_max_density * self.n_units

    def auxk_loss(self, x: Tensor, out: KSparseOutput) -> Tensor:
        """AuxK (Gao et al. 2024, §A.2): the top dead units must reconstruct the detached residual;
        normalised by the residual's own mean square. Zero when no unit is dead."""
        if out.aux_values is None:
            return out.recon.new_zeros(())
        residual = (x.flatten(1) - out.recon).detach()
        aux = self.decoder.decode_sparse(out.aux_values, out.aux_indices, bias=False,
                                         sparse=self.use_sparse(out.values.shape[1] + out.aux_values.shape[1]))
        return (aux - residual).pow(2).mean() / residual.pow(2).mean().clamp_min(1e-12)

    @torch.no_grad()
    def raise_bias(self, dead: Tensor, step: float) -> None:
        """Add ``step`` to the encoder bias of the ``dead`` units (bool, n_units): a homeostatic
        firing floor — a unit that stopped winning drifts up until it wins again (adaptive
        thresholds as in Földiák 1990; "boosting" of k-winner layers, Ahmad & Scheinkman 2019)."""
        self.encoder.bias.add_(dead.to(self.encoder.bias.dtype), alpha=step)

    def atoms(self) -> Tensor:
        """Decoder atoms, one row per unit: (n_units, input_dim)."""
        return self.decoder.weight

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale every atom (decoder row) to unit L2 norm."""
        weight = self.decoder.weight
        weight.div_(weight.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each atom's gradient its component along that (unit-norm) atom."""
        weight, grad = self.decoder.weight, self.decoder.weight.grad
        if grad is not None:
            grad.addcmul_(weight, torch.linalg.vecdot(grad, weight).unsqueeze(1), value=-1.0)


def read_state_dict(path: str | Path, prefix: str, what: str) -> dict[str, Tensor]:
    """The tensors of ``path``: a plain state_dict (``encoder.pth``) or, for a Lightning checkpoint
    (a dict with ``state_dict``), its entries under ``prefix`` (e.g. ``"net.encoder."``) with the
    prefix removed. ``what`` names the file in errors. Loads with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist; check the path or run the training that writes it")
    obj = load_weights(path, what)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = {key[len(prefix):]: value for key, value in obj["state_dict"].items() if key.startswith(prefix)}
        if not obj:
            raise UserError(f"{what} '{path}' is a checkpoint of another model (no '{prefix}*' weights); "
                            f"pass a KSparseAutoencoder checkpoint or its exported .pth")
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{what} '{path}' holds no state_dict of tensors; pass a .pth state_dict or a .ckpt")
    check_finite_weights(obj, f"{what} '{path}'")
    return obj


def _check_shapes(state: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    if set(state) != set(expected):
        raise UserError(f"{what} has entries {sorted(state)} but a {sorted(expected)} state_dict is "
                        f"needed; it comes from another model")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise UserError(f"{what}: '{key}' has shape {tuple(state[key].shape)}, expected {shape}; "
                            f"it comes from a model of another shape")


def encoder_from_state(state: dict[str, Tensor], what: str, input_dim: int | None = None) -> TopKEncoder:
    """A ``TopKEncoder`` with the weights of ``state``; a ``UserError`` if they do not fit it
    (``input_dim``: the pixels the caller will feed, checked when given)."""
    weight = state.get("weight")
    if weight is None or weight.dim() != 2:
        raise UserError(f"{what} has no 2-D 'weight'; it is not a k-sparse encoder")
    n_units, dim = weight.shape
    if input_dim is not None and dim != input_dim:
        raise UserError(f"{what} encodes {dim} inputs but the data has {input_dim}; use a matching encoder")
    _check_shapes(state, {"weight": (n_units, dim), "bias": (n_units,), "pre_bias": (dim,), "k": ()}, what)
    k = int(state["k"])
    if not 0 < k <= n_units:
        raise UserError(f"{what} has k={k} but only {n_units} units; k must be in [1, {n_units}]")
    encoder = TopKEncoder(dim, n_units, k)
    encoder.load_state_dict(state)
    return encoder


def decoder_from_state(state: dict[str, Tensor], what: str) -> Decoder:
    """A ``Decoder`` with the weights of ``state``; a ``UserError`` if they do not fit it."""
    weight = state.get("weight")
    if weight is None or weight.dim() != 2:
        raise UserError(f"{what} has no 2-D 'weight'; it is not a k-sparse decoder")
    n_units, dim = weight.shape
    _check_shapes(state, {"weight": (n_units, dim), "bias": (dim,)}, what)
    decoder = Decoder(dim, n_units)
    decoder.load_state_dict(state)
    return decoder
