"""The option groups the analyses behind ``analyze.py`` share, each one typed dataclass read from YAML.

``SaeInputs`` (the trained SAE systems, their activation data and how the split is encoded) and
``FiringOptions`` (when a latent fires, is alive, universal or model-specific) are read by the
universality report and the concept explorer; ``KSparseInputs`` (the k-sparse runs, their image data
and splits) by the k-sparse study and the k-sparse explorer; ``PageOptions`` (what a page of either
explorer shows and how the site is cut) by both explorers. Each checks its values when built.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningDataModule
from torch import nn

from analysis.universality import inputs as loaders
from common.errors import UserError
from datamodules.image_datamodule import ImageDataModule, Split


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device without CUDA is a ``UserError``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device!r} but CUDA is not available; use device: cpu or auto")
    return device


@dataclass
class SaeInputs:
    """The trained SAE systems an analysis reads, the activation data under them, and how it encodes.

    Attributes:
        usae_checkpoint: ``UniversalSAE`` Lightning checkpoint (``runs/<exp>/<version>/checkpoints/last.ckpt``).
        independent_checkpoint: ``IndependentSAEs`` checkpoint trained on the same activation cache
            (the universality report needs it; the explorer without it leaves out the best-match columns).
        train_config: the SAE training run's ``config.yaml``; its ``data`` section rebuilds the activation
            datamodule. Give this or ``data``, not both.
        data: the activation datamodule itself (nested ``class_path``/``init_args``).
        split: the held-out split analysed ("test" in the study).
        batch_size: rows per batch when encoding the split.
        device: "cpu", "cuda", or "auto" (CUDA when available); resolved when built.
        threads: CPU threads for torch (``torch.set_num_threads``); None keeps torch's choice. On a
            machine shared with other jobs, 1 can be many times faster.
    """

    usae_checkpoint: str
    independent_checkpoint: str | None = None
    train_config: str | None = None
    data: LightningDataModule | None = None
    split: Literal["train", "val", "test"] = "test"
    batch_size: int = 1024
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"inputs.batch_size={self.batch_size} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"inputs.threads={self.threads} must be at least 1 (or null for torch's default)")
        self.usae_checkpoint = str(self.usae_checkpoint)
        if self.independent_checkpoint is not None:
            self.independent_checkpoint = str(self.independent_checkpoint)
        self.device = resolve_device(self.device)

    def paths(self) -> list[str | Path | None]:
        """What these inputs read; a report folder may neither be nor hold any of them."""
        return [self.usae_checkpoint, self.independent_checkpoint, self.train_config,
                getattr(self.data, "cache_dir", None)]

    def checkpoint(self, kind: str) -> str | None:
        """The checkpoint path of ``kind`` ("usae" or "independent")."""
        return {"usae": self.usae_checkpoint, "independent": self.independent_checkpoint}[kind]

    def load(self) -> tuple[dict[str, nn.Module], Any]:
        """``({"usae": system, "independent": system (if given)}, activation datamodule)``, the systems
        checked against each other and against the cache (one-line ``UserError`` otherwise)."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        systems = {kind: loaders.load_system(self.checkpoint(kind), kind)
                   for kind in ("usae", "independent") if self.checkpoint(kind)}
        if "independent" in systems:
            loaders.check_same_latents(systems["usae"], systems["independent"])
        dm = loaders.build_datamodule(self.data, self.train_config)
        for kind, system in systems.items():
            loaders.check_system_matches(system, dm.feature_dims, f"inputs.{kind}_checkpoint", self.checkpoint(kind))
        return systems, dm

    def numbers(self) -> dict[str, Any]:
        """The JSON-able record of these inputs (the datamodule by its class name)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "data"}
        return {**out, "data": type(self.data).__name__ if self.data is not None else None}


@dataclass
class FiringOptions:
    """When a latent fires and how its firings across backbones are classed (``docs/metrics.md``).

    Attributes:
        fire_threshold: a latent fires when its TopK code is > this.
        entropy_lo: alive latents with firing entropy H ≤ this are model-specific.
        entropy_hi: alive latents with H ≥ this are universal.
        min_activations: a latent is alive in a model when it fires on at least this many images of
            the split ("rare" otherwise).
    """

    fire_threshold: float = 0.0
    entropy_lo: float = 0.2
    entropy_hi: float = 0.8
    min_activations: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.entropy_lo < self.entropy_hi <= 1.0:
            raise UserError(f"need 0 <= firing.entropy_lo < firing.entropy_hi <= 1; got {self.entropy_lo}, "
                            f"{self.entropy_hi}")
        if self.min_activations < 1:
            raise UserError(f"firing.min_activations={self.min_activations} must be at least 1")
        self.fire_threshold, self.min_activations = float(self.fire_threshold), int(self.min_activations)
        self.entropy_lo, self.entropy_hi = float(self.entropy_lo), float(self.entropy_hi)


@dataclass
class KSparseInputs:
    """The k-sparse study's trained runs, the images they were trained on, and the splits used.

    Attributes:
        data: the image datamodule the models were trained on (same preprocessing and splits).
        ksae_run: run folder of the k-sparse autoencoder (holds encoder.pth, decoder.pth).
        probe_run: run folder of the linear probe on its codes (holds classifier.pth).
        importance_split: images whose class-mean codes define the importance.
        eval_split: images shown, counted, ablated and scored.
    """

    data: ImageDataModule
    ksae_run: str = "runs/fashion_mnist_ksae/main"
    probe_run: str = "runs/fashion_mnist_probe/main"
    importance_split: Split = "train"
    eval_split: Split = "test"

    def __post_init__(self) -> None:
        self.ksae_run, self.probe_run = Path(self.ksae_run), Path(self.probe_run)

    def paths(self) -> list[str | Path | None]:
        """What these inputs read; a report folder may neither be nor hold any of them."""
        return [self.ksae_run, self.probe_run, getattr(self.data, "data_dir", None)]

    def load(self):
        """The frozen ``ProbedAutoencoder`` (encoder, decoder, probe), checked against the data's shape
        and classes (one-line ``UserError`` otherwise)."""
        from analysis.ksparse.artifacts import load_probed_autoencoder

        side = self.data.image_shape
        model = load_probed_autoencoder(self.ksae_run, self.probe_run, side[0] * side[1] * side[2])
        classes = model.classifier.out_features
        if classes != self.data.num_classes:
            raise UserError(f"classifier has {classes} classes but the data has {self.data.num_classes}")
        return model

    def images(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images (N, C, H, W) and labels (N,) of one split."""
        images, labels = self.data.split(split)
        return self.data.transform(images, train=False), labels

    def numbers(self) -> dict[str, Any]:
        """The JSON-able record of these inputs (the datamodule by its class name)."""
        return {"ksae_run": str(self.ksae_run), "probe_run": str(self.probe_run), "data": type(self.data).__name__,
                "importance_split": self.importance_split, "eval_split": self.eval_split}


@dataclass
class PageOptions:
    """What the pages of a concept explorer show and how its site is written (both explorers).

    Attributes:
        n_top_images: top-activating images per latent (unit) and backbone.
        hist_bins: bins of the activation histograms.
        n_similar: most similar latents listed per page (by decoder and by co-activation); 0 lists none.
        chunk_size: latent records per data file the latent page loads.
        title: the site's title (the explorer adds what it shows).
        wandb_rows: index rows logged to W&B when ``wandb.enabled``.
    """

    n_top_images: int = 8
    hist_bins: int = 20
    n_similar: int = 8
    chunk_size: int = 256
    title: str = "Concept explorer"
    wandb_rows: int = 1000

    def __post_init__(self) -> None:
        for name, least in (("n_top_images", 1), ("hist_bins", 1), ("chunk_size", 1), ("n_similar", 0),
                            ("wandb_rows", 0)):
            value = getattr(self, name)
            if value < least:
                raise UserError(f"page.{name}={value} must be at least {least}")
            setattr(self, name, int(value))
