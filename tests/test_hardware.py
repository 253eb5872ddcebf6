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


@pytest.mark.parametrize("hw,accelerator,arch,expected", [
    (AVX2, "auto", "resnet50", "32-true"),        # CPU without native bf16: emulated, slower
    (AMX, "auto", "resnet50", "bf16-mixed"),      # AVX512-BF16 / AMX CPU, an arch measured faster
    (AMX, "cpu", "resnet50", "bf16-mixed"),
    (AMX, "cpu", "mobilenet_v3_large", "32-true"),  # depthwise convolutions: slower in bf16 there
    (AMX, "cpu", None, "32-true"),                # unmeasured: fp32
    (GPU_BF16, "auto", None, "bf16-mixed"),
    (GPU_BF16, "gpu", "mobilenet_v3_large", "bf16-mixed"),
    (GPU_BF16, "cpu", "resnet50", "32-true"),     # forced onto an AVX2 CPU although a GPU exists
    (GPU_OLD, "auto", "resnet50", "32-true"),     # CUDA without bf16
])
def test_training_precision_auto(hw, accelerator, arch, expected):
    assert resolve_training_precision("auto", accelerator, hw, arch) == expected


def test_trainer_kwargs_reads_the_models_arch(monkeypatch):
    """StudyCLI's hook: only an ``auto`` precision is replaced, using the model's hparams.arch."""
    from types import SimpleNamespace

    monkeypatch.setattr(auto_options, "detect", lambda: AMX)
    auto_options.clear_notes()
    resnet, mobile = SimpleNamespace(hparams={"arch": "resnet50"}), SimpleNamespace(hparams={"arch": "mobilenet_v3_large"})
    assert auto_options.trainer_kwargs({"precision": "auto", "accelerator": "cpu"}, resnet) == {"precision": "bf16-mixed"}
    assert "trainer.precision=bf16-mixed (auto: CPU AVX512, bf16 native, resnet50)" in auto_options.startup_line()
    assert auto_options.trainer_kwargs({"precision": "auto"}, mobile) == {"precision": "32-true"}
    assert auto_options.trainer_kwargs({"precision": "16-mixed"}, resnet) == {}
    auto_options.clear_notes()


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
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("start-up: ")][-1]
    assert line.startswith("start-up: machine: test cpu; ISA AVX2")
    assert "trainer.precision=32-true (auto: CPU AVX2, bf16 emulated)" in line and "; threads=" in line
    assert auto_options.notes()["trainer.precision"] == "32-true"
    assert isinstance(trainer.callbacks[-1], auto_options.RecordAutoOptions)

    monkeypatch.setattr(auto_options, "detect", lambda: GPU_BF16)
    auto_options.clear_notes()
    with pytest.raises(Exception):  # resolved to bf16-mixed for the (patched) GPU; no GPU here
        auto_options.AutoTrainer(precision="auto", accelerator="gpu", devices=1, logger=False)
    assert auto_options.notes()["trainer.precision"] == "bf16-mixed"
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


# ---- benchmarks say what they ran on ------------------------------------------------------------

def test_every_benchmark_prints_the_machine_line(repo_root):
    """Each benchmark's main prints ``detect().line()`` (checked in the source: running them all is slow)."""
    missing = [p.name for p in sorted((repo_root / "benchmarks").glob("bench_*.py"))
               if "print(detect().line()" not in p.read_text()]
    assert not missing, f"benchmarks without the machine line: {missing}"


def test_benchmark_first_line_is_the_machine(repo_root):
    from helpers.runs import run_script

    done = run_script(repo_root, "benchmarks/bench_extraction.py", "--images", "4", "--image-size", "32",
                      "--arch", "mobilenet_v3_large",
                      "--batch-size", "4", "--no-plain", env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("machine: ") and "ISA " in first and "torch " in first
    assert "ours" in done.stdout
