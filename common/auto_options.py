"""``auto`` options resolved once at start-up from the machine, recorded, and logged in one line.

Each resolver maps ``"auto"`` to the fast choice for the device it runs on (``common.hardware``)
and returns an explicit value unchanged. Resolutions are noted here (``note``) so the entry point
prints one start-up line with the machine, every resolved option and the thread plan
(``startup_line``), and ``AutoTrainer`` writes them into the run's ``hparams.yaml``.

- extraction precision: ``bf16`` where bfloat16 is native on the device (CUDA with bf16; a CPU with
  AVX512-BF16/AMX), else ``32``;
- ``compile`` (inductor-compiled feature extraction): on for CUDA, off on CPU, where its ~30 s of
  compilation per backbone costs more than it saves on the demo's extraction;
- ``trainer.precision``: ``bf16-mixed`` on CUDA with bf16, and on a CPU with native bf16 for the
  architectures measured faster that way (``CPU_BF16_TRAINING_FASTER``), else ``32-true``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Literal, Union, get_type_hints

import torch
from lightning.pytorch import Callback, Trainer

from common.errors import UserError
from common.hardware import Hardware, detect
from common.threads import ThreadPlan, configure_threads

# Resolutions of this process, in order: option → (value, reason).
_NOTES: dict[str, tuple[Any, str]] = {}
_PRINTED: set[str] = set()


def note(option: str, value: Any, reason: str) -> None:
    """Remember that ``option`` resolved to ``value`` (``reason``: why, a few words)."""
    _NOTES[option] = (value, reason)


def notes() -> dict[str, Any]:
    """Every resolution noted in this process: option → value (JSON-friendly)."""
    return {option: value for option, (value, _) in _NOTES.items()}


def clear_notes() -> None:
    """Forget the noted resolutions (tests; a process that starts a second, unrelated job)."""
    _NOTES.clear()
    _PRINTED.clear()


def _device_type(device: str | torch.device, hardware: Hardware) -> str:
    if isinstance(device, str) and device in ("auto", "gpu"):
        return "cuda" if hardware.cuda_device else "cpu"
    return torch.device(device).type


def basis(device: str | torch.device = "cpu", hardware: Hardware | None = None) -> str:
    """What an ``auto`` resolution on ``device`` rests on, for the start-up line (e.g.
    ``"auto: CPU AVX2, bf16 emulated"``)."""
    hw = hardware or detect()
    if _device_type(device, hw) == "cuda":
        return f"auto: CUDA, bf16 {'native' if hw.cuda_bf16 else 'no'}"
    return f"auto: CPU {hw.cpu_capability}, bf16 {'native' if hw.cpu_native_bf16 else 'emulated'}"


def resolve_extraction_precision(choice: str, device: str | torch.device = "cpu",
                                 hardware: Hardware | None = None) -> str:
    """Extraction autocast: ``"auto"`` → ``"bf16"`` where bfloat16 is native on ``device``, else
    ``"32"``; ``"32"`` / ``"bf16"`` / ``"16"`` unchanged."""
    if choice not in ("auto", "32", "bf16", "16"):
        raise UserError(f"precision must be auto, 32, bf16 or 16, got '{choice}'")
    if choice != "auto":
        return choice
    hw = hardware or detect()
    kind = _device_type(device, hw)
    native = hw.cuda_bf16 if kind == "cuda" else hw.cpu_native_bf16
    return "bf16" if native else "32"


def resolve_compile(choice: bool | str, device: str | torch.device = "cpu",
                    hardware: Hardware | None = None) -> bool:
    """``compile``: ``"auto"`` → on for CUDA, off on CPU (see module doc); a bool unchanged."""
    if isinstance(choice, bool):
        return choice
    if choice != "auto":
        raise UserError(f"compile must be true, false or auto, got '{choice}'")
    return _device_type(device, hardware or detect()) == "cuda"


def training_device(accelerator: Any = "auto", hardware: Hardware | None = None) -> str:
    """``"cuda"`` or ``"cpu"``: where Lightning's ``accelerator`` puts the training here."""
    hw = hardware or detect()
    accel = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    return "cuda" if hw.cuda_device and accel in ("auto", "gpu", "cuda", "cudaaccelerator") else "cpu"


# Architectures whose training step is faster under bf16-mixed than fp32 on a CPU with native
# bfloat16, by a side-by-side check (benchmarks/bench_train_precision.py). Not every one is:
# depthwise convolutions (MobileNetV3) run slower in bf16 there, so an unmeasured arch keeps fp32.
CPU_BF16_TRAINING_FASTER = frozenset({"resnet50"})


def resolve_training_precision(choice: Any, accelerator: Any = "auto", hardware: Hardware | None = None,
                               arch: str | None = None) -> Any:
    """``trainer.precision``: ``"auto"`` → ``"bf16-mixed"`` on CUDA with bf16, and on a CPU with
    native bfloat16 (AVX512-BF16/AMX) for an ``arch`` measured faster that way
    (``CPU_BF16_TRAINING_FASTER``); else ``"32-true"``. Any other value is returned unchanged
    (Lightning validates it)."""
    if choice != "auto":
        return choice
    hw = hardware or detect()
    if training_device(accelerator, hw) == "cuda":
        return "bf16-mixed" if hw.cuda_bf16 else "32-true"
    return "bf16-mixed" if hw.cpu_native_bf16 and arch in CPU_BF16_TRAINING_FASTER else "32-true"


def trainer_kwargs(trainer_config: dict, model: Any = None) -> dict:
    """Trainer arguments that replace ``auto`` values of ``trainer_config`` for ``model`` (its
    ``hparams.arch``, if any, picks the CPU rule); each resolution is noted. For ``StudyCLI``."""
    if trainer_config.get("precision") != "auto":
        return {}
    accelerator = trainer_config.get("accelerator", "auto")
    arch = dict(getattr(model, "hparams", None) or {}).get("arch")
    resolved = resolve_training_precision("auto", accelerator, arch=arch)
    device = training_device(accelerator)
    why = basis(device) + (f", {arch}" if arch and device == "cpu" else "")
    note("trainer.precision", resolved, why)
    return {"precision": resolved}


def startup_line(plan: ThreadPlan | None = None, hardware: Hardware | None = None) -> str:
    """``start-up: <machine line>; <option>=<value> (<reason>), ...; threads N (...)``."""
    hw = hardware or detect()
    parts = [hw.line()]
    parts += [f"{option}={value} ({reason})" for option, (value, reason) in _NOTES.items()]
    if plan is not None:
        parts.append(plan.describe())
    return "start-up: " + "; ".join(parts)


def start_up(local_world_size: int = 1, hardware: Hardware | None = None, file=None) -> str:
    """Set the threads (``common.threads.configure_threads``), then print the start-up line once
    per process (rank 0 of a node only) to stdout (information, not an error: stderr stays for
    ``error:`` lines); returns the line."""
    plan = configure_threads(local_world_size)
    note("threads", plan.threads, plan.describe().removeprefix(f"threads {plan.threads} ").strip("()"))
    line = startup_line(None, hardware)
    if line not in _PRINTED and os.environ.get("LOCAL_RANK", "0") == "0":
        _PRINTED.add(line)
        print(line, file=file or sys.stdout, flush=True)
    return line


class RecordAutoOptions(Callback):
    """Writes the machine line and this process's ``auto`` resolutions into every logger's hparams."""

    def _record(self, trainer: Trainer) -> None:
        record = {"machine": detect().line(), "auto_resolved": notes()}
        for logger in trainer.loggers:
            logger.log_hyperparams(record)

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._record(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._record(trainer)


_TRAINER_PRECISION = get_type_hints(Trainer.__init__)["precision"]


class AutoTrainer(Trainer):
    """``lightning.Trainer`` whose ``precision`` may be ``"auto"`` (``resolve_training_precision``).

    The config keeps ``auto`` (so a saved config compares equal on every machine); the value used
    is logged in the start-up line and recorded in ``hparams.yaml`` under ``auto_resolved``. It
    also sets this process's threads to its share of the cores (one share per device of the node).
    """

    def __init__(self, *, precision: Union[Literal["auto"], _TRAINER_PRECISION] = None,  # noqa: UP007
                 **kwargs: Any) -> None:
        accelerator = kwargs.get("accelerator", "auto")
        resolved = resolve_training_precision(precision, accelerator)
        if precision == "auto":
            note("trainer.precision", resolved, basis(training_device(accelerator)))
        callbacks = kwargs.pop("callbacks", None)
        callbacks = [] if callbacks is None else list(callbacks) if isinstance(callbacks, list) else [callbacks]
        super().__init__(precision=resolved, callbacks=[*callbacks, RecordAutoOptions()], **kwargs)
        start_up(local_world_size=self.num_devices)
