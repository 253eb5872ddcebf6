"""``StudyCLI``: LightningCLI with the run folder / W&B sections and one-line config errors."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from common.auto_options import AutoTrainer, trainer_kwargs
from common.checkpoint_io import AtomicCheckpointIO
from common.errors import UserError, find_user_error
from common.finite_guard import FiniteGuard
from common.rng_state import RNGStateInCheckpoint
from common.run_options import RunOptions, WandbOptions, build_loggers
from common.validate import check_trainer_options


class StudyCLI(LightningCLI):
    """LightningCLI (``run=False``) whose loggers come from the ``run`` and ``wandb`` sections.

    ``seed_everything`` also seeds the datamodule (``data.init_args.seed``), so one seed drives the
    split, the shuffling, initialisation and augmentation. Every trainer also gets
    ``RNGStateInCheckpoint``, so ``--ckpt_path`` resumes repeat an uninterrupted run exactly, and
    (unless ``trainer.plugins`` is set) ``AtomicCheckpointIO``, so a killed run never leaves a
    half-written checkpoint.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        defaults = dict(kwargs.pop("trainer_defaults", None) or {})
        defaults["callbacks"] = [*defaults.get("callbacks", []), RNGStateInCheckpoint(), FiniteGuard()]
        kwargs.setdefault("trainer_class", AutoTrainer)  # trainer.precision: auto; threads; start-up line
        super().__init__(*args, trainer_defaults=defaults, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Lightning checkpoint to resume fitting from ('last' for the newest).")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        check_trainer_options(config.get("trainer"))
        if config.get("trainer", {}).get("logger") not in (None, True):
            raise UserError("set loggers through the 'run' and 'wandb' sections, not trainer.logger")
        kwargs["logger"] = build_loggers(config["run"], config["wandb"])
        if config.get("trainer", {}).get("plugins") is None:
            kwargs["plugins"] = [AtomicCheckpointIO()]
        kwargs.update(trainer_kwargs(config.get("trainer", {}), self.model))  # precision: auto
        return super().instantiate_trainer(**kwargs)


def summarize_config_error(text: str) -> str:
    """Boil jsonargparse's multi-line error down to one line: the key, the reason, the given value."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    key = re.match(r'Parser key "([^"]+)":?(.*)', lines[0])
    if not key:
        return " ".join(lines)
    reasons, given = [], None
    for line in lines[1:]:
        if line.startswith("- "):
            line = line[2:]
            if "NoneType" not in line:
                reasons.append(line)
        elif line.startswith("Given value:"):
            given = line.split(":", 1)[1].strip()
        elif reasons and not line.startswith(("Given value type", "Subtypes", "Errors:")):
            reasons[-1] += " " + line
    reasons = reasons or [key.group(2).strip() or lines[1]]
    message = f"config key '{key.group(1)}': {'; '.join(reasons)}"
    if given and "NestedArg" not in given and "Namespace" not in given:
        message += f" (given: {given})"
    return message


def parse_or_fail(build: Any) -> Any:
    """Call ``build()`` (which parses and instantiates); config mistakes become a one-line ``UserError``.

    jsonargparse reports them (unknown key, wrong type, missing file) as ``ArgumentError`` with the
    usage text, and wraps errors raised by constructors; users get only the reason.
    """
    try:
        return build()
    except ArgumentError as err:
        raise UserError(f"{summarize_config_error(str(err))} (see --help or --print_config)") from None
    except Exception as err:
        cause = find_user_error(err)
        if cause is None:
            raise
        raise cause from None


class _InfoToStdout(logging.Handler):
    """Log records below WARNING to ``sys.stdout``, the rest to ``sys.stderr`` (both looked up per
    record, so redirected or captured streams are honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # logging must never take the run down
            self.handleError(record)


def info_logs_to_stdout(names: tuple[str, ...] = ("lightning", "lightning.pytorch", "lightning.fabric")) -> None:
    """Send Lightning's INFO messages ("Seed set to 0", "GPU available: ...") to stdout, not stderr.

    Lightning gives its loggers a stderr ``StreamHandler``; a failing command must leave only its
    ``error:`` line on stderr. Idempotent; loggers a user configured (other handlers) are left alone.
    """
    for name in names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                replacement = _InfoToStdout(handler.level)
                replacement.setFormatter(handler.formatter)
                logger.removeHandler(handler)
                logger.addHandler(replacement)


@contextlib.contextmanager
def warnings_kept_until_done() -> Iterator[None]:
    """Hold back the warnings raised in the body; show them when it succeeds (or fails with a bug),
    drop them when it fails with a ``UserError``, whose one line is then all that stderr shows."""
    held: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            finally:
                held = list(caught)
    except Exception as err:
        if find_user_error(err) is None:
            _show(held)
        raise
    _show(held)


def _show(held: list[warnings.WarningMessage]) -> None:
    for w in held:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def config_files(args: list[str]) -> list[str]:
    """The values of every ``--config FILE`` / ``--config=FILE`` in ``args``."""
    found = []
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def check_config_files(args: list[str] | None = None) -> None:
    """A one-line ``UserError`` naming the first ``--config`` file that is not UTF-8 YAML text.

    jsonargparse shows a traceback for a binary file; a missing file or a YAML string given in
    place of a file is left to it (it reports those in one line).
    """
    for value in config_files(sys.argv[1:] if args is None else list(args)):
        path = Path(value)
        try:
            if not path.is_file():
                continue
        except OSError:  # e.g. a long YAML string given in place of a file: not a path at all
            continue
        try:
            yaml.safe_load(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"config file '{path}' is not text (binary data?); give a YAML config file") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UserError(f"config file '{path}' is not valid YAML{where} ({problem}); fix or replace it") from None
        except OSError as err:
            raise UserError(f"config file '{path}' cannot be read ({err.strerror})") from None

