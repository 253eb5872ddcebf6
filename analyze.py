"""Run an analysis from YAML: ``python analyze.py --config configs/<study>/analysis.yaml``.

The config names an ``analysis.base.Analysis`` subclass under ``analysis:`` (class_path/init_args);
options can be overridden on the command line (``--analysis.init_args.top_k 8``) and
``--print_config`` shows the composed config. Prints the report folder when done.
"""

from __future__ import annotations

from jsonargparse import ActionConfigFile, ArgumentParser

from analysis.base import Analysis
from common.auto_options import start_up
from common.cli import check_config_files, info_logs_to_stdout, parse_or_fail, warnings_kept_until_done
from common.errors import run_cli


def build_parser() -> ArgumentParser:
    """The analysis command line: ``--config``, ``seed_everything`` and the ``analysis`` section."""
    parser = ArgumentParser(description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), composed in order.")
    parser.add_argument("--seed_everything", type=int, default=0, help="Seed for every random choice.")
    parser.add_subclass_arguments(Analysis, "analysis", required=True, help="The analysis to run.")
    return parser


def main(args: list[str] | None = None) -> object:
    """Parse ``args`` (default: ``sys.argv``), build the analysis and run it."""
    import lightning as L

    info_logs_to_stdout()
    with warnings_kept_until_done():
        check_config_files(args)
        parser = build_parser()
        config = parse_or_fail(lambda: parser.parse_args(args))
        L.seed_everything(config.seed_everything, workers=True)
        analysis = parse_or_fail(lambda: parser.instantiate_classes(config)).analysis
    start_up()
    report_dir = analysis.run()
    print(f"report written to {report_dir}")
    return report_dir


if __name__ == "__main__":
    run_cli(main)
