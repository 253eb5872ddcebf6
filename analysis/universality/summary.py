"""The headline numbers of the report: one row per quantity, USAE next to the independent SAEs."""

from __future__ import annotations

from typing import Iterable

SYSTEMS = ("usae", "independent")


def _mean(values: Iterable) -> float:
    v = [float(x) for x in values if x is not None and x == x]
    return sum(v) / len(v) if v else float("nan")


def headline_numbers(systems: dict, act_max: dict) -> dict:
    """system -> headline, from the per-system numbers of ``report.json`` (``systems``) and the
    activation-maximisation results (model -> [{latent, start, final}]). Correlations are averaged
    over model pairs."""
    out = {}
    for kind in SYSTEMS:
        s = systems[kind]
        corr = s["correlation"]
        out[kind] = {
            "r2_self_mean": s["r2"]["self_mean"], "r2_cross_mean": s["r2"]["cross_mean"],
            "n_dead": s["entropy"]["n_dead"], "dead_fraction": s["entropy"]["dead_fraction"],
            "share_universal": s["entropy"]["share_universal"], "share_specific": s["entropy"]["share_specific"],
            "universal_to_specific_ratio": s["entropy"]["universal_to_specific_ratio"],
            "corr_same_index_mean": _mean(c["same_index"]["mean"] for c in corr),
            "corr_hungarian_mean": _mean(c["hungarian_matched"]["mean"] for c in corr),
            "corr_null_shuffled_images_mean": _mean(c["null_shuffled_images"]["mean"] for c in corr),
            "corr_null_random_pairs_mean": _mean(c["null_random_pairs"]["mean"] for c in corr),
            "hungarian_identity_rate": _mean(c["hungarian_identity_rate"] for c in corr),
            "cofiring_iou_mean": s["feature_stats"]["cofiring_iou"]["mean"],
        }
    raised = [r["final"] > r["start"] for rows in act_max.values() for r in rows]
    out["usae"]["act_max_share_raised"] = sum(raised) / len(raised) if raised else float("nan")
    return out
