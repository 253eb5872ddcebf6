"""``common.json_safe``: the one sanitiser behind cache keys, manifests and reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.json_safe import json_safe
from features.activation_cache import manifest_json


class Exotic:
    def __repr__(self) -> str:
        return "Exotic(3)"


def representative_key() -> dict:
    """Shaped like ``ActivationDataModule.cache_key`` (transform buffers are (1, C, 1, 1) tensors), plus
    every other kind of value the cache's old sanitiser handled."""
    return {"arch": "resnet50", "layer": "avgpool", "num_classes": 10,
            "weights": {"checkpoint_sha256": "ab" * 32},
            "dataset": "datamodules.fashion_mnist.FashionMNISTDataModule",
            "transform": {"image_size": 224, "channels": 3,
                          "mean": torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                          "std": torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)},
            "precision": "32", "none": None, "flag": True, "ratio": 0.1, "sizes": (5000, (2, 3)),
            "path": Path("data/fashion"), 7: "int key", "exotic": Exotic(), "scalar": torch.tensor(2.5)}


# Printed by the cache's sanitiser before it moved to common/json_safe.py
# (json.dumps(features.activation_cache.json_safe(representative_key()), sort_keys=True)): every cache
# built before keeps matching its key only while this stays byte-identical.
OLD_KEY = (
    '{"7": "int key", "arch": "resnet50", "dataset": "datamodules.fashion_mnist.FashionMNISTDataModule", '
    '"exotic": "Exotic(3)", "flag": true, "layer": "avgpool", "none": null, "num_classes": 10, '
    '"path": "data/fashion", "precision": "32", "ratio": 0.1, "scalar": [2.5], "sizes": [5000, [2, 3]], '
    '"transform": {"channels": 3, "image_size": 224, "mean": [0.48500001430511475, 0.4560000002384186, '
    '0.4059999883174896], "std": [0.2290000021457672, 0.2240000069141388, 0.22499999403953552]}, '
    '"weights": {"checkpoint_sha256": "abababababababababababababababababababababababababababababababab"}}'
)


def test_cache_keys_are_byte_identical_to_the_old_sanitiser():
    assert json.dumps(manifest_json(representative_key()), sort_keys=True) == OLD_KEY


def test_tensors_and_numpy_become_plain_json():
    out = json_safe({"t": torch.arange(6).view(2, 3), "a": np.ones((2, 1), dtype=np.float32), "i": np.int64(4),
                     "b": np.bool_(False), "f": np.float32(0.5), "p": Path("x/y")})
    assert out == {"t": [[0, 1, 2], [3, 4, 5]], "a": [[1.0], [1.0]], "i": 4, "b": False, "f": 0.5, "p": "x/y"}
    assert type(out["i"]) is int and type(out["b"]) is bool
    assert json_safe(torch.arange(6).view(2, 3), flat=True) == [0, 1, 2, 3, 4, 5]
    json.dumps(out, allow_nan=False)


def test_non_finite_numbers_are_refused_with_their_key_or_written_as_null():
    value = {"run": {"curve": [1.0, torch.tensor([2.0, math.nan])]}}
    with pytest.raises(UserError, match=r"'run\.curve\[1\]\[1\]' is nan") as err:
        json_safe(value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="inf"):
        manifest_json({"std": np.float64(math.inf)})
    assert json_safe(value, non_finite="null") == {"run": {"curve": [1.0, [2.0, None]]}}
