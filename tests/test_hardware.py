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


# ---- auto options (common.auto_options): each branch forced by passing a Hardware -------------

from common import auto_options  # noqa: E402
from common.auto_options import (resolve_compile, resolve_extraction_precision,  # noqa: E402
                                 resolve_training_precision)
from common.errors import UserError  # noqa: E402

AVX2 = machine(cpu_bf16=False)
AMX = machine(cpu_bf16=True)
GPU_BF16 = machine(cpu_bf16=False, cuda_bf16=True)
GPU_OLD = Hardware("test cpu", "AVX2", False, 2, "old gpu", False)  # CUDA without bf16 (pre-Ampere)


@pytest.mark.parametrize("hw,device,expected", [
    (AVX2, "cpu", "32"), (AMX, "cpu", "bf16"), (GPU_BF16, "cuda", "bf16"),
    (GPU_OLD, "cuda", "32"), (GPU_BF16, "cpu", "32"), (GPU_BF16, "auto", "bf16"), (AVX2, "auto", "32"),
])
def test_extraction_precision_auto(hw, device, expected):
    assert resolve_extraction_precision("auto", device, hw) == expected


def test_extraction_precision_explicit_wins_and_bad_value_is_one_line():
    assert resolve_extraction_precision("bf16", "cpu", AVX2) == "bf16"
    assert resolve_extraction_precision("32", "cuda", GPU_BF16) == "32"
    with pytest.raises(UserError, match="precision must be auto, 32, bf16 or 16, got 'fp8'"):
        resolve_extraction_precision("fp8", "cpu", AVX2)


@pytest.mark.parametrize("hw,device,expected", [
    (AVX2, "cpu", False), (AMX, "cpu", False), (GPU_BF16, "cuda", True), (GPU_OLD, "cuda:0", True),
    (GPU_BF16, "cpu", False),
])
def test_compile_auto(hw, device, expected):
    assert resolve_compile("auto", device, hw) is expected


def test_compile_explicit_wins():
    assert resolve_compile(True, "cpu", AVX2) is True
    assert resolve_compile(False, "cuda", GPU_BF16) is False
    with pytest.raises(UserError, match="compile must be true, false or auto"):
        resolve_compile("sometimes", "cpu", AVX2)


@pytest.mark.parametrize("hw,accelerator,expected", [
    (AVX2, "auto", "32-true"),        # CPU without native bf16: emulated, slower
    (AMX, "auto", "bf16-mixed"),      # AVX512-BF16 / AMX CPU
    (AMX, "cpu", "bf16-mixed"),
    (GPU_BF16, "auto", "bf16-mixed"),
    (GPU_BF16, "gpu", "bf16-mixed"),
    (GPU_BF16, "cpu", "32-true"),     # forced onto an AVX2 CPU although a GPU exists
    (GPU_OLD, "auto", "32-true"),     # CUDA without bf16
])
def test_training_precision_auto(hw, accelerator, expected):
    assert resolve_training_precision("auto", accelerator, hw) == expected


def test_training_precision_explicit_wins():
    assert resolve_training_precision("16-mixed", "auto", GPU_BF16) == "16-mixed"
    assert resolve_training_precision("bf16-mixed", "cpu", AVX2) == "bf16-mixed"
    assert resolve_training_precision(None, "cpu", AMX) is None


def test_auto_trainer_resolves_records_and_logs(tmp_path, monkeypatch, capsys):
    """trainer.precision: auto through the Trainer subclass the CLI uses, on a patched machine."""
    from lightning.pytorch.loggers import CSVLogger

    monkeypatch.setattr(auto_options, "detect", lambda: AVX2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    auto_options.clear_notes()
    trainer = auto_options.AutoTrainer(precision="auto", accelerator="cpu", devices=1, max_steps=1,
                                       logger=CSVLogger(tmp_path), enable_progress_bar=False,
                                       enable_model_summary=False, enable_checkpointing=False)
    assert trainer.precision == "32-true"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("start-up: machine: test cpu; ISA AVX2")
    assert "trainer.precision=32-true (auto: CPU AVX2, bf16 emulated)" in line and "; threads=" in line
    assert auto_options.notes()["trainer.precision"] == "32-true"
    assert isinstance(trainer.callbacks[-1], auto_options.RecordAutoOptions)

    monkeypatch.setattr(auto_options, "detect", lambda: AMX)
    auto_options.clear_notes()
    trainer = auto_options.AutoTrainer(precision="auto", accelerator="cpu", devices=1, logger=False,
                                       enable_progress_bar=False, enable_checkpointing=False)
    assert trainer.precision == "bf16-mixed"
    explicit = auto_options.AutoTrainer(precision="32-true", accelerator="cpu", devices=1, logger=False,
                                        enable_progress_bar=False, enable_checkpointing=False)
    assert explicit.precision == "32-true"
    auto_options.clear_notes()


def test_auto_trainer_hparams_record(tmp_path, monkeypatch):
    """A fit writes the machine line and the resolved options into hparams.yaml."""
    import yaml
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.loggers import CSVLogger

    monkeypatch.setattr(auto_options, "detect", lambda: AVX2)
    auto_options.clear_notes()
    logger = CSVLogger(tmp_path, name="run", version="v")
    trainer = auto_options.AutoTrainer(precision="auto", accelerator="cpu", devices=1, max_steps=1,
                                       limit_val_batches=0, logger=logger, enable_progress_bar=False,
                                       enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(BoringModel())
    hparams = yaml.safe_load((tmp_path / "run" / "v" / "hparams.yaml").read_text())
    assert hparams["auto_resolved"]["trainer.precision"] == "32-true"
    assert hparams["machine"].startswith("machine: test cpu")
    auto_options.clear_notes()
