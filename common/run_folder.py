"""Run-folder rules shared by ``train.py`` and ``scripts/stage.py``: safe names, the config digest a
``results.json`` records, and moving unreadable state aside (never deleting it)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from common.errors import UserError

#: One path component: starts with a letter, digit or ``_``; then letters, digits, ``_``, ``.``, ``-``.
#: So no ``/`` or ``\``, never ``.`` / ``..`` / empty, never a leading ``-`` (an option to a tool).
PATH_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

#: Config keys that do not change what a run computes (``ckpt_path`` is how it resumes, not what).
IGNORED_KEYS = ("ckpt_path", "config")


def check_path_component(value: Any, what: str) -> str:
    """``value`` if it is a single, plain path component (a folder name), else a one-line ``UserError``.

    Run names, run versions and backbone names become folder names; ``../x`` or ``/tmp/x`` would
    write outside the folder meant to hold them.
    """
    text = str(value)
    if not PATH_COMPONENT.fullmatch(text) or len(text) > 255:
        raise UserError(f"{what} '{text}' must be letters, digits, '_', '.', '-', starting with a "
                        f"letter, digit or '_': one folder name, no '/', '\\' or '..'")
    return text


def comparable(config: dict) -> dict:
    """The composed config without the keys that do not change the result (``IGNORED_KEYS``)."""
    return {k: v for k, v in config.items() if k not in IGNORED_KEYS}


def config_digest(config: dict) -> str:
    """sha256 (hex) of the composed config as canonical JSON (sorted keys), ``IGNORED_KEYS`` left out.

    ``results.json`` records it, so a stage can tell whose result a finished folder holds even if
    ``config.yaml`` was later rewritten.
    """
    text = json.dumps(comparable(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def free_name(path: Path, tag: str) -> Path:
    """The first ``<path>.<tag>-N`` (N = 1, 2, ...) that does not exist yet."""
    n = 1
    while path.with_name(f"{path.name}.{tag}-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.{tag}-{n}")


def move_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` (file or folder) to ``<path>.<tag>-N`` and return the new path; nothing is deleted."""
    target = free_name(path, tag)
    path.rename(target)
    return target
