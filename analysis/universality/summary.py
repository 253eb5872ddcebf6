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
    over model pairs; in each pair every correlation number is over the same latents ("alive in
    both", ``corr_n_latents``), the "alive in each" matching is the labelled second set. Dead
    fractions per model: ``never_fraction/<model>`` (never fires), ``rare_fraction/<model>`` (fires
    on fewer than min_activations images); shares are over the ``n_alive`` alive latents."""
    out = {}
    for kind in SYSTEMS:
        s = systems[kind]
        corr = s["correlation"]
        firing = s["feature_stats"].get("firing", {})
        out[kind] = {
            "r2_self_mean": s["r2"]["self_mean"], "r2_cross_mean": s["r2"]["cross_mean"],
            **{f"r2/{k}": v for k, v in s["r2"]["entries"].items()},
            **{f"never_fraction/{m}": f["never_fraction"] for m, f in firing.items()},
            **{f"rare_fraction/{m}": f["rare_fraction"] for m, f in firing.items()},
            "rare_fraction_max": max((f["rare_fraction"] for f in firing.values()), default=float("nan")),
            "n_dead": s["entropy"]["n_dead"], "dead_fraction": s["entropy"]["dead_fraction"],
            "n_rare": s["entropy"].get("n_rare"), "n_alive": s["entropy"].get("n_alive"),
            "share_universal": s["entropy"]["share_universal"], "share_specific": s["entropy"]["share_specific"],
            "universal_to_specific_ratio": s["entropy"]["universal_to_specific_ratio"],
            "corr_same_index_mean": _mean(c["same_index"]["mean"] for c in corr),
            "corr_hungarian_mean": _mean(c["hungarian_matched"]["mean"] for c in corr),
            "corr_null_shuffled_images_mean": _mean(c["null_shuffled_images"]["mean"] for c in corr),
            "corr_null_random_pairs_mean": _mean(c["null_random_pairs"]["mean"] for c in corr),
            "hungarian_identity_rate": _mean(c["hungarian_identity_rate"] for c in corr),
            "corr_n_latents": _mean(c.get("n_latents_set") for c in corr),
            "corr_each_hungarian_mean": _mean(c["alive_each"]["hungarian_matched"]["mean"] for c in corr if "alive_each" in c),
            "corr_each_null_shuffled_images_mean": _mean(c["alive_each"]["null_shuffled_images"]["mean"]
                                                         for c in corr if "alive_each" in c),
            "corr_each_n_pairs": _mean(c["alive_each"]["n_pairs"] for c in corr if "alive_each" in c),
            "cofiring_iou_mean": s["feature_stats"]["cofiring_iou"]["mean"],
        }
    raised = [r["final"] > r["start"] for rows in act_max.values() for r in rows]
    out["usae"]["act_max_share_raised"] = sum(raised) / len(raised) if raised else float("nan")
    return out
