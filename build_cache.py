"""Build or check the activation cache from YAML, as a pipeline stage of its own.

    python build_cache.py --config configs/fashion_mnist/activations.yaml [--data.init_args.rebuild never]

Reads the ``data:`` section (an ``ActivationDataModule``); other sections of a composed training
config (``model``, ``trainer``, ``run``, ...) are accepted and ignored. Extracts only the entries
that are missing or stale, then prints one line per (backbone, split) and the feature widths.
"""

from __future__ import annotations

import time
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from common.auto_options import start_up
from common.cli import check_config_files, info_logs_to_stdout, parse_or_fail, warnings_kept_until_done
from common.errors import run_cli
from datamodules.activations import ActivationDataModule


def build_parser() -> ArgumentParser:
    """``--config``, ``seed_everything`` (linked to ``data.init_args.seed``) and ``data``."""
    parser = ArgumentParser(description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), composed in order.")
    parser.add_argument("--seed_everything", type=int | bool | None, default=0, help="Seeds the shuffling.")
    parser.add_subclass_arguments(ActivationDataModule, "data", required=True, help="The activation cache.")
    for ignored in ("model", "trainer", "run", "wandb", "ckpt_path", "optimizer", "lr_scheduler"):
        parser.add_argument(f"--{ignored}", type=Any, default=None, help="Ignored (training sections).")
    parser.link_arguments("seed_everything", "data.init_args.seed",
                          compute_fn=lambda s: s if isinstance(s, int) and not isinstance(s, bool) else 0)
    return parser


def main(args: list[str] | None = None) -> ActivationDataModule:
    """Parse ``args`` (default: ``sys.argv``), build/validate the cache, print a summary."""
    info_logs_to_stdout()
    with warnings_kept_until_done():
        check_config_files(args)
        parser = build_parser()
        config = parse_or_fail(lambda: parser.parse_args(args))
        datamodule: ActivationDataModule = parse_or_fail(lambda: parser.instantiate(config)).data
    start_up()
    start = time.perf_counter()
    datamodule.prepare_data()
    for status in datamodule.last_build:
        detail = f"{status.seconds:7.1f} s  ({status.reason})" if status.action == "built" else ""
        print(f"{status.name:>24s}/{status.split:<5s} {status.action:6s} {status.rows:7d} rows {detail}")
    dims = ", ".join(f"{name}: {dim}" for name, dim in datamodule.feature_dims.items())
    print(f"activation cache ready in {datamodule.cache_dir} ({time.perf_counter() - start:.1f} s); "
          f"feature_dims {{{dims}}}")
    return datamodule


if __name__ == "__main__":
    run_cli(main)
