"""A fast TopK sparse autoencoder with the math and API of ``overcomplete.sae.TopKSAE``.

Math (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; the layout follows
``overcomplete`` 0.3.0 so weights move both ways)::

    z_pre = W_enc (x - b_dec) + b_enc          (b_dec only with ``pre_bias=True``)
    z     = TopK(ReLU(z_pre))                  (k winners per sample, the rest 0)
    x_hat = z W_dec (+ b_dec)                  rows of W_dec (the dictionary D) unit-norm

Where the speed comes from (see ``benchmarks/bench_topk_sae.py``):

* decode touches only the k winners: ``F.embedding_bag(mode="sum", per_sample_weights=...)``
  instead of a dense (B, n) @ (n, d) product;
* the encoder weight-gradient is a scatter of k rows per sample (``_scatter_rows``): a custom
  ``autograd.Function`` gathers the k winners from a pre-activation computed without autograd, so
  no dense (B, n) gradient and no dense B×n×d backward matmul exist;
* decoder renormalisation and removal of the gradient component along each dictionary row are
  methods the training system calls around ``optimizer.step()``, not part of the forward;
* no ``.item()`` or other host sync anywhere in the training path.

``overcomplete`` renormalises the dictionary under ``no_grad`` at the start of each training
forward, so its dictionary gradient is the raw one: ours equals it before
``remove_parallel_grad_`` (tested). Removing the component along each unit row (Gao et al. 2024;
Bricken et al. 2023) is the addition; skip that call to train exactly as the library does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError


class TopKCodes(NamedTuple):
    """The sparse codes of one batch.

    idx: (B, k) long, latent indices of the winners; vals: (B, k), their code values (>= 0);
    pre_codes: (B, n) pre-activations ``z_pre`` (no gradient; None for stacked codes);
    inputs: (B, d) what the encoder saw (``x - b_dec`` with pre-bias); dense: (B, n) codes, only
    set by backends that decode densely.
    """

    idx: torch.Tensor
    vals: torch.Tensor
    pre_codes: torch.Tensor
    inputs: torch.Tensor | None = None
    dense: torch.Tensor | None = None


def _scatter_rows(idx: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """``out[l] = Σ_{(b,i): idx[b,i]=l} weights[b,i] · rows[b]``: (B,k),(B,k),(B,d) -> (n,d).

    The transpose of a sparse decode, done as one ``embedding_bag`` whose bags are the latents
    (entries grouped by latent with a stable argsort), so it costs ~B·k·d and never forms B×n.
    """
    k = idx.shape[1]
    flat = idx.reshape(-1)
    # int32 keys: measured faster than int64 on CPU (and n < 2**31 always holds here).
    order = torch.argsort(flat.to(torch.int32), stable=True)
    counts = torch.bincount(flat, minlength=n)
    offsets = counts.cumsum(0) - counts
    sample = torch.div(order, k, rounding_mode="floor")
    w = weights.reshape(-1)[order].to(rows.dtype)
    return F.embedding_bag(sample, rows, offsets, per_sample_weights=w, mode="sum")


class _GatherPreCodes(torch.autograd.Function):
    """Gather the k winners' pre-activations; backward scatters into only those k encoder rows.

    Forward: ``z_pre.gather(1, idx)`` where z_pre = inputs @ W_enc.T + b_enc was computed without
    autograd. Backward (g: (B, k)): grad_W_enc = scatter of g·inputs into the k rows per sample,
    grad_b_enc = scatter of g, grad_inputs = g · W_enc[idx] (needed only with a pre-bias).
    """

    @staticmethod
    def forward(ctx, z_pre, inputs, weight, bias, idx):
        ctx.save_for_backward(inputs, weight, idx)
        return z_pre.gather(1, idx)

    @staticmethod
    def backward(ctx, grad):
        inputs, weight, idx = ctx.saved_tensors
        n = weight.shape[0]
        grad_inputs = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            grad_inputs = F.embedding_bag(idx, weight, per_sample_weights=grad.to(weight.dtype), mode="sum")
            grad_inputs = grad_inputs.to(inputs.dtype)
        if ctx.needs_input_grad[2]:
            grad_weight = _scatter_rows(idx, grad, inputs, n).to(weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_bias = torch.zeros(n, dtype=weight.dtype, device=weight.device)
            grad_bias.index_add_(0, idx.reshape(-1), grad.reshape(-1).to(weight.dtype))
        return None, grad_inputs, grad_weight, grad_bias, None


class _AttachDictionaryGrad(torch.autograd.Function):
    """Identity on the decoded batch whose backward adds the sparse dictionary gradient.

    ``F.embedding_bag`` on the detached dictionary already gives the code values their gradient
    (natively, without gathering B×k×d); this supplies grad_D = scatter of vals·grad_out.
    """

    @staticmethod
    def forward(ctx, out, dictionary, idx, vals):
        ctx.save_for_backward(idx, vals)
        ctx.n = dictionary.shape[0]
        ctx.dtype = dictionary.dtype
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out):
        idx, vals = ctx.saved_tensors
        grad_dict = _scatter_rows(idx, vals, grad_out, ctx.n).to(ctx.dtype)
        return grad_out, grad_dict, None, None


def sparse_decode(idx: torch.Tensor, vals: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """``Σ_i vals[b,i] · dictionary[idx[b,i]]``: (B,k) codes on an (n,d) dictionary -> (B,d).

    Differentiable in ``vals`` and ``dictionary``; costs ~B·k·d forward and backward.
    """
    vals = vals.to(dictionary.dtype)
    out = F.embedding_bag(idx, dictionary.detach(), per_sample_weights=vals, mode="sum")
    if dictionary.requires_grad and torch.is_grad_enabled():
        out = _AttachDictionaryGrad.apply(out, dictionary, idx, vals.detach())
    return out


class TopKSAE(nn.Module):
    """TopK SAE over d-dim features with n latents, k active per sample (fast sparse engine).

    Args:
        input_dim: d, the feature dimension.
        n_latents: n, the dictionary size.
        k: active latents per sample (1 <= k < n).
        pre_bias: learn a decoder bias b_dec, subtracted before encoding and added after decoding
            (Gao et al. 2024); initialise it to the data mean with ``init_pre_bias_``.
            overcomplete's TopKSAE has no such bias, so only ``pre_bias=False`` converts to it.
        tied_init: initialise the encoder as the decoder's transpose (Gao et al. 2024), which keeps
            fewer latents dead at the start; False uses ``nn.Linear``'s default init.
        aux_k: k of the AuxK loss on dead latents (Gao et al. 2024, Appendix A.2); 0 turns it off.
        aux_coef: weight of the AuxK loss in the total (Gao et al. use 1/32).
        dead_window: a latent is dead (for AuxK and the revive bias) when it has not fired on this
            many training samples.
        revive_bias_step: added to the encoder bias of every dead latent after each optimizer step
            (``revive_dead_``), so a latent that stopped winning drifts up until it wins again; 0 off.
        seed: seed of the weight initialisation; None uses the global RNG.
    """

    def __init__(
        self,
        input_dim: int,
        n_latents: int,
        k: int,
        pre_bias: bool = False,
        tied_init: bool = True,
        aux_k: int = 0,
        aux_coef: float = 1.0 / 32,
        dead_window: int = 100_000,
        revive_bias_step: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        check_sizes(input_dim, n_latents, k)
        if not 0 <= aux_k <= n_latents:
            raise UserError(f"aux_k={aux_k} must be between 0 (off) and n_latents={n_latents}")
        if revive_bias_step < 0:
            raise UserError(f"revive_bias_step={revive_bias_step} must be >= 0 (0 turns it off)")
        self.input_dim, self.n_latents, self.k = int(input_dim), int(n_latents), int(k)
        self.aux_k, self.aux_coef, self.dead_window = int(aux_k), float(aux_coef), int(dead_window)
        self.revive_bias_step = float(revive_bias_step)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w_dec = torch.randn(n_latents, input_dim, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        if tied_init:
            w_enc = w_dec.clone()
        else:  # nn.Linear's default: U(-1/sqrt(d), 1/sqrt(d))
            bound = 1.0 / math.sqrt(input_dim)
            w_enc = torch.rand(n_latents, input_dim, generator=gen) * (2 * bound) - bound
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(input_dim)) if pre_bias else None
        # Samples seen since each latent last fired (training batches only), for AuxK.
        self.register_buffer("samples_since_fired", torch.zeros(n_latents, dtype=torch.long))

    # ----- the fast path used by the training systems ---------------------------------------
    def encode_topk(self, x: torch.Tensor) -> TopKCodes:
        """Encode (B, d) features to their k winners (see ``TopKCodes``)."""
        inputs = x - self.b_dec if self.b_dec is not None else x
        with torch.no_grad():
            z_pre = torch.addmm(self.b_enc, inputs, self.W_enc.t())
            idx = torch.topk(z_pre, self.k, dim=1, sorted=False).indices
        vals = _GatherPreCodes.apply(z_pre, inputs, self.W_enc, self.b_enc, idx).to(self.W_dec.dtype).relu()
        return TopKCodes(idx, vals, z_pre, inputs)

    def decode_topk(self, codes: TopKCodes) -> torch.Tensor:
        """Reconstruct (B, d) features from sparse codes (any encoder's codes on this dictionary)."""
        out = sparse_decode(codes.idx, codes.vals, self.W_dec)
        return out + self.b_dec if self.b_dec is not None else out

    def codes_to_dense(self, codes: TopKCodes) -> torch.Tensor:
        """(B, n) dense codes from sparse ones."""
        dense = torch.zeros(codes.idx.shape[0], self.n_latents, dtype=codes.vals.dtype, device=codes.vals.device)
        return dense.scatter(1, codes.idx, codes.vals)

    def update_dead_tracker(self, codes: TopKCodes) -> None:
        """Count samples since each latent last fired (code > 0); no host sync."""
        fired = torch.zeros(self.n_latents, device=codes.idx.device)
        fired.index_add_(0, codes.idx.reshape(-1), (codes.vals.detach() > 0).reshape(-1).float())
        batch = codes.idx.shape[0]
        self.samples_since_fired.copy_(torch.where(fired > 0, 0, self.samples_since_fired + batch))

    def aux_loss(self, x: torch.Tensor, x_hat: torch.Tensor, codes: TopKCodes) -> torch.Tensor:
        """AuxK (Gao et al. 2024): the top-``aux_k`` dead latents reconstruct the detached residual.

        Returns the MSE of that reconstruction, 0 when no latent is dead (or aux_k = 0).
        """
        if self.aux_k == 0 or codes.inputs is None:
            return x.new_zeros(())
        dead = self.samples_since_fired >= self.dead_window
        masked = codes.pre_codes.masked_fill(~dead, float("-inf"))
        idx = torch.topk(masked, self.aux_k, dim=1, sorted=False).indices
        pre = _GatherPreCodes.apply(codes.pre_codes, codes.inputs, self.W_enc, self.b_enc, idx)
        vals = pre.to(self.W_dec.dtype).relu() * dead[idx]
        residual = (x - x_hat).detach()
        loss = (sparse_decode(idx, vals, self.W_dec) - residual).square().mean()
        return loss * dead.any()

    # ----- called by the system around optimizer.step() -------------------------------------
    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Remove from each dictionary row's gradient its component along that (unit) row."""
        g = self.W_dec.grad
        if g is None:
            return
        # In row blocks that stay in cache: one pass over memory instead of three (measured ~2x
        # faster than a batched (n,1,d)@(n,d,1) product on CPU).
        rows = max(1, (1 << 19) // self.input_dim)
        buf = torch.empty(min(rows, self.n_latents), self.input_dim, dtype=g.dtype, device=g.device)
        for start in range(0, self.n_latents, rows):
            gc, wc = g[start:start + rows], self.W_dec[start:start + rows]
            prod = torch.mul(gc, wc, out=buf[: gc.shape[0]])
            gc.addcmul_(prod.sum(1, keepdim=True), wc, value=-1.0)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every dictionary row to unit l2 norm (in place)."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def revive_dead_(self) -> None:
        """Raise the encoder bias of the dead latents by ``revive_bias_step`` (no host sync).

        A homeostatic firing floor, as the k-sparse autoencoder's ``raise_bias`` (adaptive
        thresholds, Földiák 1990; "boosting" of k-winner layers, Ahmad & Scheinkman 2019).
        """
        if self.revive_bias_step > 0:
            dead = self.samples_since_fired >= self.dead_window
            self.b_enc.add_(dead.to(self.b_enc.dtype), alpha=self.revive_bias_step)

    @torch.no_grad()
    def init_pre_bias_(self, mean: torch.Tensor) -> None:
        """Set b_dec to ``mean`` (d,), e.g. the training-data mean; no-op without pre-bias."""
        if self.b_dec is not None:
            self.b_dec.copy_(mean.to(self.b_dec))

    # ----- overcomplete-compatible API ------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre_codes, codes), both (B, n), as ``overcomplete``; pre_codes carry no gradient."""
        codes = self.encode_topk(x)
        return codes.pre_codes, self.codes_to_dense(codes)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruct (B, d) from dense (B, n) codes."""
        out = z.to(self.W_dec.dtype) @ self.W_dec
        return out + self.b_dec if self.b_dec is not None else out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pre_codes, codes, x_hat) as ``overcomplete``'s ``SAE.forward``; decodes sparsely."""
        codes = self.encode_topk(x)
        return codes.pre_codes, self.codes_to_dense(codes), self.decode_topk(codes)

    def get_dictionary(self) -> torch.Tensor:
        """The (n, d) dictionary D (unit-norm rows while training through the system)."""
        return self.W_dec

    def to_overcomplete_state_dict(self) -> dict[str, torch.Tensor]:
        """These weights as an ``overcomplete.sae.TopKSAE`` state dict (requires pre_bias=False)."""
        if self.b_dec is not None:
            raise UserError("a TopKSAE with pre_bias=True has a decoder bias that overcomplete's TopKSAE "
                            "cannot hold; convert a model trained with pre_bias=False")
        return {
            "encoder.final_block.0.weight": self.W_enc.detach().clone(),
            "encoder.final_block.0.bias": self.b_enc.detach().clone(),
            "dictionary._weights": self.W_dec.detach().clone(),
            "dictionary.multiplier": torch.zeros((), device=self.W_dec.device),
        }

    def to_overcomplete(self) -> nn.Module:
        """A new ``overcomplete.sae.TopKSAE`` holding these weights, in this module's train/eval mode."""
        from overcomplete.sae import TopKSAE as OCTopKSAE

        oc = OCTopKSAE(self.input_dim, self.n_latents, top_k=self.k, device=str(self.W_dec.device))
        oc.load_state_dict(self.to_overcomplete_state_dict())
        return oc.train(self.training)  # .eval() re-fuses overcomplete's cached dictionary

    @classmethod
    def from_overcomplete(cls, oc: nn.Module, **kwargs) -> "TopKSAE":
        """A TopKSAE with the weights of an ``overcomplete.sae.TopKSAE`` (default linear encoder)."""
        sd = oc.state_dict()
        if set(sd) != {"encoder.final_block.0.weight", "encoder.final_block.0.bias",
                       "dictionary._weights", "dictionary.multiplier"}:
            raise UserError("only overcomplete TopKSAEs with the default linear encoder and plain "
                            "dictionary convert; got parameters " + ", ".join(sorted(sd)))
        if float(sd["dictionary.multiplier"]) != 0.0:
            raise UserError("overcomplete dictionaries with a trained multiplier do not convert; "
                            "use use_multiplier=False")
        n, d = sd["dictionary._weights"].shape
        sae = cls(d, n, oc.top_k, pre_bias=False, **kwargs).to(sd["dictionary._weights"].device)
        w_dec = sd["dictionary._weights"]
        sae.load_state_dict({
            "W_enc": sd["encoder.final_block.0.weight"], "b_enc": sd["encoder.final_block.0.bias"],
            "W_dec": w_dec / (w_dec.norm(dim=1, keepdim=True) + 1e-8),  # overcomplete's l2 projection
            "samples_since_fired": sae.samples_since_fired,
        })
        return sae


class OvercompleteTopKSAE(nn.Module):
    """``overcomplete.sae.TopKSAE`` behind the ``encode_topk``/``decode_topk`` interface.

    Trains with the library's own dense encode/decode and in-forward dictionary normalisation,
    for side-by-side runs against ``TopKSAE``. Same args as ``TopKSAE`` minus its options.
    """

    aux_k, aux_coef = 0, 0.0

    def __init__(self, input_dim: int, n_latents: int, k: int, seed: int | None = None) -> None:
        super().__init__()
        check_sizes(input_dim, n_latents, k)
        from overcomplete.sae import TopKSAE as OCTopKSAE

        self.input_dim, self.n_latents, self.k = int(input_dim), int(n_latents), int(k)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.sae = OCTopKSAE(input_dim, n_latents, top_k=k, device="cpu")
        # overcomplete caches the eval-mode dictionary at .eval(); refresh it after loading weights.
        self.register_load_state_dict_post_hook(_refresh_overcomplete_cache)

    def encode_topk(self, x: torch.Tensor) -> TopKCodes:
        pre, dense = self.sae.encode(x)
        vals, idx = torch.topk(dense, self.k, dim=1, sorted=False)
        return TopKCodes(idx, vals, pre.detach(), None, dense)

    def decode_topk(self, codes: TopKCodes) -> torch.Tensor:
        return self.sae.decode(codes.dense)

    def codes_to_dense(self, codes: TopKCodes) -> torch.Tensor:
        return codes.dense

    def get_dictionary(self) -> torch.Tensor:
        return self.sae.get_dictionary()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sae(x)

    def update_dead_tracker(self, codes: TopKCodes) -> None:
        pass

    def aux_loss(self, x, x_hat, codes) -> torch.Tensor:
        return x.new_zeros(())

    def remove_parallel_grad_(self) -> None:
        pass  # the library normalises the dictionary inside its forward

    def normalize_decoder_(self) -> None:
        pass

    def revive_dead_(self) -> None:
        pass

    def init_pre_bias_(self, mean: torch.Tensor) -> None:
        pass


def _refresh_overcomplete_cache(module: nn.Module, _incompatible_keys) -> None:
    # overcomplete fuses its eval dictionary on a train -> eval switch, from the training path.
    was_training = module.training
    module.train(True)
    module.train(was_training)


def check_sizes(input_dim: int, n_latents: int, k: int) -> None:
    """Raise ``UserError`` unless 1 <= k < n_latents and input_dim >= 1."""
    if input_dim < 1 or n_latents < 2:
        raise UserError(f"input_dim={input_dim} and n_latents={n_latents} must be positive (n_latents >= 2)")
    if not 1 <= k < n_latents:
        raise UserError(f"k={k} must satisfy 1 <= k < n_latents={n_latents}; lower k or raise n_latents")
