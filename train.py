"""Train one system from YAML: ``python train.py --config configs/<study>/<x>.yaml [--config ...]``.

Fits, then (``run.test_after_fit``) tests the best checkpoint. Every option can be overridden on
the command line (``--trainer.max_epochs 2``); ``--print_config`` shows the composed config.
The run folder ``<run.root>/<run.name>/<run.version or version_N>`` gets config.yaml, checkpoints/,
metrics.csv and, once fit and test are done, results.json (the test metrics and best checkpoint).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

from lightning.pytorch.callbacks import ModelCheckpoint

from common.cli import StudyCLI, parse_or_fail
from common.errors import run_cli
from common.io import atomic_write_json


def main(args: list[str] | None = None) -> StudyCLI:
    """Parse ``args`` (default: ``sys.argv``), fit, and test on the best checkpoint."""
    cli = parse_or_fail(lambda: StudyCLI(
        subclass_mode_model=True, subclass_mode_data=True, run=False, args=args,
        parser_kwargs={"exit_on_error": False},
        save_config_kwargs={"overwrite": True},
    ))
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    with removed_if_failed_early(Path(trainer.log_dir)):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.config.get("ckpt_path"))
    results: dict = {"best_checkpoint": None, "test": None}
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
        results["best_checkpoint"] = checkpoint.best_model_path
    if cli.config["run"]["test_after_fit"]:
        tested = trainer.test(model, datamodule=datamodule,
                              ckpt_path="best" if results["best_checkpoint"] else None)
        results["test"] = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    if trainer.is_global_zero:
        atomic_write_json(Path(trainer.log_dir) / "results.json", results)
    return cli


@contextlib.contextmanager
def removed_if_failed_early(run_dir: Path) -> Iterator[None]:
    """If the body fails before this new run folder holds a checkpoint, remove the folder.

    A run that dies on bad input (missing data, wrong shapes) leaves nothing behind; a run that dies
    after checkpointing keeps its folder so ``--ckpt_path last`` can resume it.
    """
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if not existed and run_dir.is_dir() and not any(run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


if __name__ == "__main__":
    run_cli(main)
