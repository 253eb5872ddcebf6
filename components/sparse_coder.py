"""The TopK sparse-coding engine of both studies: one module, one options dataclass, one output type.

Math (Makhzani & Frey 2013, "k-Sparse Autoencoders"; Gao et al. 2024, "Scaling and evaluating
sparse autoencoders"; weight layout of ``overcomplete`` 0.3.0, so weights convert both ways)::

    z_pre = W_enc (x - b_pre) + b_enc      b_pre = b_dec with ``pre_bias``, else 0
    z     = TopK_k(ReLU(z_pre))            the k largest pre-activations per sample, ReLU'd
    x_hat = z W_dec (+ b_dec)              W_dec (n, d): row i = atom i, unit L2 norm

Storage: ``encoder`` (``components.ksparse.TopKEncoder``: ``weight`` (n, d), ``bias`` (n,), the
pre-bias, ``k``) and ``decoder`` (``components.ksparse.Decoder``: ``weight`` (n, d), ``bias`` (d,)
or none), so ``encoder.pth`` / ``decoder.pth`` are those submodules' state_dicts; ``W_enc``,
``b_enc``, ``W_dec``, ``b_dec`` name the same tensors. ``docs/engine.md`` has the options and kernels.

Training path (``encode_sparse`` → ``decode_sparse``): the (B, n) pre-activations are computed
without autograd (in ``select_dtype`` while training), the k winners are gathered by an autograd
Function whose backward touches only their k rows of ``W_enc``, and the decode is an
``F.embedding_bag`` over the k atoms; above ``sparse_max_density`` the same math runs as dense
autograd. No host sync in the training path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.errors import UserError
from components.ksparse import Decoder, TopKEncoder

SelectDtype = Literal["auto", "float32", "bfloat16"]


@dataclass
class SparseCoderConfig:
    """Options of one TopK sparse coder (read by LightningCLI from YAML as ``model.init_args.sae``).

    Attributes:
        n_latents: n, the dictionary size (latents / code units).
        k: latents kept per sample (the final k when a k schedule is used); 1 <= k < n_latents.
        k_start: k schedule (Makhzani & Frey 2013): start at this k ...; None: no schedule.
        k_anneal_epochs: ... and lower it linearly to ``k`` over this many epochs.
        pre_bias: subtract the decoder bias before encoding (tied; set to the data mean at start).
        decoder_bias: learn a decoder bias b_dec even without ``pre_bias`` (the plain k-sparse AE).
        tied_init: initialise the encoder as the decoder's transpose, encoder bias 0 (Gao et al.).
        unit_norm_decoder: keep atoms at unit norm: the gradient component along each atom is
            removed before the optimizer step and the atoms renormalised after it.
        aux_k: latents in the AuxK loss on dead latents (Gao et al. 2024 §A.2); 0: off.
        aux_coef: weight of the AuxK loss (Gao et al.: 1/32).
        dead_window: a latent is dead (for AuxK and revive) after this many training samples
            without firing.
        revive_bias_step: add this to the encoder bias of each dead latent after every optimizer
            step (a homeostatic firing floor); 0: off.
        sparse: train through the sparse kernels (same numbers as dense autograd, faster).
        sparse_max_density: ... only while (k + aux_k) / n_latents is at most this; denser steps
            (early in a k schedule) run as dense matmuls.
        select_dtype: dtype of the training-time encoder matmul of the sparse path (which units
            win, and their forward values); gradients and evaluation stay float32. ``auto``:
            bfloat16 where it is native (AVX512-BF16 / AMX CPUs, bf16 CUDA), else float32.
    """

    n_latents: int = 4096
    k: int = 32
    k_start: int | None = None
    k_anneal_epochs: int = 0
    pre_bias: bool = False
    decoder_bias: bool = False
    tied_init: bool = True
    unit_norm_decoder: bool = True
    aux_k: int = 0
    aux_coef: float = 1.0 / 32
    dead_window: int = 100_000
    revive_bias_step: float = 0.0
    sparse: bool = True
    sparse_max_density: float = 0.2
    select_dtype: SelectDtype = "auto"

    def __post_init__(self) -> None:
        n, k = self.n_latents, self.k
        if n < 2:
            raise UserError(f"sae.n_latents={n} must be at least 2")
        if not 1 <= k < n:
            raise UserError(f"sae.k={k} must satisfy 1 <= k < n_latents={n}; lower k or raise n_latents")
        if self.k_start is not None and not k <= self.k_start <= n:
            raise UserError(f"sae.k_start={self.k_start} must be between k={k} and n_latents={n} (or null)")
        if self.k_anneal_epochs < 0:
            raise UserError(f"sae.k_anneal_epochs={self.k_anneal_epochs} must be >= 0")
        if not 0 <= self.aux_k <= n:
            raise UserError(f"sae.aux_k={self.aux_k} must be between 0 (off) and n_latents={n}")
        if self.aux_coef < 0:
            raise UserError(f"sae.aux_coef={self.aux_coef} must be >= 0")
        if self.dead_window < 1:
            raise UserError(f"sae.dead_window={self.dead_window} must be at least 1 sample")
        if self.revive_bias_step < 0:
            raise UserError(f"sae.revive_bias_step={self.revive_bias_step} must be >= 0 (0 turns it off)")
        if not 0.0 <= self.sparse_max_density <= 1.0:
            raise UserError(f"sae.sparse_max_density={self.sparse_max_density} must be in [0, 1]")
        if self.select_dtype not in ("auto", "float32", "bfloat16"):
            raise UserError(f"sae.select_dtype={self.select_dtype!r} must be 'auto', 'float32' or 'bfloat16'")

    @classmethod
    def coerce(cls, value: "SparseCoderConfig | Mapping | None", **defaults) -> "SparseCoderConfig":
        """``value`` as a config: a config as is, a mapping (e.g. from a checkpoint's hparams) as
        keyword arguments over ``defaults``, None as ``cls(**defaults)``."""
        if isinstance(value, cls):
            return value
        if value is None:
            return cls(**defaults)
        if not isinstance(value, Mapping):
            raise UserError(f"sae must be a mapping of SparseCoderConfig options, got {type(value).__name__}")
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"sae has unknown option(s) {', '.join(sorted(unknown))}; "
                            f"see docs/engine.md for the options")
        return cls(**{**defaults, **value})

    def as_dict(self) -> dict:
        return asdict(self)

    def k_at(self, epoch: int) -> int:
        """k for ``epoch``: ``k_start`` lowered linearly to ``k`` over ``k_anneal_epochs``, else ``k``."""
        if self.k_start is None or self.k_anneal_epochs <= 0:
            return self.k
        done = min(1.0, epoch / self.k_anneal_epochs)
        return round(self.k_start - (self.k_start - self.k) * done)


def resolve_select_dtype(choice: str, device: str | torch.device = "cpu", hardware=None) -> tuple[str, str]:
    """``(resolved, log line)`` for ``select_dtype``: ``auto`` becomes bfloat16 where it is native on
    ``device`` (``common.hardware``), else float32; explicit values are kept."""
    from common.hardware import detect, resolve_matmul_dtype

    resolved = resolve_matmul_dtype(choice, device, hardware)
    if choice != "auto":
        return resolved, f"select_dtype {choice} (explicit)"
    if torch.device(device).type == "cuda":
        why = "CUDA"
    else:
        hw = hardware or detect()
        why = f"{hw.cpu_capability}, bf16 {'native' if hw.cpu_native_bf16 else 'emulated'}"
    return resolved, f"select_dtype auto -> {resolved} ({why})"


class SparseCodes(NamedTuple):
    """The sparse codes of one batch.

    indices: (B, k) long, the winners; values: (B, k), their codes (>= 0, carry gradients);
    pre_codes: (B, n) pre-activations ``z_pre`` (no gradient; None for stacked codes);
    inputs: (B, d) what the encoder saw, ``x - b_pre`` (None for stacked codes);
    dense: (B, n) codes, set only by dense-decoding modules (the benchmark's overcomplete adapter).
    """

    indices: Tensor
    values: Tensor
    pre_codes: Tensor | None = None
    inputs: Tensor | None = None
    dense: Tensor | None = None


# ----- sparse-gradient kernels ---------------------------------------------------------------

def scatter_rows_coo(idx: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """``out[l] = Σ_{(b,i): idx[b,i]=l} weights[b,i] · rows[b]``: (B,k),(B,k),(B,d) → (n,d), as a
    sparse-COO (n, B) matrix times the dense rows (``torch.sparse.mm``); ~B·k·d work."""
    batch, kk = idx.shape
    sample = torch.arange(batch, device=idx.device).repeat_interleave(kk)
    g_t = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), sample]), weights.reshape(-1).to(rows.dtype),
                                  (n, batch), check_invariants=False)
    return torch.sparse.mm(g_t, rows)


def scatter_rows_bag(idx: Tensor, weights: Tensor, rows: Tensor, n: int) -> Tensor:
    """Same as ``scatter_rows_coo``, as one ``F.embedding_bag`` whose bags are the latents (entries
    grouped by latent with a stable int32 argsort)."""
    k = idx.shape[1]
    flat = idx.reshape(-1)
    order = torch.argsort(flat.to(torch.int32), stable=True)
    counts = torch.bincount(flat, minlength=n)
    offsets = counts.cumsum(0) - counts
    sample = torch.div(order, k, rounding_mode="floor")
    w = weights.reshape(-1)[order].to(rows.dtype)
    return F.embedding_bag(sample, rows, offsets, per_sample_weights=w, mode="sum")


# The kernel for the (n, d) weight gradients, chosen by ``benchmarks/bench_engine_kernels.py``.
scatter_rows = scatter_rows_bag


class _GatherPreCodes(torch.autograd.Function):
    """``z_pre.gather(1, idx)`` for a ``z_pre = inputs @ W.T + b`` computed without autograd; the
    backward touches only the gathered rows of W: grad_W = scatter of g·inputs (B·k·d work),
    grad_b = scatter of g, and the pre-bias gradient in closed form ``-(grad_b @ W)`` (the data
    needs no gradient, so ``inputs = x - b_pre`` depends on b_pre only)."""

    @staticmethod
    def forward(ctx, z_pre, inputs, pre_bias, weight, bias, idx):
        ctx.save_for_backward(inputs, weight, idx)
        return z_pre.gather(1, idx)

    @staticmethod
    def backward(ctx, grad):
        inputs, weight, idx = ctx.saved_tensors
        n = weight.shape[0]
        grad_pre = grad_weight = grad_bias = None
        if ctx.needs_input_grad[3]:
            grad_weight = scatter_rows(idx, grad, inputs, n).to(weight.dtype)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[4]:
            grad_bias = torch.zeros(n, dtype=weight.dtype, device=weight.device)
            grad_bias.index_add_(0, idx.reshape(-1), grad.reshape(-1).to(weight.dtype))
            if ctx.needs_input_grad[2]:
                grad_pre = -(grad_bias @ weight)
            if not ctx.needs_input_grad[4]:
                grad_bias = None
        return None, None, grad_pre, grad_weight, grad_bias, None


class _AttachDictionaryGrad(torch.autograd.Function):
    """Identity on a decoded batch whose backward adds the sparse dictionary gradient
    (``embedding_bag`` on the detached dictionary already gives the code values theirs)."""

    @staticmethod
    def forward(ctx, out, dictionary, idx, vals):
        ctx.save_for_backward(idx, vals)
        ctx.n, ctx.dtype = dictionary.shape[0], dictionary.dtype
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out):
        idx, vals = ctx.saved_tensors
        return grad_out, scatter_rows(idx, vals, grad_out, ctx.n).to(ctx.dtype), None, None


def sparse_decode(idx: Tensor, vals: Tensor, dictionary: Tensor) -> Tensor:
    """``Σ_i vals[b,i] · dictionary[idx[b,i]]``: (B,k) codes on an (n,d) dictionary → (B,d);
    differentiable in ``vals`` and ``dictionary`` at ~B·k·d cost."""
    vals = vals.to(dictionary.dtype)
    out = F.embedding_bag(idx, dictionary.detach(), per_sample_weights=vals, mode="sum")
    if dictionary.requires_grad and torch.is_grad_enabled():
        out = _AttachDictionaryGrad.apply(out, dictionary, idx, vals.detach())
    return out


def _linear_in(x: Tensor, weight: Tensor, bias: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``addmm(bias, x, weight.T)`` computed in ``dtype`` (None: as given), returned in that dtype."""
    if dtype is None or dtype == weight.dtype:
        return torch.addmm(bias, x, weight.t())
    return torch.addmm(bias.to(dtype), x.to(dtype), weight.to(dtype).t())


# ----- the engine ----------------------------------------------------------------------------

# Dictionaries of at least this many elements project their gradient in cache-sized row blocks
# (faster from a few million elements on; ``benchmarks/bench_engine_kernels.py``).
_BLOCKED_PROJECTION_MIN = 1 << 21

_LEGACY_KEYS = {"W_enc": "encoder.weight", "b_enc": "encoder.bias", "W_dec": "decoder.weight",
                "b_dec": "decoder.bias"}


class SparseCoder(nn.Module):
    """TopK sparse coder over d-dim inputs with the options of ``SparseCoderConfig``.

    Args:
        input_dim: d (784 for 28×28 images, the feature dim for a backbone).
        config: the options.
        seed: seed of the weight initialisation; None uses the global RNG.
    """

    def __init__(self, input_dim: int, config: SparseCoderConfig, seed: int | None = None) -> None:
        super().__init__()
        if input_dim < 1:
            raise UserError(f"input_dim={input_dim} must be positive")
        if not isinstance(config, SparseCoderConfig):
            raise TypeError(f"config must be a SparseCoderConfig, got {type(config).__name__}")
        self.config = config
        self.input_dim, self.n_latents, self.k = int(input_dim), config.n_latents, config.k
        self.aux_k, self.aux_coef = config.aux_k, float(config.aux_coef)
        self.select_dtype: torch.dtype = torch.float32 if config.select_dtype == "auto" \
            else getattr(torch, config.select_dtype)
        n, d = self.n_latents, self.input_dim
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w_dec = torch.randn(n, d, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.decoder = Decoder(d, n, bias=config.decoder_bias or config.pre_bias)
        self.encoder = TopKEncoder(d, n, config.k, self.decoder.bias if config.pre_bias else None)
        with torch.no_grad():
            self.decoder.weight.copy_(w_dec)
            if self.decoder.bias is not None:
                self.decoder.bias.zero_()
            if config.tied_init:
                self.encoder.weight.copy_(w_dec)
            else:  # nn.Linear's default: U(-1/sqrt(d), 1/sqrt(d))
                bound = 1.0 / math.sqrt(d)
                self.encoder.weight.copy_(torch.rand(n, d, generator=gen) * (2 * bound) - bound)
            self.encoder.bias.zero_()
        # Training samples since each latent last fired (code > 0), for AuxK and revive.
        self.register_buffer("samples_since_fired", torch.zeros(n, dtype=torch.long))
        self._register_load_state_dict_pre_hook(self._upgrade_legacy_keys)

    # ----- parameter names of the overcomplete layout ----------------------------------------
    @property
    def W_enc(self) -> nn.Parameter:  # noqa: N802 - the literature's name
        return self.encoder.weight

    @property
    def b_enc(self) -> nn.Parameter:
        return self.encoder.bias

    @property
    def W_dec(self) -> nn.Parameter:  # noqa: N802
        return self.decoder.weight

    @property
    def b_dec(self) -> nn.Parameter | None:
        return self.decoder.bias

    def _upgrade_legacy_keys(self, state_dict, prefix, *args) -> None:
        """Checkpoints written before the engine was unified name the tensors W_enc, b_enc, W_dec,
        b_dec; load them under the submodule names (and fill the derived pre_bias / k entries)."""
        for old, new in _LEGACY_KEYS.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        if prefix + "encoder.weight" in state_dict:
            if prefix + "encoder.pre_bias" not in state_dict:
                pre = state_dict.get(prefix + "decoder.bias") if self.config.pre_bias else None
                state_dict[prefix + "encoder.pre_bias"] = pre if pre is not None else self.encoder.pre_bias.detach()
            state_dict.setdefault(prefix + "encoder.k", self.encoder.k.detach().clone())

    # ----- training path ---------------------------------------------------------------------
    def use_sparse(self, k: int | None = None) -> bool:
        """Whether a training step with ``k`` winners (+ the AuxK units) takes the sparse kernels."""
        selected = (self.k if k is None else k) + self.aux_k
        return self.config.sparse and selected <= self.config.sparse_max_density * self.n_latents

    def encode_sparse(self, x: Tensor, k: int | None = None) -> SparseCodes:
        """Inputs (B, d) → their ``k`` (default: config.k) winners as ``SparseCodes``."""
        k = self.k if k is None else k
        x = x.flatten(1)
        pre_bias = self.encoder.pre_bias
        if self.use_sparse(k) or not torch.is_grad_enabled():
            with torch.no_grad():
                inputs = x - pre_bias if self.config.pre_bias else x
                # float32 means full precision: the weights' own dtype (float64 in the tests)
                dtype = self.select_dtype if self.training and self.select_dtype != torch.float32 else None
                z_pre = _linear_in(inputs, self.W_enc, self.b_enc, dtype)
                idx = torch.topk(z_pre, k, dim=1, sorted=False).indices
            vals = _GatherPreCodes.apply(z_pre, inputs, pre_bias if self.config.pre_bias else None,
                                         self.W_enc, self.b_enc, idx)
            return SparseCodes(idx, vals.to(self.W_dec.dtype).relu(), z_pre, inputs)
        # dense autograd: W (x - p) + b = W x + (b - W p) spares the (B, d) gradient of x - p
        bias = self.b_enc - self.W_enc @ pre_bias if self.config.pre_bias else self.b_enc
        z_pre = F.linear(x, self.W_enc, bias)
        idx = torch.topk(z_pre.detach(), k, dim=1, sorted=False).indices
        inputs = x - pre_bias.detach() if self.config.pre_bias else x
        return SparseCodes(idx, z_pre.gather(1, idx).to(self.W_dec.dtype).relu(), z_pre, inputs)

    def decode_sparse(self, codes: SparseCodes, bias: bool = True) -> Tensor:
        """Codes (any encoder's, on this dictionary) → (B, d); ``bias=False`` leaves out b_dec."""
        if codes.pre_codes is not None and codes.pre_codes.requires_grad:  # the dense path
            out = self.dense(codes).to(self.W_dec.dtype) @ self.W_dec
        else:
            out = sparse_decode(codes.indices, codes.values, self.W_dec)
        return out + self.b_dec if bias and self.b_dec is not None else out

    def dense(self, codes: SparseCodes) -> Tensor:
        """(B, n) dense codes from sparse ones."""
        if codes.dense is not None:
            return codes.dense
        zeros = codes.values.new_zeros(codes.indices.shape[0], self.n_latents)
        return zeros.scatter(1, codes.indices, codes.values)

    def dead_mask(self) -> Tensor:
        """(n,) bool: latents silent for at least ``dead_window`` training samples."""
        return self.samples_since_fired >= self.config.dead_window

    @torch.no_grad()
    def update_dead(self, codes: SparseCodes) -> None:
        """Count training samples since each latent last fired (code > 0); no host sync."""
        hits = torch.zeros(self.n_latents, device=codes.indices.device)
        hits.index_add_(0, codes.indices.reshape(-1), (codes.values.detach() > 0).reshape(-1).float())
        self.samples_since_fired.add_(codes.indices.shape[0]).masked_fill_(hits > 0, 0)

    def auxk_loss(self, x: Tensor, x_hat: Tensor, codes: SparseCodes) -> Tensor:
        """AuxK (Gao et al. 2024 §A.2): the top-``aux_k`` dead latents reconstruct the detached
        residual e = x - x_hat; returns Σ(ê - e)² / Σe² over the batch (scale-free, so ``aux_coef``
        means the same for every input scale); 0 when no latent is dead or aux_k = 0."""
        if self.aux_k == 0 or codes.pre_codes is None:
            return x.new_zeros((), dtype=torch.float32)
        dead = self.dead_mask()
        pre = codes.pre_codes.detach()
        idx = torch.topk(pre.masked_fill(~dead, float("-inf")), self.aux_k, dim=1, sorted=False).indices
        if codes.pre_codes.requires_grad:  # dense path
            vals = codes.pre_codes.gather(1, idx)
        else:
            vals = _GatherPreCodes.apply(pre, codes.inputs, self.encoder.pre_bias if self.config.pre_bias else None,
                                         self.W_enc, self.b_enc, idx)
        vals = vals.to(self.W_dec.dtype).relu() * dead[idx]
        residual = (x.flatten(1) - x_hat).detach().float()
        aux = sparse_decode(idx, vals, self.W_dec).float()
        loss = (aux - residual).square().sum() / residual.square().sum().clamp_min(1e-12)
        return loss * dead.any()

    # ----- around the optimizer step ---------------------------------------------------------
    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove from each atom's gradient its component along that (unit-norm) atom."""
        g, w = self.W_dec.grad, self.W_dec
        if g is None or not self.config.unit_norm_decoder:
            return
        if g.numel() < _BLOCKED_PROJECTION_MIN:  # fits in cache: one fused pass is fastest
            g.addcmul_(w, torch.linalg.vecdot(g, w).unsqueeze(1), value=-1.0)
            return
        rows = max(1, (1 << 19) // self.input_dim)  # row blocks of 2^19 elements stay in cache
        buf = torch.empty(min(rows, self.n_latents), self.input_dim, dtype=g.dtype, device=g.device)
        for start in range(0, self.n_latents, rows):
            gc, wc = g[start:start + rows], w[start:start + rows]
            prod = torch.mul(gc, wc, out=buf[: gc.shape[0]])
            gc.addcmul_(prod.sum(1, keepdim=True), wc, value=-1.0)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every atom to unit L2 norm (no-op without ``unit_norm_decoder``)."""
        if self.config.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def revive_dead_(self) -> None:
        """Raise the encoder bias of the dead latents by ``revive_bias_step`` (no host sync): a
        homeostatic firing floor (adaptive thresholds, Földiák 1990; boosting, Ahmad & Scheinkman 2019)."""
        if self.config.revive_bias_step > 0:
            self.b_enc.add_(self.dead_mask().to(self.b_enc.dtype), alpha=self.config.revive_bias_step)

    @torch.no_grad()
    def init_pre_bias_(self, mean: Tensor) -> None:
        """Set b_dec (the pre-bias when tied) to ``mean`` (d,), e.g. the data mean; no-op without b_dec."""
        if self.b_dec is not None:
            self.b_dec.copy_(mean.reshape(-1).to(self.b_dec))

    # ----- overcomplete-compatible API -------------------------------------------------------
    def encode(self, x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
        """(pre_codes, codes), both (B, n), as ``overcomplete``; pre_codes carry no gradient."""
        codes = self.encode_sparse(x, k)
        return codes.pre_codes.detach(), self.dense(codes)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruct (B, d) from dense (B, n) codes."""
        out = z.to(self.W_dec.dtype) @ self.W_dec
        return out + self.b_dec if self.b_dec is not None else out

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(pre_codes, codes, x_hat) as ``overcomplete``'s ``SAE.forward``; decodes sparsely."""
        codes = self.encode_sparse(x)
        return codes.pre_codes.detach(), self.dense(codes), self.decode_sparse(codes)

    def get_dictionary(self) -> Tensor:
        """The (n, d) dictionary W_dec."""
        return self.W_dec

    def to_overcomplete_state_dict(self) -> dict[str, Tensor]:
        """These weights as an ``overcomplete.sae.TopKSAE`` state dict (needs no decoder bias)."""
        if self.b_dec is not None:
            raise UserError("a sparse coder with a decoder bias (pre_bias or decoder_bias) cannot be held by "
                            "overcomplete's TopKSAE; convert a model trained without them")
        return {"encoder.final_block.0.weight": self.W_enc.detach().clone(),
                "encoder.final_block.0.bias": self.b_enc.detach().clone(),
                "dictionary._weights": self.W_dec.detach().clone(),
                "dictionary.multiplier": torch.zeros((), device=self.W_dec.device)}

    def to_overcomplete(self) -> nn.Module:
        """A new ``overcomplete.sae.TopKSAE`` holding these weights, in this module's train/eval mode."""
        from overcomplete.sae import TopKSAE as OCTopKSAE

        oc = OCTopKSAE(self.input_dim, self.n_latents, top_k=self.k, device=str(self.W_dec.device))
        oc.load_state_dict(self.to_overcomplete_state_dict())
        return oc.train(self.training)  # .eval() re-fuses overcomplete's cached dictionary

    @classmethod
    def from_overcomplete(cls, oc: nn.Module, config: SparseCoderConfig | None = None) -> "SparseCoder":
        """A coder with the weights of an ``overcomplete.sae.TopKSAE`` (default linear encoder, no
        trained multiplier); ``config`` (its n_latents / k must match) sets the training options."""
        sd = oc.state_dict()
        if set(sd) != {"encoder.final_block.0.weight", "encoder.final_block.0.bias",
                       "dictionary._weights", "dictionary.multiplier"}:
            raise UserError("only overcomplete TopKSAEs with the default linear encoder and plain "
                            "dictionary convert; got parameters " + ", ".join(sorted(sd)))
        if float(sd["dictionary.multiplier"]) != 0.0:
            raise UserError("overcomplete dictionaries with a trained multiplier do not convert; "
                            "use use_multiplier=False")
        w_dec = sd["dictionary._weights"]
        n, d = w_dec.shape
        config = config or SparseCoderConfig(n_latents=n, k=oc.top_k)
        if (config.n_latents, config.k) != (n, oc.top_k) or config.pre_bias or config.decoder_bias:
            raise UserError(f"config (n_latents={config.n_latents}, k={config.k}, biases) does not fit the "
                            f"overcomplete model (n={n}, k={oc.top_k}, no decoder bias)")
        coder = cls(d, config).to(w_dec.device)
        with torch.no_grad():
            coder.W_enc.copy_(sd["encoder.final_block.0.weight"])
            coder.b_enc.copy_(sd["encoder.final_block.0.bias"])
            coder.W_dec.copy_(w_dec / (w_dec.norm(dim=1, keepdim=True) + 1e-8))  # overcomplete's projection
        return coder
