"""Per-stage time table of a ``make demo`` run, from its output log or from its run folders.

    make demo 2>&1 | tee demo.log
    python scripts/stage_times.py demo.log                                 # one column
    python scripts/stage_times.py avx2=demo-avx2.log avx512=demo-avx512.log   # side by side
    python scripts/stage_times.py --runs runs --label "this machine"     # no log: from run folders
    python scripts/stage_times.py demo.log --out table.md --json times.json
    python scripts/stage_times.py avx2=demo-avx2.log --update docs/speed.md   # refresh the docs' table

From a log: each ``==== [HH:MM:SS] <stage>`` banner of the Makefile starts a stage, the next banner
ends it (the last one, ``... study done``, ends the run), so every stage is timed, training or not;
``[stage ...] done in N s`` lines (scripts/stage.py) and ``up to date ... skipped`` are noted. The
machine is the first ``machine:`` / ``start-up:`` line in the log. From run folders (``--runs``): a
training stage lasted from its ``config.yaml`` (written at start) to its ``results.json``; other
stages are not timed there. A stage that runs past midnight is handled (times only increase).
``--update FILE`` replaces the text between ``<!-- stage-times:begin -->`` and
``<!-- stage-times:end -->`` in FILE with the table, so the docs' numbers come from this command.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BANNER = re.compile(r"^==== \[(\d\d):(\d\d):(\d\d)\] (.+?)\s*$")
DONE = re.compile(r"^\[stage (\S+)\] (?:done in (\d+) s|FAILED)")
SKIPPED = re.compile(r"^\[stage (\S+)\] up to date")
MACHINE = re.compile(r"^(?:start-up: )?(machine: [^;]+(?:;[^;]+){1,4})")


def parse_log(text: str) -> dict:
    """``{"machine": str | None, "stages": [{"stage", "seconds", "note"}], "total_s"}`` of one log."""
    lines = re.split(r"[\r\n]+", text)
    machine, stages, last_t, day, ended = None, [], None, 0, False
    for line in lines:
        m = BANNER.match(line.strip())
        if m and ended:
            continue  # banners after "... done" (where to look) are not stages
        if m:
            t = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + day
            if last_t is not None and t < last_t:  # past midnight
                day += 86400
                t += 86400
            if stages:
                stages[-1]["seconds"] = t - stages[-1].pop("_start")
            last_t = t
            if re.search(r"\bdone\b", m[4]):  # the closing banner ends the run
                ended = True
                continue
            stages.append({"stage": m[4], "_start": t, "seconds": None, "note": ""})
            continue
        if machine is None and (mm := MACHINE.match(line.strip())):
            machine = mm[1].strip()
        if stages and (d := DONE.match(line.strip())):
            stages[-1]["note"] = f"train.py {d[2]} s" if d[2] else "FAILED"
        elif stages and SKIPPED.match(line.strip()):
            stages[-1]["note"] = "skipped (up to date)"
    if stages and "_start" in stages[-1]:
        stages[-1].pop("_start")
        stages[-1]["note"] = stages[-1]["note"] or "unfinished in this log"
    total = sum(s["seconds"] for s in stages if s["seconds"] is not None)
    return {"machine": machine, "stages": stages, "total_s": total}


def from_runs(root: Path) -> dict:
    """Training stages' durations from run folders: ``results.json`` mtime − ``config.yaml`` mtime."""
    stages = []
    for results in sorted(root.glob("*/main/results.json")):
        config = results.with_name("config.yaml")
        if config.exists():
            stages.append({"stage": results.parent.parent.name,
                           "seconds": round(results.stat().st_mtime - config.stat().st_mtime),
                           "note": "from run folder"})
    return {"machine": None, "stages": stages, "total_s": sum(s["seconds"] for s in stages)}


def table(columns: dict[str, dict]) -> str:
    """Markdown: one row per stage (in first-seen order), one seconds column per labelled run."""
    order: list[str] = []
    for col in columns.values():
        order += [s["stage"] for s in col["stages"] if s["stage"] not in order]
    labels = list(columns)
    lines = []
    for label, col in columns.items():
        lines.append(f"- **{label}**: {col['machine'] or 'machine line not in the log'}")
    lines += ["", "| stage | " + " | ".join(f"{label} (s)" for label in labels) + " |",
              "|---|" + "---|" * len(labels)]
    for stage in order:
        cells = []
        for label in labels:
            hit = next((s for s in columns[label]["stages"] if s["stage"] == stage), None)
            if hit is None or hit["seconds"] is None:
                cells.append("–" if hit is None else hit["note"])
            else:
                cells.append(f"{hit['seconds']:.0f}" + (f" ({hit['note']})" if "skipped" in hit["note"]
                                                        or "FAILED" in hit["note"] else ""))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{columns[l]['total_s'] / 60:.1f} min**" for l in labels) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="*", help="make demo logs, as LABEL=PATH or PATH (label: file name)")
    p.add_argument("--runs", default=None, help="a runs/ folder instead of a log")
    p.add_argument("--label", default=None, help="label of the --runs column")
    p.add_argument("--out", default=None, help="write the markdown table here too")
    p.add_argument("--json", default=None, help="write the parsed times here (JSON)")
    p.add_argument("--update", default=None, help="put the table between the stage-times markers of this file")
    p.add_argument("--note", default=None, help="a line printed above the table (e.g. how it was measured)")
    args = p.parse_args(argv)
    columns: dict[str, dict] = {}
    for item in args.logs:
        label, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = Path(path)
        if not path.is_file():
            print(f"error: log '{path}' not found; record one with: make demo 2>&1 | tee demo.log", file=sys.stderr)
            return 2
        columns[label or path.stem] = parse_log(path.read_text(encoding="utf-8", errors="replace"))
    if args.runs:
        columns[args.label or args.runs] = from_runs(Path(args.runs))
    if not columns:
        print("error: give a make demo log (make demo 2>&1 | tee demo.log) or --runs runs", file=sys.stderr)
        return 2
    text = (f"{args.note}\n\n" if args.note else "") + table(columns)
    print(text, end="")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common.io import atomic_write_text, replace_between_markers

    if args.out:
        atomic_write_text(Path(args.out), text)
    if args.update:
        begin, end = "<!-- stage-times:begin -->", "<!-- stage-times:end -->"
        if not replace_between_markers(args.update, begin, end, text):
            print(f"error: {args.update} has no {begin} ... {end} block", file=sys.stderr)
            return 2
    if args.json:
        Path(args.json).write_text(json.dumps(columns, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
