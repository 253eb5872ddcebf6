"""``overcomplete.sae.TopKSAE`` behind the engine's interface, for side-by-side runs (benchmark and
equivalence tests only; production systems always use ``components.sparse_coder.SparseCoder``)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from components.sae_bank import SAEBank
from components.sparse_coder import SparseCoderConfig, SparseCodes


class OvercompleteTopKSAE(nn.Module):
    """The library's TopK SAE, trained with its own dense encode/decode and in-forward dictionary
    normalisation; no AuxK, revive, pre-bias or gradient projection (they are no-ops here).

    Args:
        input_dim: d. n_latents: n. k: active latents per sample. seed: initialisation seed.
    """

    aux_k, aux_coef = 0, 0.0

    def __init__(self, input_dim: int, n_latents: int, k: int, seed: int | None = None) -> None:
        super().__init__()
        from overcomplete.sae import TopKSAE as OCTopKSAE

        self.input_dim, self.n_latents, self.k = int(input_dim), int(n_latents), int(k)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.sae = OCTopKSAE(input_dim, n_latents, top_k=k, device="cpu")
        # overcomplete caches the eval-mode dictionary at .eval(); refresh it after loading weights.
        self.register_load_state_dict_post_hook(_refresh_overcomplete_cache)

    def encode_sparse(self, x: torch.Tensor, k: int | None = None) -> SparseCodes:
        pre, dense = self.sae.encode(x)
        vals, idx = torch.topk(dense, self.k, dim=1, sorted=False)
        return SparseCodes(idx, vals, pre.detach(), None, dense)

    def decode_sparse(self, codes: SparseCodes) -> torch.Tensor:
        return self.sae.decode(codes.dense)

    def dense(self, codes: SparseCodes) -> torch.Tensor:
        return codes.dense

    def get_dictionary(self) -> torch.Tensor:
        return self.sae.get_dictionary()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sae.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sae(x)

    def update_dead(self, codes: SparseCodes) -> None:
        pass

    def project_decoder_grad_(self) -> None:
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


def overcomplete_bank(feature_dims: Mapping[str, int], config: SparseCoderConfig, seed: int = 0,
                      weights_from: SAEBank | None = None) -> SAEBank:
    """An ``SAEBank`` whose coders are ``OvercompleteTopKSAE`` (model m seeded seed + m), holding the
    weights of ``weights_from`` when given (which must have no decoder bias)."""
    bank = SAEBank(feature_dims, config, seed=seed)
    bank.saes = nn.ModuleDict({name: OvercompleteTopKSAE(d, config.n_latents, config.k, seed=seed + m)
                               for m, (name, d) in enumerate(bank.feature_dims.items())})
    if weights_from is not None:
        for name, sae in bank.saes.items():
            sae.sae.load_state_dict(weights_from.saes[name].to_overcomplete_state_dict())
            _refresh_overcomplete_cache(sae, None)
    return bank
