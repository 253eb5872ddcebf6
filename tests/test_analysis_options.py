"""``analysis.options``: the option groups the analyses share, read from the YAML configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.options import FiringOptions, KSparseInputs, PageOptions, SaeInputs
from common.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def build(*configs: str):
    import analyze

    parser = analyze.build_parser()
    args = [a for c in configs for a in ("--config", str(ROOT / c))]
    return parser.instantiate_classes(parser.parse_args(args)).analysis


@pytest.mark.parametrize("study", ["fashion_mnist", "cifar100"])
def test_report_and_explorer_read_the_same_inputs_and_firing(study):
    report = build(f"configs/{study}/analysis_universality.yaml")
    explorer = build(f"configs/{study}/explorer.yaml")
    assert isinstance(report.inputs, SaeInputs) and isinstance(report.firing, FiringOptions)
    assert report.inputs == explorer.inputs and report.firing == explorer.firing
    assert report.inputs.device in ("cpu", "cuda")  # "auto" is resolved when built


def test_ksparse_study_and_explorer_read_the_same_inputs():
    study, explorer = build("configs/fashion_mnist/analysis.yaml"), build("configs/fashion_mnist/explorer_ksparse.yaml")
    assert isinstance(study.inputs, KSparseInputs)
    for name in ("ksae_run", "probe_run", "importance_split", "eval_split"):
        assert getattr(study.inputs, name) == getattr(explorer.inputs, name)
    assert study.inputs.data.hparams == explorer.inputs.data.hparams


@pytest.mark.parametrize("config", ["fashion_mnist/explorer.yaml", "fashion_mnist/explorer_ksparse.yaml",
                                    "cifar100/explorer.yaml"])
def test_both_explorers_read_one_page_group_with_the_defaults(config):
    page = build(f"configs/{config}").page
    assert isinstance(page, PageOptions) and page == PageOptions()


@pytest.mark.parametrize("config, option, message", [
    ("explorer.yaml", ["--analysis.init_args.page.n_top_images", "0"], "page.n_top_images=0 must be at least 1"),
    ("explorer_ksparse.yaml", ["--analysis.init_args.page.n_similar", "-1"], "page.n_similar=-1 must be at least 0"),
])
def test_bad_page_option_from_the_command_line_is_one_line_and_exit_2(config, option, message, capsys):
    import analyze

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: analyze.main(["--config", str(ROOT / "configs/fashion_mnist" / config), *option]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]


def test_a_later_config_overrides_one_option_of_a_group():
    analysis = build("configs/fashion_mnist/analysis_universality.yaml", "configs/gpu_check/cpu_analysis.yaml")
    assert analysis.inputs.device == "cpu"
    assert analysis.inputs.usae_checkpoint == "runs/fashion_mnist_usae/main/checkpoints/last.ckpt"


def test_unknown_key_in_a_group_is_one_line_and_exit_2(tmp_path):
    config = yaml.safe_load((ROOT / "configs/fashion_mnist/analysis_universality.yaml").read_text())
    config["analysis"]["init_args"]["inputs"]["batchsize"] = 64
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "analyze.py", "--config", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "batchsize" in lines[0]


@pytest.mark.parametrize("build_options, message", [
    (lambda: SaeInputs("u.ckpt", batch_size=0), "inputs.batch_size=0"),
    (lambda: SaeInputs("u.ckpt", threads=0), "inputs.threads=0"),
    (lambda: FiringOptions(entropy_lo=0.9, entropy_hi=0.5), "entropy_lo < firing.entropy_hi"),
    (lambda: FiringOptions(min_activations=0), "min_activations=0"),
    (lambda: PageOptions(n_top_images=0), "page.n_top_images=0 must be at least 1"),
    (lambda: PageOptions(hist_bins=0), "page.hist_bins=0 must be at least 1"),
    (lambda: PageOptions(chunk_size=0), "page.chunk_size=0 must be at least 1"),
    (lambda: PageOptions(n_similar=-1), "page.n_similar=-1 must be at least 0"),
    (lambda: PageOptions(wandb_rows=-1), "page.wandb_rows=-1 must be at least 0"),
])
def test_bad_values_are_one_line_user_errors(build_options, message):
    with pytest.raises(UserError, match=message) as err:
        build_options()
    assert "\n" not in str(err.value)
