"""The house plan holds: no package-level import cycle, no arrow pointing up a layer."""

from __future__ import annotations

from scripts.import_graph import package_edges, problems


def test_no_cycles_or_upward_imports():
    assert problems(package_edges()) == []


def test_checker_sees_a_cycle_and_an_upward_arrow():
    edges = {"common": {"callbacks": {"common/cli.py"}}, "callbacks": {"common": {"callbacks/x.py"}}}
    found = problems(edges)
    assert any(line.startswith("upward import common -> callbacks") for line in found)
    assert any("cycle" in line for line in found)
