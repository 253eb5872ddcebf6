"""Train one system from YAML: ``python train.py --config configs/<study>/<x>.yaml [--config ...]``.

Fits, then (``run.test_after_fit``) tests the best checkpoint. Every option can be overridden on
the command line (``--trainer.max_epochs 2``); ``--print_config`` shows the composed config.
The run folder ``<run.root>/<run.name>/<run.version or version_N>`` gets config.yaml, checkpoints/,
metrics.csv and, once fit and test are done, results.json (the test metrics, the best checkpoint and
the sha256 of the composed config it is the result of). Before anything in an existing run folder is
rewritten, the config is proven to run (one batch on copies) and ``--ckpt_path`` is checked, so a
bad rerun fails in one line and leaves the finished run as it was.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import lightning as L
import yaml
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint

from common.checkpoint_io import check_checkpoint_fits, read_checkpoint
from common.cli import StudyCLI, check_config_files, info_logs_to_stdout, parse_or_fail, warnings_kept_until_done
from common.errors import run_cli
from common.io import atomic_write_json
from common.run_folder import config_digest
from common.run_options import ResumableCSVLogger

#: ``--ckpt_path`` values Lightning resolves itself (besides a file path).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def main(args: list[str] | None = None) -> StudyCLI:
    """Parse ``args`` (default: ``sys.argv``), check, fit, and test on the best checkpoint."""
    info_logs_to_stdout()
    with warnings_kept_until_done():
        check_config_files(args)
        cli = parse_or_fail(lambda: StudyCLI(
            subclass_mode_model=True, subclass_mode_data=True, run=False, args=args,
            parser_kwargs={"exit_on_error": False},
            save_config_kwargs={"overwrite": True},
        ))
        trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
        run_dir = Path(trainer.log_dir)
        existed = holds_files(run_dir)
        with removed_if_failed_early(run_dir, existed):
            ckpt_path, resume_step = checked_ckpt_path(cli.config.get("ckpt_path"), run_dir, model)
            if existed:
                parse_or_fail(lambda: preflight(model, datamodule))
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.resume_step = resume_step
    with removed_if_failed_early(run_dir, existed):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    composed = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    results: dict = {"best_checkpoint": None, "test": None, "config_sha256": config_digest(composed)}
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
        results["best_checkpoint"] = checkpoint.best_model_path
    if cli.config["run"]["test_after_fit"]:
        tested = trainer.test(model, datamodule=datamodule,
                              ckpt_path="best" if results["best_checkpoint"] else None, weights_only=True)
        results["test"] = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    if trainer.is_global_zero:
        atomic_write_json(Path(trainer.log_dir) / "results.json", results)
    return cli


def checked_ckpt_path(ckpt_path: str | None, run_dir: Path, model: L.LightningModule) -> tuple[str | None, int | None]:
    """``(ckpt_path for Lightning, the checkpoint's global_step)``; a one-line ``UserError`` unless the
    file exists, loads with ``weights_only=True`` and holds this model's keys and shapes.

    ``last`` means this run folder's ``checkpoints/last.ckpt`` when there is one; Lightning's other
    special values pass through (Lightning loads them, weights-only too).
    """
    if ckpt_path is None:
        return None, None
    if ckpt_path == "last" and (run_dir / "checkpoints" / "last.ckpt").is_file():
        ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
    elif ckpt_path in SPECIAL_CKPT_PATHS:
        return ckpt_path, None
    checkpoint = read_checkpoint(ckpt_path, "--ckpt_path")
    check_checkpoint_fits(checkpoint, model, ckpt_path, "--ckpt_path")
    step = checkpoint.get("global_step")
    return ckpt_path, step if isinstance(step, int) else None


def preflight(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """One training and one validation batch (``fast_dev_run``) on copies of the model and data, in a
    throwaway CPU trainer that writes nothing: a config that cannot run fails here, before an
    existing run folder's config.yaml, hparams.yaml or metrics.csv is touched.

    The global RNG state is restored afterwards, so the real fit draws what it would have drawn.
    """
    states = _collect_rng_states(include_cuda=False)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    try:
        with tempfile.TemporaryDirectory(prefix="preflight-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lightning_log.setLevel(logging.WARNING)
            trial = L.Trainer(accelerator="cpu", devices=1, fast_dev_run=1, logger=False,
                              enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False, default_root_dir=tmp)
            trial.fit(copy.deepcopy(model), datamodule=copy.deepcopy(datamodule))
    finally:
        lightning_log.setLevel(level)
        _set_rng_states(states)


def holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds any file (a W&B logger may already have made it, empty)."""
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


@contextlib.contextmanager
def removed_if_failed_early(run_dir: Path, existed: bool) -> Iterator[None]:
    """If the body fails before this new run folder holds a checkpoint, remove the folder.

    ``existed``: the folder held files before this command (then it is never removed). A run that
    dies on bad input (missing data, wrong shapes, a bad ``--ckpt_path``) leaves nothing behind; a
    run that dies after checkpointing keeps its folder so ``--ckpt_path last`` can resume it.
    """
    try:
        yield
    except BaseException:
        if not existed and run_dir.is_dir() and not any(run_dir.glob("checkpoints/*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


if __name__ == "__main__":
    run_cli(main)
