"""What this machine has (CPU ISA, native bfloat16, CUDA), and ``auto`` choices resolved from it.

Speed-dependent defaults (a matmul dtype, a precision, ``compile``) are ``"auto"`` in configs and
resolved once at start-up with the functions here, so a default is never tuned to one CPU. The
probe honours ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA``, so an AVX-512 machine approximates
an AVX2 one with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (docs/hardware.md says what
that does and does not emulate).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from dataclasses import asdict, dataclass

import torch

# oneDNN ISA levels that have no native bfloat16 arithmetic (ONEDNN_MAX_CPU_ISA values).
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@dataclass(frozen=True)
class Hardware:
    """One machine's facts that decide fast paths.

    cpu_model: the CPU's name; cpu_capability: ATen's kernel level (``DEFAULT``, ``AVX2``,
    ``AVX512``); cpu_native_bf16: bfloat16 matmuls run natively (AVX512-BF16 or AMX) rather than
    emulated; threads: torch intra-op threads; cuda_device: the first CUDA device's name, or None;
    cuda_bf16: that device computes bfloat16 natively.
    """

    cpu_model: str
    cpu_capability: str
    cpu_native_bf16: bool
    threads: int
    cuda_device: str | None
    cuda_bf16: bool

    def line(self) -> str:
        """One line for logs and benchmark headers."""
        gpu = f"{self.cuda_device} (bf16 {'native' if self.cuda_bf16 else 'no'})" if self.cuda_device else "none"
        return (f"machine: {self.cpu_model}; ISA {self.cpu_capability}; CPU bf16 "
                f"{'native' if self.cpu_native_bf16 else 'emulated'}; {os.cpu_count()} cores, "
                f"{self.threads} torch threads; torch {torch.__version__}; CUDA {gpu}")

    def as_dict(self) -> dict:
        return asdict(self)


def _cpu_flags() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine()):
                    model = value.strip()
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_native_bf16(capability: str, flags: set[str]) -> bool:
    """Native bfloat16 matmuls: the CPU has AVX512-BF16 or AMX-BF16, ATen runs its AVX-512 kernels
    and oneDNN is not capped below them."""
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_NO_BF16
    return capability.startswith("AVX512") and not capped and bool(flags & {"avx512_bf16", "amx_bf16"})


def detect() -> Hardware:
    """This machine: probed once per process; ``threads`` is torch's current setting."""
    return dataclasses.replace(_probe(), threads=torch.get_num_threads())


@functools.lru_cache(maxsize=1)
def _probe() -> Hardware:
    model, flags = _cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    cuda = torch.cuda.is_available()
    return Hardware(
        cpu_model=model,
        cpu_capability=capability,
        cpu_native_bf16=cpu_native_bf16(capability, flags),
        threads=torch.get_num_threads(),
        cuda_device=torch.cuda.get_device_name(0) if cuda else None,
        cuda_bf16=bool(cuda and torch.cuda.is_bf16_supported()),
    )


def bf16_is_fast(device: str | torch.device = "cpu", hardware: Hardware | None = None) -> bool:
    """bfloat16 arithmetic is native (not emulated) on ``device``."""
    hw = hardware or detect()
    return hw.cuda_bf16 if torch.device(device).type == "cuda" else hw.cpu_native_bf16


def resolve_matmul_dtype(choice: str, device: str | torch.device = "cpu",
                         hardware: Hardware | None = None) -> str:
    """``"auto"`` → ``"bfloat16"`` where bf16 is native on ``device``, else ``"float32"``; an explicit
    ``"float32"`` / ``"bfloat16"`` is returned as given."""
    if choice != "auto":
        return choice
    return "bfloat16" if bf16_is_fast(device, hardware) else "float32"
