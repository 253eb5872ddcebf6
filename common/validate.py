"""Tiny value checks for constructors and entry points: each raises a one-line ``UserError`` that names
the option, the value given and what is allowed, so a bad value stops a run before anything is
written instead of training into NaN or exporting an untrained model.

Systems and datamodules call them in ``__init__``, e.g. ``positive("model.lr", lr)``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Iterable, Mapping

from common.errors import UserError


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def finite(name: str, value: Any) -> Any:
    """``value`` (a number, or an iterable of numbers) if every number is finite, else ``UserError``."""
    values = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
    for v in values:
        if not _is_number(v) or not math.isfinite(float(v)):
            raise UserError(f"{name} must be a finite number, got {value!r}")
    return value


def positive(name: str, value: Any) -> Any:
    """``value`` if it is a finite number > 0 (each of them, for an iterable), else ``UserError``."""
    finite(name, value)
    values = list(value) if isinstance(value, Iterable) else [value]
    if not all(v > 0 for v in values):
        raise UserError(f"{name} must be > 0, got {value!r}")
    return value


def non_negative(name: str, value: Any) -> Any:
    """``value`` if it is a finite number >= 0 (each of them, for an iterable), else ``UserError``."""
    finite(name, value)
    values = list(value) if isinstance(value, Iterable) else [value]
    if not all(v >= 0 for v in values):
        raise UserError(f"{name} must be >= 0, got {value!r}")
    return value


def in_range(name: str, value: Any, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False) -> Any:
    """``value`` if ``low <= value <= high`` (``<`` on an open end; ``None`` = unbounded), else ``UserError``."""
    finite(name, value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "-inf" if low is None else f"{low}"
        right = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        raise UserError(f"{name} must be in {interval}, got {value!r}")
    return value


def _fraction_or_count(name: str, value: Any, allow_zero: bool) -> None:
    """Lightning's ``limit_*_batches`` / ``val_check_interval``: an int count or a float fraction in [0, 1]."""
    if isinstance(value, bool) or not _is_number(value):
        raise UserError(f"{name} must be a number of batches (int) or a fraction (float), got {value!r}")
    if isinstance(value, int):
        if value < (0 if allow_zero else 1):
            raise UserError(f"{name} must be a number of batches >= {0 if allow_zero else 1}, got {value}")
    else:
        in_range(name, value, 0.0, 1.0, low_open=not allow_zero)


def check_trainer_options(trainer: Mapping[str, Any] | None) -> None:
    """One-line ``UserError`` for trainer settings that make no sense, before a Trainer or a run folder
    exists: negative epochs/steps (``-1`` means "no limit" for ``max_*``), zero training batches,
    non-positive intervals and a negative gradient clip. Unset (``None``) options are skipped."""
    if not trainer:
        return
    get = trainer.get

    def check(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise UserError(f"trainer.{key} must be {allowed}, got {get(key)!r}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for key in ("max_epochs", "max_steps"):
        value = get(key)
        if value is not None:
            check(key, is_int(value) and (value == -1 or value >= 1),
                  "a positive integer or -1 (no limit); 0 or less would train nothing")
    for key in ("min_epochs", "min_steps"):
        value = get(key)
        if value is not None:
            check(key, is_int(value) and value >= 0, "an integer >= 0")
    for key in ("accumulate_grad_batches", "log_every_n_steps", "check_val_every_n_epoch"):
        value = get(key)
        if value is not None:
            check(key, is_int(value) and value >= 1, "an integer >= 1")
    value = get("num_sanity_val_steps")
    if value is not None:
        check("num_sanity_val_steps", is_int(value) and value >= -1, "an integer >= 0 or -1 (all)")
    value = get("gradient_clip_val")
    if value is not None:
        non_negative("trainer.gradient_clip_val", value)
    for key, allow_zero in (("limit_train_batches", False), ("limit_val_batches", True),
                            ("limit_test_batches", True), ("limit_predict_batches", True),
                            ("val_check_interval", False)):
        value = get(key)
        if value is not None:
            _fraction_or_count(f"trainer.{key}", value, allow_zero)
    max_epochs, min_epochs = get("max_epochs"), get("min_epochs")
    if is_int(max_epochs) and is_int(min_epochs) and max_epochs >= 1 and min_epochs > max_epochs:
        raise UserError(f"trainer.min_epochs ({min_epochs}) must not exceed trainer.max_epochs ({max_epochs})")
