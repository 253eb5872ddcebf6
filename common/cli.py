"""``StudyCLI``: LightningCLI with the run folder / W&B sections and one-line config errors."""

from __future__ import annotations

import sys
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from common.errors import UserError
from common.run_options import RunOptions, WandbOptions, build_loggers


class StudyCLI(LightningCLI):
    """LightningCLI (``run=False``) whose loggers come from the ``run`` and ``wandb`` sections.

    ``seed_everything`` also seeds the datamodule (``data.init_args.seed``), so one seed drives the
    split, the shuffling, initialisation and augmentation.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Lightning checkpoint to resume fitting from ('last' for the newest).")
        parser.link_arguments("seed_everything", "data.init_args.seed")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config.get("trainer", {}).get("logger") not in (None, True):
            raise UserError("set loggers through the 'run' and 'wandb' sections, not trainer.logger")
        kwargs["logger"] = build_loggers(config["run"], config["wandb"])
        return super().instantiate_trainer(**kwargs)


def parse_or_fail(build: Any) -> Any:
    """Call ``build()`` (which parses the command line); a config error becomes a one-line ``UserError``.

    jsonargparse reports config mistakes (unknown key, wrong type, missing file) as ``ArgumentError``
    with the usage text; users get only the reason.
    """
    try:
        return build()
    except ArgumentError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = " ".join(lines[:3]) if lines else "invalid arguments"
        raise UserError(f"{reason} (see --help or --print_config)") from None


def argv() -> list[str]:
    """The command-line arguments after the program name."""
    return sys.argv[1:]
