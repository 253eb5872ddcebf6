"""The activation cache: one float32 ``(N, d)`` tensor file per (backbone, split) plus a JSON manifest.

Layout: ``<root>/<backbone name>/<split>.pt`` (``torch.save`` of one tensor, loadable with
``weights_only=True``) and ``<split>.json``, the manifest. The manifest's ``key`` says what the rows
are (architecture, layer, checkpoint hash, dataset, hash of the split's images, transform,
precision, normalisation); ``bytes`` and ``sha256`` say what the file must be. A file is used only
when its manifest's key equals the key asked for and the file's size and SHA-256 match, so a stale,
truncated or corrupted file is never used: it is rebuilt (``rebuild: auto``) or reported
(``rebuild: never``).

Every write is atomic (temporary file, fsync, rename; ``common.io``), the manifest is removed before
its tensor is replaced and written after it, and builds of one backbone hold an exclusive file lock,
so a run killed at any point (or two runs at once) leaves either a valid entry or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
import torchvision
from torch import Tensor, nn

from common.errors import UserError
from common.io import atomic_path, atomic_write_json
from common.json_safe import json_safe
from common.safe_load import load_weights

try:
    import fcntl
except ImportError:  # not POSIX: builds are not locked against concurrent runs
    fcntl = None

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
Normalization = Literal["l2", "none", "standardize"]
Rebuild = Literal["auto", "never"]
# a cache folder belongs to one network: a manifest of another arch is an error, never overwritten
IDENTITY_FIELDS = ("arch",)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 23) -> str:
    """Hex SHA-256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_sha256(*tensors: Tensor) -> str:
    """Hex SHA-256 of the tensors' dtypes, shapes and bytes (CPU, contiguous)."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


class FeatureNormalizer(nn.Module):
    """Per-row feature normalisation as stored in the cache: ``(B, d)`` → ``(B, d)``.

    ``l2``: each row divided by its Euclidean norm (the study's default); ``none``: unchanged;
    ``standardize``: ``(x - mean) / std`` per dimension, with mean/std of the train split
    (dimensions with std < 1e-6 are only centred).
    """

    def __init__(self, mode: Normalization, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        super().__init__()
        if mode not in ("l2", "none", "standardize"):
            raise UserError(f"normalization must be l2, none or standardize, got '{mode}'")
        if mode == "standardize" and (mean is None or std is None):
            raise ValueError("standardize needs the train split's mean and std")
        self.mode = mode
        self.register_buffer("mean", None if mean is None else mean.float())
        self.register_buffer("std", None if std is None else std.float())

    @classmethod
    def fit(cls, mode: Normalization, train: Tensor) -> "FeatureNormalizer":
        """The normaliser for ``mode``; ``standardize`` takes mean/std of ``train`` (N, d), in float64."""
        if mode != "standardize":
            return cls(mode)
        x = train.double()
        mean, std = x.mean(0), x.std(0, unbiased=False)
        return cls(mode, mean.float(), torch.where(std < 1e-6, torch.ones_like(std), std).float())

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "l2":
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        if self.mode == "standardize":
            return (x - self.mean.to(x)) / self.std.to(x)
        return x

    def stats(self) -> dict[str, list[float]] | None:
        """The stored statistics as JSON-able lists (``None`` unless ``standardize``)."""
        if self.mode != "standardize":
            return None
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_manifest(cls, manifest: dict, where: str = "the activation cache manifest") -> "FeatureNormalizer":
        """Rebuild the normaliser a cache entry was written with; a one-line ``UserError`` if the
        manifest's statistics are not finite numbers (``std`` > 0) of one length."""
        stats = manifest.get("stats")
        mode = manifest["key"].get("normalization")
        if stats is None and mode != "standardize":
            return cls(mode)
        try:
            mean = torch.tensor(stats["mean"], dtype=torch.float32)
            std = torch.tensor(stats["std"], dtype=torch.float32)
            valid = (mean.dim() == 1 and mean.shape == std.shape and bool(torch.isfinite(mean).all())
                     and bool(torch.isfinite(std).all()) and bool((std > 0).all()))
        except (TypeError, KeyError, ValueError, RuntimeError):
            valid = False
        if not valid:
            raise UserError(f"{where} has no valid standardisation statistics (finite mean, std > 0); "
                            f"delete that cache folder and build it again")
        return cls(mode, mean, std)


@dataclass
class EntryStatus:
    """What ``ActivationCache.ensure`` did for one (backbone, split)."""

    name: str
    split: str
    action: Literal["reused", "built"]
    reason: str
    rows: int
    seconds: float


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two manifest keys, e.g. ``layer: 'avgpool' → 'layer4'``."""
    out = []
    for field in sorted(set(old) | set(new)):
        a, b = old.get(field), new.get(field)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{field}.")
        elif a != b:
            short = lambda v: (v[:12] + "…") if isinstance(v, str) and len(v) == 64 else v  # noqa: E731
            out.append(f"{prefix}{field} {short(a)!r} → {short(b)!r}")
    return out


class ActivationCache:
    """Builds, validates and loads cached features under ``root`` (see the module docstring).

    Args:
        root: cache folder.
        normalization: how rows are stored: ``l2``, ``none`` or ``standardize`` (train statistics).
        rebuild: ``auto`` re-extracts any missing, stale or corrupted entry; ``never`` raises a
            ``UserError`` instead (to insist on the exact cache an earlier stage produced).
        verbose: print one line per entry (reused / built and why) on stderr.
    """

    def __init__(self, root: str | os.PathLike, normalization: Normalization = "l2",
                 rebuild: Rebuild = "auto", verbose: bool = True) -> None:
        if normalization not in ("l2", "none", "standardize"):
            raise UserError(f"normalization must be l2, none or standardize, got '{normalization}'")
        if rebuild not in ("auto", "never"):
            raise UserError(f"rebuild must be auto or never, got '{rebuild}'")
        self.root = Path(root)
        self.normalization = normalization
        self.rebuild = rebuild
        self.verbose = verbose
        self._verified: dict[str, tuple] = {}

    def paths(self, name: str, split: str) -> tuple[Path, Path]:
        """``(tensor file, manifest)`` of one entry."""
        folder = self.root / name
        return folder / f"{split}.pt", folder / f"{split}.json"

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"activation cache: {text}", file=sys.stderr, flush=True)

    def read_manifest(self, name: str, split: str) -> dict | None:
        """The manifest of one entry, ``None`` if absent; unreadable JSON counts as absent."""
        _, manifest_path = self.paths(name, split)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) and isinstance(manifest.get("key"), dict) else None

    def _file_ok(self, path: Path, manifest: dict) -> str | None:
        """``None`` if the tensor file has the manifest's size and SHA-256, else what is wrong."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return "tensor file missing"
        if stat.st_size != manifest.get("bytes"):
            return f"tensor file truncated or replaced ({stat.st_size} bytes, manifest says {manifest.get('bytes')})"
        fingerprint = (stat.st_ino, stat.st_size, stat.st_mtime_ns, manifest.get("sha256"))
        if self._verified.get(str(path)) == fingerprint:
            return None
        if sha256_file(path) != manifest.get("sha256"):
            return "tensor file corrupted (SHA-256 differs from the manifest)"
        self._verified[str(path)] = fingerprint
        return None

    def problem(self, name: str, split: str, key: dict, rows: int | None = None) -> str | None:
        """Why the entry cannot be used for ``key`` (``None`` when it can).

        A manifest written for another architecture raises ``UserError``: the folder belongs to
        another backbone, and overwriting it would destroy that backbone's cache.
        """
        tensor_path, manifest_path = self.paths(name, split)
        manifest = self.read_manifest(name, split)
        if manifest is None:
            if manifest_path.exists():
                return "manifest unreadable"
            return "not built yet" if not tensor_path.exists() else "no manifest (interrupted build)"
        old = manifest["key"]
        for field in IDENTITY_FIELDS:
            if field in old and old[field] != key.get(field):
                raise UserError(
                    f"cache folder '{manifest_path.parent}' holds features of {field} "
                    f"'{old[field]}', not '{key.get(field)}': it belongs to another backbone; give "
                    f"this backbone another name or cache_dir, or delete that folder")
        if old != key:
            return "changed: " + "; ".join(_diff(old, key)[:4])
        if rows is not None and manifest.get("rows") != rows:
            return f"has {manifest.get('rows')} rows but the split has {rows} images"
        return self._file_ok(tensor_path, manifest)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write(self, name: str, split: str, features: Tensor, key: dict, info: dict,
               stats: dict | None) -> None:
        tensor_path, manifest_path = self.paths(name, split)
        for stale in tensor_path.parent.glob(f".{split}.*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)
        manifest_path.unlink(missing_ok=True)
        features = features.detach().cpu().float().contiguous()
        if features.untyped_storage().nbytes() != features.numel() * features.element_size():
            features = features.clone()  # torch.save would write the whole underlying storage
        with atomic_path(tensor_path) as tmp:
            torch.save(features, tmp)
            size, digest = tmp.stat().st_size, sha256_file(tmp)
        atomic_write_json(manifest_path, {
            "format": FORMAT_VERSION, "key": key, "info": manifest_json(info), "file": tensor_path.name,
            "rows": features.shape[0], "dim": features.shape[1], "shape": list(features.shape),
            "dtype": "float32", "bytes": size, "sha256": digest, "stats": stats,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        })

    def ensure(self, name: str, key: dict, images_sha256: dict[str, str],
               extract: Callable[[str], Tensor], info: dict | None = None,
               rows: dict[str, int] | None = None) -> list[EntryStatus]:
        """Make every split of backbone ``name`` valid for ``key``, extracting only what is not.

        Args:
            name: the backbone's folder name.
            key: what identifies the features apart from split and normalisation (arch, layer,
                checkpoint hash, dataset, transform, precision); JSON-able, must contain ``arch``.
            images_sha256: split → hash of its images and labels (``tensor_sha256``).
            extract: split → raw features ``(N, d)``; called only for entries that need building.
            info: extra JSON-able facts stored in the manifest, not compared.
            rows: split → number of images, checked against the manifest.
        """
        statuses = []
        normalizer = None
        with self._locked(name):
            for split in images_sha256:
                split_key = self.split_key(key, split, images_sha256[split], normalizer)
                start = time.perf_counter()
                reason = self.problem(name, split, split_key, (rows or {}).get(split))
                if reason is None:
                    manifest = self.read_manifest(name, split)
                    if split == "train":
                        normalizer = FeatureNormalizer.from_manifest(manifest, f"'{self.paths(name, split)[1]}'")
                    statuses.append(EntryStatus(name, split, "reused", "valid", manifest.get("rows"), 0.0))
                    self._say(f"{name}/{split}: reused ({manifest.get('rows')} rows)")
                    continue
                if self.rebuild == "never":
                    raise UserError(f"activation cache '{self.paths(name, split)[0]}' cannot be used "
                                    f"({reason}) and rebuild is 'never'; set rebuild: auto to re-extract")
                self._say(f"{name}/{split}: building ({reason})")
                raw = extract(split)
                if split == "train":
                    normalizer = FeatureNormalizer.fit(self.normalization, raw)
                    split_key = self.split_key(key, split, images_sha256[split], normalizer)
                elif normalizer is None:
                    normalizer = FeatureNormalizer(self.normalization)
                self._write(name, split, normalizer(raw), split_key, dict(info or {}), normalizer.stats())
                statuses.append(EntryStatus(name, split, "built", reason, raw.shape[0],
                                            time.perf_counter() - start))
        return statuses

    def split_key(self, key: dict, split: str, images_sha256: str,
                  normalizer: FeatureNormalizer | None) -> dict:
        """The full manifest key of one entry (standardised val/test also depend on the train stats)."""
        out = {**key, "format": FORMAT_VERSION, "split": split, "images_sha256": images_sha256,
               "normalization": self.normalization}
        if self.normalization == "standardize" and split != "train":
            if normalizer is None:
                raise ValueError("build the train split first: standardize uses its statistics")
            out["stats_sha256"] = tensor_sha256(normalizer.mean, normalizer.std)
        return out

    def load(self, name: str, split: str, rows: int | None = None, mmap: bool = False) -> tuple[Tensor, dict]:
        """A validated entry as ``(features (N, d) float32, manifest)``.

        The file's size and SHA-256 are checked against its manifest (once per process while the
        file is unchanged); ``rows`` (if given) must match. Anything wrong is a ``UserError``.
        """
        tensor_path, _ = self.paths(name, split)
        manifest = self.read_manifest(name, split)
        if manifest is None:
            raise UserError(f"no valid activation cache manifest for '{tensor_path}'; "
                            f"build the cache first (ActivationDataModule.prepare_data)")
        reason = self._file_ok(tensor_path, manifest)
        if reason is not None:
            raise UserError(f"activation cache '{tensor_path}' is unusable: {reason}; "
                            f"rebuild it (rebuild: auto)")
        # weights_only (in load_weights): a planted pickle is refused in one line, nothing runs
        features = load_weights(tensor_path, "activation cache file", mmap=mmap)
        if (not isinstance(features, Tensor) or list(features.shape) != manifest.get("shape")
                or features.dtype != torch.float32 or features.dim() != 2):
            what = (f"a {tuple(features.shape)} {features.dtype} tensor" if isinstance(features, Tensor)
                    else f"a {type(features).__name__}, not a tensor")
            raise UserError(f"activation cache '{tensor_path}' holds {what}, which does not match its "
                            f"manifest (shape {manifest.get('shape')}, float32); delete the folder "
                            f"'{tensor_path.parent}' and build it again")
        if rows is not None and features.shape[0] != rows:
            raise UserError(f"activation cache '{tensor_path}' has {features.shape[0]} rows but the "
                            f"{split} split has {rows} images; rebuild it (rebuild: auto)")
        return features, manifest

    def normalizer(self, name: str) -> FeatureNormalizer:
        """The normaliser backbone ``name``'s cached rows were written with (from the train manifest)."""
        manifest = self.read_manifest(name, "train")
        if manifest is None:
            raise UserError(f"no activation cache for '{name}' in '{self.root}'; build it first")
        return FeatureNormalizer.from_manifest(manifest, f"'{self.paths(name, 'train')[1]}'")


def manifest_json(value: Any) -> Any:
    """``value`` as the cache writes it into keys and manifests: ``common.json_safe`` with tensors
    flattened to 1-D (every existing key was written that way) and NaN/inf refused."""
    return json_safe(value, flat=True)
