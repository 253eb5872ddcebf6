"""Give freed heap memory back to the operating system (glibc ``malloc_trim``), a no-op elsewhere.

A streaming reader frees a group of rows (hundreds of MiB) while a training step keeps allocating;
glibc keeps the freed pages of its arenas mapped, so without a trim the resident set grows past the
memory budget though nothing is live. ``malloc_trim(0)`` returns every whole free page.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS; True where glibc did it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
