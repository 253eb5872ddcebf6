"""Unit ablation: zero the most important units of a class and watch the probe, against random units.

The ranking is validated only if zeroing the top units of class c hurts class c more than zeroing
as many random units does; both numbers are reported, per class and averaged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


@torch.no_grad()
def ablate(classifier: nn.Linear, codes: Tensor, labels: Tensor, units: Tensor, target: int) -> dict[str, float]:
    """Zero ``units`` in every code (N, n) and report, against the intact codes:

    ``accuracy`` (all images, in [0, 1]), ``class_accuracy`` (images of ``target``), and
    ``logit_drop``: mean over images of ``target`` of (intact − ablated) ``target`` logit."""
    mask = labels == target
    intact = classifier(codes[mask])[:, target]
    ablated_codes = codes.clone()
    ablated_codes[:, units] = 0
    logits = classifier(ablated_codes)
    predictions = logits.argmax(1)
    return {
        "accuracy": (predictions == labels).double().mean().item(),
        "class_accuracy": (predictions[mask] == target).double().mean().item(),
        "logit_drop": (intact.double() - logits[mask, target].double()).mean().item(),
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    return tensor.mean().item(), (tensor.std().item() if len(values) > 1 else 0.0)


@torch.no_grad()
def ablation_study(classifier: nn.Linear, codes: Tensor, labels: Tensor, top: Tensor,
                   seeds: Sequence[int], class_names: Sequence[str]) -> dict:
    """For each class c: ablate its top units ``top[c]`` (C, m), and, for each seed, as many random
    units drawn from the units that fire on at least one image of class c (the top ones excluded,
    so the control never zeroes silent units). Returns a JSON-ready dict with per-class numbers and
    a ``summary`` of the means over classes."""
    predictions = classifier(codes).argmax(1)
    baseline = {"accuracy": (predictions == labels).double().mean().item(),
                "class_accuracy": [(predictions[labels == c] == c).double().mean().item()
                                   for c in range(top.shape[0])]}
    per_class, top_drops, random_drops, top_acc, random_acc, wins = [], [], [], [], [], 0
    for c in range(top.shape[0]):
        units = top[c]
        fires = (codes[labels == c] > 0).any(0)
        fires[units] = False
        pool = fires.nonzero().flatten()
        m = min(len(units), len(pool))
        top_result = ablate(classifier, codes, labels, units, c)
        runs = []
        for seed in seeds:
            pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:m]]
            runs.append(ablate(classifier, codes, labels, pick, c))
        random_result = {}
        for key in ("accuracy", "class_accuracy", "logit_drop"):
            random_result[f"{key}_mean"], random_result[f"{key}_std"] = _mean_std([r[key] for r in runs])
        random_result["units"] = m
        random_result["pool_size"] = len(pool)
        hurts_more = top_result["logit_drop"] > random_result["logit_drop_mean"]
        wins += int(hurts_more)
        per_class.append({"class": c, "name": class_names[c], "top_units": units.tolist(),
                          "top": top_result, "random": random_result, "top_hurts_more": hurts_more})
        top_drops.append(top_result["logit_drop"])
        random_drops.append(random_result["logit_drop_mean"])
        top_acc.append(baseline["class_accuracy"][c] - top_result["class_accuracy"])
        random_acc.append(baseline["class_accuracy"][c] - random_result["class_accuracy_mean"])
    summary = {
        "top_logit_drop_mean": _mean_std(top_drops)[0],
        "random_logit_drop_mean": _mean_std(random_drops)[0],
        "top_class_accuracy_drop_mean": _mean_std(top_acc)[0],
        "random_class_accuracy_drop_mean": _mean_std(random_acc)[0],
        "classes_where_top_hurts_more": wins,
        "classes": len(per_class),
    }
    return {"units_per_class": int(top.shape[1]), "seeds": list(seeds), "baseline": baseline,
            "per_class": per_class, "summary": summary}
