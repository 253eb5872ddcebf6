"""The exported halves of a TopK sparse coder, and their loaders (``encoder.pth``, ``decoder.pth``).

``TopKEncoder`` maps inputs (B, d) to codes ``TopK_k(ReLU(W (x - pre_bias) + b))`` (B, n); its
state_dict (weight, bias, pre_bias, k) is all a probe needs. ``Decoder`` maps codes (B, n) back to
``codes @ weight + bias`` (B, d); ``weight`` is (n, d), row i = atom i. Training runs through
``components.sparse_coder.SparseCoder``, which holds one of each (Makhzani & Frey 2013, "k-Sparse
Autoencoders"; Gao et al. 2024, "Scaling and evaluating sparse autoencoders").
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError
from common.safe_load import check_finite_weights, load_weights


def topk_mask(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of each row of ``pre`` (B, n), zero the rest."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values)


def densify(values: Tensor, indices: Tensor, n_units: int) -> Tensor:
    """Sparse codes ``(values, indices)``, each (B, k), as a dense (B, n_units) tensor."""
    return values.new_zeros(values.shape[0], n_units).scatter_(-1, indices, values)


class TopKEncoder(nn.Module):
    """Inputs (B, input_dim) → dense codes (B, n_units): ``TopK_k(ReLU(W (x - pre_bias) + b))``.

    Args:
        input_dim: d, pixels per image (784 for 28×28) or the feature dim.
        n_units: n, the code size.
        k: units kept per sample (a buffer, so a saved encoder carries it).
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


class Decoder(nn.Module):
    """Codes (B, n_units) → reconstruction (B, input_dim) = ``codes @ weight (+ bias)``.

    ``weight`` is ``(n_units, input_dim)``: row ``i`` is the atom of unit ``i``; ``bias=False``
    leaves the bias out (``self.bias`` is then None).
    """

    def __init__(self, input_dim: int, n_units: int, bias: bool = True) -> None:
        super().__init__()
        bound = 1 / math.sqrt(n_units)  # nn.Linear(n_units, input_dim)'s default init
        self.weight = nn.Parameter(torch.empty(n_units, input_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound)) if bias else None

    def forward(self, codes: Tensor) -> Tensor:
        """Dense codes (B, n_units) → (B, input_dim)."""
        if self.bias is None:
            return codes @ self.weight
        return torch.addmm(self.bias, codes, self.weight)


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
