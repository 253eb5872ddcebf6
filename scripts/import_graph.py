"""Print the package-level import graph of the project and fail on a cycle or an upward arrow.

    python scripts/import_graph.py

Layers, top to bottom (an arrow may point sideways or down, never up; docs/architecture.md):
entry points (train.py, analyze.py, build_cache.py, benchmarks, scripts) → systems, datamodules,
callbacks, analysis → components, metrics, features → common.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: dict[str, int] = {
    "lightning_modules": 1, "datamodules": 1, "callbacks": 1, "analysis": 1,
    "components": 2, "metrics": 2, "features": 2,
    "common": 3,
}


def package_edges(root: Path = ROOT) -> dict[str, dict[str, set[str]]]:
    """``{importer package: {imported package: {file, ...}}}`` over the layered packages."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    target = name.split(".")[0]
                    if target in LAYERS and target != package:
                        edges[package][target].add(str(path.relative_to(root)))
    return edges


def problems(edges: dict[str, dict[str, set[str]]]) -> list[str]:
    """Upward arrows and package cycles, one line each (empty when the house is in order)."""
    found = [f"upward import {src} -> {dst} ({', '.join(sorted(files))})"
             for src, targets in edges.items() for dst, files in targets.items()
             if LAYERS[dst] < LAYERS[src]]

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, {}))
        return False

    for src, targets in edges.items():
        for dst in targets:
            if reaches(dst, src):
                found.append(f"cycle through {src} -> {dst}")
    return found


def main() -> int:
    edges = package_edges()
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            print(f"{src} -> {dst}")
    found = problems(edges)
    for line in found:
        print(f"error: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
