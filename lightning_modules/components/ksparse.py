"""The k-sparse autoencoder network (Makhzani & Frey, 2013, "k-Sparse Autoencoders"), with ReLU.

``z = TopK_k(ReLU(W_e (x - b_pre) + b_e))``, ``x̂ = W_d z + b_d``. The options are the known cures
for dead units (DESIGN.md; Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): unit-norm
decoder atoms with the gradient component along each atom removed, encoder initialised as the
decoder's transpose, a pre-bias set to the data mean, and an auxiliary loss on dead units (AuxK).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def topk_mask(pre: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest entries of each row of ``pre`` (B, n), zero the rest."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values)


class KSparseAE(nn.Module):
    """784 → n_units ReLU + top-k encoder, linear decoder back to 784 pixels.

    Args:
        input_dim: pixels per image (784 for 28×28).
        n_units: code size.
        k: units kept per sample.
        unit_norm_decoder: keep each decoder column (atom, ``W_d[:, i]``) at unit L2 norm.
        tied_init: initialise the encoder weight as the decoder weight's transpose.
        pre_bias: subtract the decoder bias (initialised to the data mean) before encoding.
    """

    def __init__(self, input_dim: int, n_units: int, k: int, unit_norm_decoder: bool,
                 tied_init: bool, pre_bias: bool) -> None:
        super().__init__()
        if not 0 < k <= n_units:
            raise ValueError(f"k must be in [1, n_units={n_units}], got {k}")
        self.input_dim, self.n_units, self.k = input_dim, n_units, k
        self.unit_norm_decoder, self.pre_bias = unit_norm_decoder, pre_bias
        self.encoder = nn.Linear(input_dim, n_units)
        self.decoder = nn.Linear(n_units, input_dim)
        if unit_norm_decoder:
            self.normalize_decoder()
        if tied_init:
            with torch.no_grad():
                self.encoder.weight.copy_(self.decoder.weight.t())
                self.encoder.bias.zero_()

    @torch.no_grad()
    def init_pre_bias(self, data_mean: Tensor) -> None:
        """Set the decoder bias (the pre-bias when ``pre_bias``) to the data mean, shape (input_dim,)."""
        self.decoder.bias.copy_(data_mean.reshape(-1))

    def pre_activations(self, x: Tensor) -> Tensor:
        """Encoder output before the ReLU and top-k: (B, input_dim) → (B, n_units)."""
        if self.pre_bias:
            x = x - self.decoder.bias
        return self.encoder(x)

    def encode(self, x: Tensor, k: int | None = None) -> Tensor:
        """Sparse codes (B, n_units): ReLU, then the top ``k`` (default ``self.k``) per row."""
        return topk_mask(F.relu(self.pre_activations(x.flatten(1))), k or self.k)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction (B, input_dim) from codes (B, n_units)."""
        return self.decoder(z)

    def forward(self, x: Tensor, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(pre_activations, codes, reconstruction)`` for images (B, ...) of input_dim pixels."""
        pre = self.pre_activations(x.flatten(1))
        z = topk_mask(F.relu(pre), k or self.k)
        return pre, z, self.decode(z)

    def atoms(self) -> Tensor:
        """Decoder atoms, one row per unit: (n_units, input_dim)."""
        return self.decoder.weight.t()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale every decoder column to unit L2 norm (call after each optimizer step)."""
        weight = self.decoder.weight
        weight.div_(weight.norm(dim=0, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from each column's gradient its component along that (unit-norm) column."""
        weight, grad = self.decoder.weight, self.decoder.weight.grad
        if grad is not None:
            grad.sub_(weight * (grad * weight).sum(dim=0, keepdim=True))

    def auxk_loss(self, x: Tensor, pre: Tensor, recon: Tensor, dead: Tensor, k_aux: int) -> Tensor:
        """AuxK (Gao et al. 2024): the top ``k_aux`` dead units must reconstruct the detached residual.

        ``dead`` is a bool mask (n_units,); the loss is normalised by the residual's own MSE.
        """
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        masked = F.relu(pre).masked_fill(~dead, 0.0)
        z_aux = topk_mask(masked, min(k_aux, n_dead))
        residual = (x.flatten(1) - recon).detach()
        aux_recon = z_aux @ self.decoder.weight.t()
        return F.mse_loss(aux_recon, residual) / residual.pow(2).mean().clamp_min(1e-8)
