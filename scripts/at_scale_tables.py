"""The benchmark tables of docs/at_scale.md, written from the benchmarks' JSON results.

    python scripts/at_scale_tables.py --update docs/at_scale.md --streaming docs/bench/streaming.json \
        --extraction docs/bench/extraction_shards.json docs/bench/extraction_shards_workers0.json

Each table replaces the text between its ``<!-- bench-streaming:begin -->`` /
``<!-- bench-extraction:begin -->`` marker and the matching ``:end`` marker, with the machine line
and the command that produced the JSON, so the page's figures come from the runs, never typed.
``--readme README.md`` (with both JSONs) also writes the README's two-line summary between
``<!-- at-scale:begin -->`` and ``<!-- at-scale:end -->``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.io import replace_between_markers  # noqa: E402
from scripts.make_results import md_table  # noqa: E402


def store_shape(r: dict) -> str | None:
    """'1,000,000 train rows × (2048 + 1280) float16 (a, b)' from the stores' index.json; None when
    the store is not on this machine."""
    a, widths, rows, dtype = r["args"], [], None, None
    for name in a["names"]:
        try:
            meta = json.loads((Path(a["store"]) / name / "train" / "index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        widths.append(str(meta["dim"]))
        rows, dtype = meta["rows"], meta["dtype"]
    return f"{rows:,} train rows × ({' + '.join(widths)}) {dtype} ({', '.join(a['names'])})"


def streaming_table(runs: list[dict], sources: list[str]) -> str:
    """Peak RSS per rank, steps/s, the stream / memory ratio and the row checks of bench_streaming."""
    r, source = runs[0], sources[0]
    a = r["args"]
    rows = []
    for phase, label in (("stream", f"streamed from the shard store, budget {a['memory_budget_mb']:g} MiB per rank"),
                         ("memory", f"in memory, {a['rows_in_memory']:,} rows loaded on every rank")):
        p = r[phase]
        rows.append([label, f"{p['steps_per_s']:.2f}",
                     ", ".join(f"{x['peak_rss_mb']:.0f}" for x in p["ranks"]),
                     ", ".join(f"{x['rss_at_train_start_mb']:.0f}" for x in p["ranks"]),
                     f"{p['wall_s']:.0f}"])
    body = md_table(["run (2 gloo ranks)", "steps/s (slower rank)", "peak RSS MiB (rank 0, 1)",
                   "RSS at training start MiB", "wall s"], rows)
    checks = (f"streamed / in-memory steps/s: **{r['throughput_ratio_stream_over_memory']:.3f}**; "
              f"rows re-read from every backbone's store match the batch: **{r['aligned']}** "
              f"({sum(x['batches_checked'] for x in r['stream']['ranks'])} batches checked); "
              f"ranks' rows disjoint within each epoch: **{r['ranks_disjoint_within_epoch']}**; "
              f"rows seen per rank: {', '.join(f'{n:,}' for n in r['rows_seen_per_rank'])}.")
    shape = store_shape(r)
    store = f"store `{a['store']}`: {shape}" if shape else f"store `{a['store']}` ({', '.join(a['names'])})"
    setup = f"{a['steps']} steps of {a['batch_size']} rows per rank, {a['n_latents']} latents, k = {a['k']}; {store}."
    return "\n\n".join([f"*{r['machine']}. From `{source}`.*", setup, body, checks])


def extraction_tables(results: list[dict], sources: list[str]) -> str:
    """One extraction table per benchmark run (e.g. with and without a decoding worker)."""
    return "\n\n".join(extraction_table(r, s) for r, s in zip(results, sources))


def extraction_table(r: dict, source: str) -> str:
    """Images/s with 1 and 2 processes and the kill-and-resume checks of bench_extraction_shards."""
    rows = [[f"{p['processes']}", f"{p['rows']:,}", f"{p['seconds']:.1f}", f"{p['images_per_s']:.0f}"]
            for p in (r["one_process"], r["two_processes"])]
    body = md_table(["processes", "rows written", "seconds", "images/s"], rows)
    k, c = r["kill"], r["checks"]
    resume = k["resume"]
    checks = (f"2 / 1 processes images/s: **{r['ratio_two_over_one']:.2f}×**. Killed after "
              f"{k['train_shards_before_kill']} of {k['train_shards']} train shards, then resumed: the resume "
              f"extracted {resume['rows']:,} rows; the resumed cache equals the unbroken one: "
              f"**{c['resumed_equals_unbroken']}**; the 2-process cache equals the 1-process one: "
              f"**{c['two_equals_one']}** ({r['shards']} shards compared by hash).")
    setup = (f"{r['images']:,} synthetic {r['side']}-px JPEGs, {r['arch']} (random weights), {r['shard_rows']} rows "
             f"per shard, batch {r['batch_size']}, {r['threads_per_process']} torch thread(s) and "
             f"{r['workers_per_process']} decoding worker(s) per process.")
    return "\n\n".join([f"*{r['machine']}. From `{source}`.*", setup, body, checks])


def readme_summary(streaming: dict, extractions: list[dict]) -> str:
    """Two lines for the README: the streamed run's memory and speed, the extraction's scaling and resume."""
    a, stream = streaming["args"], streaming["stream"]
    rows = sum(streaming["rows_seen_per_rank"])
    peak = max(x["peak_rss_mb"] for x in stream["ranks"])
    extraction = extractions[0]
    ratios = ", ".join(f"{r['ratio_two_over_one']:.2f}× with {r['workers_per_process']} decoding worker(s) per process"
                       for r in extractions)
    resumed = all(r["checks"]["resumed_equals_unbroken"] for r in extractions)
    shape = store_shape(streaming) or f"({', '.join(a['names'])})"
    return (f"- Streaming: the USAE trained {a['steps']} steps on 2 gloo ranks from a synthetic "
            f"store of {shape} with a {a['memory_budget_mb']:g} MiB budget: peak RSS {peak:.0f} MiB per "
            f"rank, {streaming['throughput_ratio_stream_over_memory']:.2f}× the steps/s of an in-memory subset, "
            f"{rows:,} rows seen, aligned across backbones: {streaming['aligned']}.\n"
            f"- Extraction of {extraction['images']:,} JPEGs, images/s of 2 processes over 1: {ratios}; "
            f"killed and resumed, the cache equals an unbroken run's: {resumed}.\n\n"
            f"*{streaming['machine']}; `python scripts/at_scale_tables.py` from `benchmarks/bench_streaming.py` and "
            f"`benchmarks/bench_extraction_shards.py` ([docs/at_scale.md](docs/at_scale.md)).*")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--update", required=True, help="the page to update (docs/at_scale.md)")
    p.add_argument("--streaming", default=None, help="bench_streaming.py --out JSON")
    p.add_argument("--extraction", nargs="+", default=None, help="bench_extraction_shards.py --out JSON(s)")
    p.add_argument("--readme", default=None, help="also write the README summary (needs both JSONs)")
    args = p.parse_args(argv)
    loaded = {}
    jobs = [("bench-streaming", [args.streaming] if args.streaming else None, streaming_table,
             "python benchmarks/bench_streaming.py --store ... --out {path}"),
            ("bench-extraction", args.extraction, extraction_tables,
             "python benchmarks/bench_extraction_shards.py --workers {workers} --out {path}")]
    for marker, paths, make, command in jobs:
        if not paths:
            continue
        results = []
        for path in paths:
            try:
                results.append(json.loads(Path(path).read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                print(f"error: cannot read {path} ({exc}); run: {command.format(path=path, workers=1)}",
                      file=sys.stderr)
                return 2
        loaded[marker] = results
        sources = [command.format(path=path, workers=r.get("workers_per_process")) for path, r in zip(paths, results)]
        if not replace_between_markers(args.update, f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->",
                                       make(results, sources)):
            print(f"error: {args.update} has no <!-- {marker}:begin --> ... :end --> block", file=sys.stderr)
            return 2
        print(f"{args.update}: {marker} table from {', '.join(paths)}")
    if args.readme:
        if len(loaded) < 2:
            print("error: --readme needs both --streaming and --extraction", file=sys.stderr)
            return 2
        summary = readme_summary(loaded["bench-streaming"][0], loaded["bench-extraction"])
        if not replace_between_markers(args.readme, "<!-- at-scale:begin -->", "<!-- at-scale:end -->", summary):
            print(f"error: {args.readme} has no <!-- at-scale:begin --> ... :end --> block", file=sys.stderr)
            return 2
        print(f"{args.readme}: at-scale summary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
