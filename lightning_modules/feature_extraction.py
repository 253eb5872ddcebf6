"""``FeatureExtraction``: a predict-only system turning uint8 image batches into feature rows.

Run by ``trainer.predict`` (``build_cache.py --store shards``); Lightning places it on each rank's
device and ``ShardWriter`` stores what ``predict_step`` returns. Same preprocessing and forward as
``features.extractor.extract_features``: the datamodule's eval transform, channels-last weights and
inputs, the forward stopped at the feature layer, optional bf16/fp16 autocast.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from common.errors import UserError
from datamodules.image_folder import bad_image_error

AUTOCAST = {"bf16": torch.bfloat16, "16": torch.float16}


class FeatureExtraction(L.LightningModule):
    """Batches ``(uint8 (B, C, H, W), labels, rows, problems)`` → ``{"features": (B, d) float32 CPU,
    "rows": (B,) int64, "problems": list[str]}``.

    Args:
        extractor: images → ``(B, d)`` (``components.backbones.FeatureExtractor``); kept in eval mode.
        transform: ``transform(uint8 batch, train=False)`` → normalised float batch (the datamodule's).
        normalize: ``(B, d)`` → ``(B, d)`` applied to each row in float32 (the cache's normalisation).
        precision: ``"32"`` (no autocast), ``"bf16"`` or ``"16"``: autocast of the forward pass.
        on_bad_image: ``error`` stops at a row whose file could not be decoded (one line naming it);
            ``skip`` passes it on (its ``problems`` entry is non-empty; the writer zeroes and records it).
        channels_last: NHWC weights and inputs.
    """

    def __init__(self, extractor: nn.Module, transform: nn.Module, normalize: nn.Module | None = None,
                 precision: str = "32", on_bad_image: str = "error", channels_last: bool = True) -> None:
        super().__init__()
        if precision not in ("32", *AUTOCAST):
            raise UserError(f"extraction precision must be 32, bf16 or 16, got '{precision}'")
        self.extractor = extractor.eval().requires_grad_(False)
        self.transform = transform
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.precision = precision
        self.on_bad_image = on_bad_image
        self.channels_last = channels_last
        # a rank whose shards are all done gets empty loaders while the others still extract
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def on_predict_start(self) -> None:
        self.extractor.eval()
        if self.channels_last:
            self.extractor.to(memory_format=torch.channels_last)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict:
        images, _, rows, problems = batch
        if self.on_bad_image == "error":
            bad = next((p for p in problems if p), None)
            if bad is not None:
                raise bad_image_error(bad)
        x = self.transform(images, train=False)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = AUTOCAST.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            features = self.extractor(x)
        features = self.normalize(features.float())
        return {"features": features.cpu(), "rows": rows.cpu(), "problems": list(problems)}

    def forward(self, images: Tensor) -> Tensor:
        """Float images (already transformed) → features ``(B, d)``."""
        return self.extractor(images)
