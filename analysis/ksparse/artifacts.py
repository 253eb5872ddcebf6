"""The trained pieces of the study in one module: frozen encoder → codes → probe logits, + decoder."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from common.errors import UserError
from components.ksparse import (
    Decoder, TopKEncoder, decoder_from_state, encoder_from_state, read_state_dict)
from lightning_modules.linear_probe import classifier_from_state


class ProbedAutoencoder(nn.Module):
    """``encoder`` (images → k-sparse codes), ``decoder`` (codes → images), ``classifier`` (codes →
    logits), all frozen, in eval mode. Images are preprocessed (B, 1, 28, 28) or (B, 784) in [0, 1].

    ``k`` is the units per image the autoencoder was trained with (its reconstructions); ``probe_k``
    the units per image of the codes the classifier was trained on (the probe's ``encode_k``;
    default ``k``)."""

    def __init__(self, encoder: TopKEncoder, decoder: Decoder, classifier: nn.Linear,
                 probe_k: int | None = None) -> None:
        super().__init__()
        n_units, dim = encoder.weight.shape
        if decoder.weight.shape != (n_units, dim):
            raise UserError(f"decoder has shape {tuple(decoder.weight.shape)} but the encoder "
                            f"{(n_units, dim)}; they come from different models")
        if classifier.in_features != n_units:
            raise UserError(f"classifier reads {classifier.in_features} features but the encoder has "
                            f"{n_units} units; use the probe trained on this encoder")
        if probe_k is not None and not 0 < probe_k <= n_units:
            raise UserError(f"the probe's encode_k={probe_k} must be between 1 and the encoder's {n_units} units")
        self.encoder, self.decoder, self.classifier = encoder, decoder, classifier
        self.k = int(encoder.k)
        self.probe_k = self.k if probe_k is None else probe_k
        self.requires_grad_(False).eval()

    @property
    def n_units(self) -> int:
        return self.encoder.n_units

    @property
    def input_dim(self) -> int:
        return self.encoder.input_dim

    def codes(self, images: Tensor, k: int | None = None) -> Tensor:
        """(B, ...) images → (B, n_units) codes with the top ``k`` units (default ``probe_k``: what
        the classifier reads)."""
        return self.encoder(images.flatten(1), self.probe_k if k is None else k)

    def forward(self, images: Tensor) -> Tensor:
        """(B, ...) images → (B, num_classes) logits."""
        return self.classifier(self.codes(images))

    @torch.no_grad()
    def batched_codes(self, images: Tensor, batch_size: int = 2048, k: int | None = None) -> Tensor:
        """Codes of many images, a chunk at a time: (N, ...) → (N, n_units)."""
        return torch.cat([self.codes(chunk, k) for chunk in images.split(batch_size)])


def probe_encode_k(probe_run: str | Path) -> int | None:
    """The ``encode_k`` the probe in ``probe_run`` was trained with, from the ``config.yaml`` that
    ``train.py`` writes there (``None``: the encoder's own k). A missing or unreadable config, or
    one without ``model.init_args.encode_k``, is a one-line ``UserError``: guessing the k would
    explain codes the classifier never read."""
    config = Path(probe_run) / "config.yaml"
    fix = "re-run the probe (python train.py --config configs/fashion_mnist/probe.yaml) or restore its config.yaml"
    try:
        loaded = yaml.safe_load(config.read_text())
    except OSError:
        raise UserError(f"cannot read the probe's config '{config}' (needed for its encode_k); {fix}") from None
    except yaml.YAMLError:
        raise UserError(f"'{config}' is not valid YAML; {fix}") from None
    init_args = ((loaded or {}).get("model") or {}).get("init_args") if isinstance(loaded, dict) else None
    if not isinstance(init_args, dict) or "encode_k" not in init_args:
        raise UserError(f"'{config}' has no model.init_args.encode_k (not a LinearProbe run?); {fix}")
    value = init_args["encode_k"]
    return None if value is None else int(value)


def load_probed_autoencoder(ksae_run: str | Path, probe_run: str | Path,
                            input_dim: int | None = None) -> ProbedAutoencoder:
    """Load ``encoder.pth`` + ``decoder.pth`` from ``ksae_run`` and ``classifier.pth`` from
    ``probe_run`` (``weights_only=True``), with the probe's ``encode_k`` (its config.yaml); a one-line
    ``UserError`` for a missing or mismatched file."""
    ksae_run, probe_run = Path(ksae_run), Path(probe_run)
    what = "k-sparse AE run '{}' has no {} (train it: python train.py --config configs/fashion_mnist/ksae.yaml)"
    for name in ("encoder.pth", "decoder.pth"):
        if not (ksae_run / name).is_file():
            raise UserError(what.format(ksae_run, name))
    if not (probe_run / "classifier.pth").is_file():
        raise UserError(f"probe run '{probe_run}' has no classifier.pth "
                        f"(train it: python train.py --config configs/fashion_mnist/probe.yaml)")
    encoder = encoder_from_state(read_state_dict(ksae_run / "encoder.pth", "net.encoder.", "encoder"),
                                 f"'{ksae_run / 'encoder.pth'}'", input_dim)
    decoder = decoder_from_state(read_state_dict(ksae_run / "decoder.pth", "net.decoder.", "decoder"),
                                 f"'{ksae_run / 'decoder.pth'}'")
    classifier = classifier_from_state(
        read_state_dict(probe_run / "classifier.pth", "classifier.", "classifier"),
        f"'{probe_run / 'classifier.pth'}'", encoder.n_units)
    return ProbedAutoencoder(encoder, decoder, classifier, probe_encode_k(probe_run))
