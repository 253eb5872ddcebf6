"""One sanitiser from nested results (tensors, numpy, paths) to plain JSON values, for manifests,
cache keys and reports alike."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numpy as np
import torch

from common.errors import UserError

NonFinite = Literal["null", "refuse"]


def json_safe(value: Any, *, non_finite: NonFinite = "refuse", flat: bool = False, key: str = "") -> Any:
    """``value`` as plain JSON: dict keys to ``str``, tuples to lists, tensors and numpy arrays to
    lists (nested by shape, or flattened to 1-D with ``flat``), numpy scalars to Python numbers,
    paths to ``str``, anything else to its ``repr``.

    NaN and infinity are not JSON: ``non_finite="null"`` writes them as ``None``, ``"refuse"`` raises a
    one-line ``UserError`` naming the dotted key (``key`` prefixes it).
    """
    if isinstance(value, dict):
        return {str(k): json_safe(v, non_finite=non_finite, flat=flat, key=f"{key}.{k}" if key else str(k))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, non_finite=non_finite, flat=flat, key=f"{key}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if non_finite == "null":
            return None
        raise UserError(f"'{key or '<value>'}' is {value}, which is not valid JSON; the inputs that produced "
                        "it hold a non-finite number: check them (a diverged run?)")
    if isinstance(value, np.generic):
        return json_safe(value.item(), non_finite=non_finite, flat=flat, key=key)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return json_safe(value.flatten().tolist() if flat else value.tolist(), non_finite=non_finite, flat=flat,
                         key=key)
    if isinstance(value, np.ndarray):
        return json_safe(value.ravel().tolist() if flat else value.tolist(), non_finite=non_finite, flat=flat,
                         key=key)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)
