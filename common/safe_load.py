"""Loading files without running code: every ``torch.load`` of a user-supplied or on-disk file goes
through ``load_weights`` (``weights_only=True``), and pickled NumPy datasets through
``load_numpy_pickle`` (an unpickler that only rebuilds arrays).

A pickle can name any Python callable and have it called while loading (``__reduce__``), so a
checkpoint from someone else could run code on this machine. ``torch.load(weights_only=True)``
(PyTorch's restricted unpickler) only rebuilds tensors, containers and primitives; a file that
needs more is refused with a one-line ``UserError``, never retried with ``weights_only=False``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from common.errors import UserError

UNSAFE_HINT = ("(it holds Python objects that could run code); only plain state_dicts and the Lightning "
               "checkpoints this project writes are loaded: re-export the weights as a state_dict "
               "(torch.save(model.state_dict(), path)) from a copy you trust")


def load_weights(path: str | Path, what: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, containers, numbers, strings.

    ``what`` names the option or file in errors (e.g. ``"usae_checkpoint"``). A missing file, a
    file that is not a PyTorch file and a file holding other Python objects (which could run code)
    are each a one-line ``UserError``. ``mmap`` maps tensor storage instead of reading it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist (or is not a file); check the path")
    try:
        with warnings.catch_warnings():
            # the restricted unpickler warns about protocols newer than 2; the refusal below says it all
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise refusal(err, what, path, "pass a .pth state_dict or a Lightning .ckpt") from None
    except Exception as err:  # zip, EOF, key and OS errors all mean "not a readable weights file"
        raise UserError(f"{what} '{path}' is not a readable PyTorch weights file ({type(err).__name__}"
                        f"{': ' + _first_line(err) if _first_line(err) else ''}); "
                        f"pass a .pth state_dict or a Lightning .ckpt") from None


@contextlib.contextmanager
def weights_only_loads(what: str, path: str | Path) -> Iterator[None]:
    """Force ``weights_only=True`` on every ``torch.load`` in the body, even one a library makes with
    ``weights_only=False`` (torchvision's pretrained-weights loader), via PyTorch's
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``; a refused or unreadable file is a one-line ``UserError``
    naming ``what`` and ``path``."""
    saved = {name: os.environ.pop(name, None)
             for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            yield
    except pickle.UnpicklingError as err:
        raise refusal(err, what, path, "delete it so that it is downloaded again") from None
    except (EOFError, RuntimeError, KeyError) as err:  # truncated zip, bad magic number, ...
        raise UserError(f"{what} '{path}' is not a readable PyTorch weights file ({type(err).__name__}); "
                        f"delete it so that it is downloaded again") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def refusal(err: pickle.UnpicklingError, what: str, path: str | Path, fix: str) -> UserError:
    """The one-line error for a file ``torch.load(weights_only=True)`` refused: one that names a
    Python callable (it could run code), or one that is no PyTorch file at all."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found or "Trying to call reduce" in text:
        callable_name = f"; it names {found.group(1)}" if found else ""
        return UserError(f"{what} '{path}' is not a plain weights/checkpoint file "
                         f"{UNSAFE_HINT.replace(')', callable_name + ')', 1)}")
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail.group(1).strip().splitlines()[0][:100] if detail else _first_line(err)
    return UserError(f"{what} '{path}' is not a readable PyTorch weights file ({reason}); {fix}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:120] if text else ""


def tensors_in(obj: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """``(dotted key, tensor)`` for every tensor nested in dicts/lists/tuples of ``obj``."""
    if isinstance(obj, Tensor):
        yield prefix or "<tensor>", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors_in(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from tensors_in(value, f"{prefix}.{i}" if prefix else str(i))


def check_finite_weights(state: Any, what: str) -> None:
    """``UserError`` naming the first floating-point tensor of ``state`` with a NaN or inf.

    A model trained into NaN (too high a learning rate) would otherwise give NaN features, NaN
    losses and chance-level accuracy that still look like a finished result.
    """
    for key, tensor in tensors_in(state):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{what}: '{key}' holds {bad} NaN/inf values; the model diverged: retrain "
                            f"it (e.g. with a lower lr) or point at a healthy checkpoint")


# (module, name) of the only callables a pickled NumPy dataset (CIFAR's python version) needs:
# array and dtype reconstruction, and Python 2/protocol-2 bytes.
NUMPY_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _NumpyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in NUMPY_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return super().find_class(module, name)


def load_numpy_pickle(path: str | Path, what: str) -> Any:
    """Unpickle ``path`` allowing only NumPy arrays, dtypes, containers and primitives (latin-1 strings,
    as CIFAR's Python 2 pickles need); anything else is a one-line ``UserError``, nothing runs."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{what} '{path}' cannot be read ({err.strerror}); check the path") from None
    try:
        return _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        if "is not allowed" in str(err):
            raise UserError(f"{what} '{path}' is not a plain NumPy data file ({_first_line(err)}: "
                            f"it holds Python objects that could run code); restore the official "
                            f"file") from None
        raise UserError(f"{what} '{path}' is not a readable pickle ({_first_line(err)}); restore it") from None
    except Exception as err:
        raise UserError(f"{what} '{path}' is not a readable pickle ({type(err).__name__}); restore it") from None
