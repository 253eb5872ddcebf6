"""The split's TopK codes saved sparsely next to the report, so later jobs (the concept explorer)
reuse the report's one encoding pass instead of encoding every image again.

File: ``codes_<system>.npz`` with, per model m, the CSR arrays ``<m>.indptr`` (N+1,), ``<m>.indices``
(nnz,) int32 and ``<m>.data`` (nnz,) float32 of its (N, n) codes (only non-zeros: TopK codes hold
at most k per row, so ~N·k·8 bytes instead of N·n·4), plus ``meta`` (JSON: models, shape, the
checkpoint's path/size/mtime and the split), which readers check before trusting the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import sparse

from analysis.universality.codes import SplitCodes
from common.io import atomic_path


def checkpoint_stamp(path: str | os.PathLike) -> dict:
    """Path, size and mtime of a checkpoint: what identifies the SAE the codes came from."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def save_sparse_codes(path: str | os.PathLike, codes: SplitCodes, checkpoint: str | os.PathLike,
                      split: str) -> Path:
    """Write ``codes.codes`` (pre-activations are not kept) as CSR per model, atomically."""
    arrays = {}
    for name in codes.names:
        csr = sparse.csr_matrix(codes.codes[name].numpy().astype(np.float32, copy=False))
        arrays[f"{name}.indptr"] = csr.indptr.astype(np.int64)
        arrays[f"{name}.indices"] = csr.indices.astype(np.int32)
        arrays[f"{name}.data"] = csr.data.astype(np.float32)
    meta = {"models": list(codes.names), "shape": [codes.n_samples, codes.n_latents], "split": split,
            "checkpoint": checkpoint_stamp(checkpoint)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    return Path(path)


def load_sparse_codes(path: str | os.PathLike, checkpoint: str | os.PathLike, split: str,
                      shape: tuple[int, int]) -> dict[str, sparse.csr_matrix] | None:
    """model -> (N, n) CSR codes from ``path``, or None when the file is missing, unreadable, or
    not from this ``checkpoint`` (path, size, mtime), ``split`` and (N, n) ``shape``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            if (meta.get("checkpoint") != checkpoint_stamp(checkpoint) or meta.get("split") != split
                    or tuple(meta.get("shape", ())) != tuple(shape)):
                return None
            return {m: sparse.csr_matrix((f[f"{m}.data"], f[f"{m}.indices"], f[f"{m}.indptr"]), shape=tuple(shape))
                    for m in meta["models"]}
    except (OSError, ValueError, KeyError):
        return None
