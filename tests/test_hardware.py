"""``auto`` choices follow the machine: each branch forced through the probe's inputs."""

from __future__ import annotations

import pytest

from common.hardware import Hardware, cpu_native_bf16, resolve_matmul_dtype


def machine(cpu_bf16: bool, cuda_bf16: bool = False) -> Hardware:
    return Hardware("test cpu", "AVX512" if cpu_bf16 else "AVX2", cpu_bf16, 2,
                    "test gpu" if cuda_bf16 else None, cuda_bf16)


@pytest.mark.parametrize("capability,flags,cap_env,native", [
    ("AVX512", {"avx512f", "avx512_bf16"}, "", True),
    ("AVX512", {"avx512f", "amx_bf16"}, "", True),
    ("AVX512", {"avx512f"}, "", False),            # AVX-512 without BF16: emulated
    ("AVX2", {"avx2", "avx512_bf16"}, "", False),   # ATEN_CPU_CAPABILITY=avx2
    ("AVX512", {"avx512_bf16"}, "AVX2", False),     # ONEDNN_MAX_CPU_ISA=AVX2
])
def test_cpu_native_bf16(monkeypatch, capability, flags, cap_env, native):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap_env)
    assert cpu_native_bf16(capability, flags) is native


def test_resolve_matmul_dtype_each_branch():
    assert resolve_matmul_dtype("auto", "cpu", machine(cpu_bf16=True)) == "bfloat16"
    assert resolve_matmul_dtype("auto", "cpu", machine(cpu_bf16=False)) == "float32"
    assert resolve_matmul_dtype("auto", "cuda", machine(cpu_bf16=False, cuda_bf16=True)) == "bfloat16"
    assert resolve_matmul_dtype("float32", "cpu", machine(cpu_bf16=True)) == "float32"
    assert resolve_matmul_dtype("bfloat16", "cpu", machine(cpu_bf16=False)) == "bfloat16"
    assert "ISA AVX2" in machine(cpu_bf16=False).line()
