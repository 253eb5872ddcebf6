"""A before/after markdown table of two runs' test metrics (``results.json`` of ``scripts/stage.py``).

    python scripts/compare_results.py BEFORE/results.json AFTER/results.json [--keys test/loss ...]

Prints one row per metric present in both files: before, after, after - before.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.errors import UserError  # noqa: E402


def load(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise UserError(f"results file '{path}' does not exist; run the stage that writes it first")
    try:
        test = json.loads(path.read_text())["test"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"'{path}' is not a stage results.json (no 'test' metrics)") from None
    return {k: float(v) for k, v in test.items() if isinstance(v, (int, float))}


def table(before: dict[str, float], after: dict[str, float], keys: list[str] | None = None) -> str:
    keys = keys or [k for k in before if k in after]
    missing = [k for k in keys if k not in before or k not in after]
    if missing:
        raise UserError(f"metric(s) {', '.join(missing)} are not in both results files")
    rows = ["| metric | before | after | after − before |", "|---|---|---|---|"]
    rows += [f"| `{k}` | {before[k]:.6g} | {after[k]:.6g} | {after[k] - before[k]:+.3g} |" for k in keys]
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    p.add_argument("--keys", nargs="*", default=None, help="metrics to show (default: all shared)")
    args = p.parse_args(argv)
    try:
        print(table(load(args.before), load(args.after), args.keys))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
