"""Copy a benchmark's saved output into a doc, between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``.

    python benchmarks/bench_topk_sae.py --cpu-time | tee docs/bench/topk_sae_cpu_avx2.md
    python scripts/bench_block.py docs/speed.md topk-sae-cpu docs/bench/topk_sae_cpu_avx2.md \
        --command "python benchmarks/bench_topk_sae.py --cpu-time"

The block gets the command, then the file as the benchmark printed it (its first line is the machine
line), so a doc's benchmark figures come from a saved run, never typed. Missing markers or a missing
output file are one line and exit 2, the doc untouched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import UserError, run_cli  # noqa: E402
from common.io import replace_between_markers  # noqa: E402


def insert(doc: str | Path, name: str, output: str | Path, command: str) -> None:
    """Write ``output``'s text (and the command that made it) into ``doc``'s ``name`` block."""
    if not Path(output).is_file():
        raise UserError(f"benchmark output {output} does not exist; run the benchmark with `| tee {output}` first")
    body = Path(output).read_text(encoding="utf-8").strip("\n")
    text = f"Command: `{command}` (output saved in `{Path(output).as_posix()}`)\n\n{body}"
    if not replace_between_markers(doc, f"<!-- {name}:begin -->", f"<!-- {name}:end -->", text):
        raise UserError(f"{doc} has no <!-- {name}:begin --> / <!-- {name}:end --> markers; add them where the "
                        "table belongs")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("doc", help="markdown file holding the markers")
    p.add_argument("name", help="block name: the markers are <!-- NAME:begin --> and <!-- NAME:end -->")
    p.add_argument("output", help="the benchmark's saved output (markdown)")
    p.add_argument("--command", required=True, help="the command that produced the output")
    args = p.parse_args(argv)
    insert(args.doc, args.name, args.output, args.command)
    print(f"wrote the {args.name} block of {args.doc} from {args.output}")


if __name__ == "__main__":
    run_cli(main)
