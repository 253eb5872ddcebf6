"""Unit ablation: zero the top-ranked units of a class and watch a classifier, against matched controls.

With a linear probe, zeroing units lowers the class logit by exactly ``Σ W[c, i]·z_i``, which is the
importance score itself, so "top units hurt more than random ones" is nearly built in. Three checks
make the comparison fair (see docs/ksparse.md):

- the random controls are **matched on firing strength**: for each top unit, a unit drawn from the
  same quantile bin of the class-mean activation (not from every unit that fires once);
- the same ablation for several rankings side by side (``RANKINGS``: |W|·z̄, |W| alone, z̄ alone,
  signed W·z̄), each with its own matched controls;
- a judge **outside the probe** (``decoder_side_ablation``): zero the units, decode, and classify the
  reconstructions with a classifier that never saw codes (the raw-pixel probe).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

# ranking name → (definition, scores (n, C) from the probe weight W (C, n) and class means z̄ (C, n))
RANKINGS: dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {
    "importance": ("|W[c, i]| · mean(z_i | c)", lambda w, m: (w.abs() * m).t()),
    "abs_weight": ("|W[c, i]|", lambda w, m: w.abs().t()),
    "mean_code": ("mean(z_i | c)", lambda w, m: m.t()),
    "signed": ("W[c, i] · mean(z_i | c)", lambda w, m: (w * m).t()),
}


def ranking_scores(classifier_weight: Tensor, class_means: Tensor) -> dict[str, Tensor]:
    """Every ranking of ``RANKINGS``: (C, n) weight and class-mean codes → name → (n, C) float64."""
    w, m = classifier_weight.double(), class_means.double()
    return {name: score(w, m).contiguous() for name, (_, score) in RANKINGS.items()}


def quantile_bins(values: Tensor, pool: Tensor, bins: int) -> Tensor:
    """Bin index (n,) of each of ``values`` (n,) among ``bins`` quantile bins of ``values[pool]``
    (``pool``: a boolean mask (n,) of the units that define the quantiles); bin 0 = weakest."""
    edges = torch.quantile(values[pool].double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(values.double(), edges, right=True)


def matched_random_units(class_mean: Tensor, units: Tensor, fires: Tensor, bins: int,
                         generator: torch.Generator) -> tuple[Tensor, int]:
    """One control unit per unit of ``units`` (m,), drawn without replacement from the units that
    fire on the class (``fires``, (n,) bool) minus ``units``, in the same quantile bin of the
    class-mean activation ``class_mean`` (n,); where a bin has run dry, the nearest bin that has a
    unit left. Returns the control units (m,) and how many came from another bin."""
    bin_of = quantile_bins(class_mean, fires, bins)
    free = fires.clone()
    free[units] = False
    picked, moved = [], 0
    for unit in units.tolist():
        target = int(bin_of[unit])
        for distance in range(bins + 1):
            candidates = (free & ((bin_of - target).abs() == distance)).nonzero().flatten()
            if len(candidates):
                break
        if not len(candidates):
            break  # no unit left at all
        choice = candidates[torch.randint(len(candidates), (1,), generator=generator)].item()
        free[choice] = False
        picked.append(choice)
        moved += int(distance > 0)
    return torch.tensor(picked, dtype=torch.long), moved


@torch.no_grad()
def ablate(classifier: nn.Module, codes: Tensor, labels: Tensor, units: Tensor, target: int) -> dict[str, float]:
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


def _class_accuracy(classifier: nn.Module, inputs: Tensor, labels: Tensor, classes: int) -> list[float]:
    predictions = classifier(inputs).argmax(1)
    return [(predictions[labels == c] == c).double().mean().item() for c in range(classes)]


def draw_controls(class_means: Tensor, codes: Tensor, labels: Tensor, top: Tensor, seeds: Sequence[int],
                  bins: int) -> tuple[list[list[Tensor]], list[int]]:
    """Matched random units for every class and seed: ``controls[c][s]`` (≤ m,), and per class how
    many of all its draws left their bin. ``class_means`` (C, n) set the bins; a unit is a candidate
    for class c if it fires on at least one of its images in ``codes`` (N, n)."""
    controls, moved = [], []
    for c in range(top.shape[0]):
        fires = (codes[labels == c] > 0).any(0)
        draws, left = [], 0
        for seed in seeds:
            units, n_moved = matched_random_units(class_means[c], top[c], fires, bins,
                                                  torch.Generator().manual_seed(seed))
            draws.append(units)
            left += n_moved
        controls.append(draws)
        moved.append(left)
    return controls, moved


@torch.no_grad()
def ablation_study(classifier: nn.Module, codes: Tensor, labels: Tensor, top: Tensor, controls: list[list[Tensor]],
                   class_names: Sequence[str]) -> dict:
    """For each class c: ablate its top units ``top[c]`` (C, m) and each control draw
    ``controls[c][s]`` (see ``draw_controls``), judged by ``classifier`` on ``codes`` (N, n).
    Returns a JSON-ready dict with per-class numbers and a ``summary`` of the means over classes."""
    classes = top.shape[0]
    predictions = classifier(codes).argmax(1)
    baseline = {"accuracy": (predictions == labels).double().mean().item(),
                "class_accuracy": _class_accuracy(classifier, codes, labels, classes)}
    per_class, wins = [], 0
    for c in range(classes):
        top_result = ablate(classifier, codes, labels, top[c], c)
        runs = [ablate(classifier, codes, labels, units, c) for units in controls[c]]
        random_result = {}
        for key in ("accuracy", "class_accuracy", "logit_drop"):
            random_result[f"{key}_mean"], random_result[f"{key}_std"] = _mean_std([r[key] for r in runs])
        random_result["units"] = min(len(u) for u in controls[c])
        hurts_more = top_result["logit_drop"] > random_result["logit_drop_mean"]
        wins += int(hurts_more)
        per_class.append({"class": c, "name": class_names[c], "top_units": top[c].tolist(),
                          "top": top_result, "random": random_result, "top_hurts_more": hurts_more})
    drop = lambda e, key: baseline["class_accuracy"][e["class"]] - key  # noqa: E731
    summary = {
        "top_logit_drop_mean": _mean_std([e["top"]["logit_drop"] for e in per_class])[0],
        "random_logit_drop_mean": _mean_std([e["random"]["logit_drop_mean"] for e in per_class])[0],
        "top_class_accuracy_drop_mean": _mean_std([drop(e, e["top"]["class_accuracy"]) for e in per_class])[0],
        "random_class_accuracy_drop_mean": _mean_std(
            [drop(e, e["random"]["class_accuracy_mean"]) for e in per_class])[0],
        "classes_where_top_hurts_more": wins,
        "classes": len(per_class),
    }
    return {"units_per_class": int(top.shape[1]), "baseline": baseline, "per_class": per_class,
            "summary": summary}


@torch.no_grad()
def decoder_side_ablation(decoder: nn.Module, pixel_classifier: nn.Module, codes: Tensor, labels: Tensor,
                          top: Tensor, controls: list[list[Tensor]], class_names: Sequence[str]) -> dict:
    """The ablation judged outside the probe: zero units in the autoencoder's codes (N, n), decode,
    and classify the reconstructions (N, input_dim) with ``pixel_classifier`` (trained on raw
    pixels, never on codes). Only the images of class c are decoded for class c. Returns per class
    the class accuracy on the intact reconstructions, with the top units zeroed, and with each
    control draw zeroed (mean ± std), and a ``summary`` of the accuracy drops averaged over classes."""
    per_class, top_drops, random_drops, wins = [], [], [], 0
    for c in range(top.shape[0]):
        z = codes[labels == c]

        def class_accuracy(units: Tensor | None) -> float:
            ablated = z.clone()
            if units is not None:
                ablated[:, units] = 0
            return (pixel_classifier(decoder(ablated)).argmax(1) == c).double().mean().item()

        intact = class_accuracy(None)
        top_acc = class_accuracy(top[c])
        random_mean, random_std = _mean_std([class_accuracy(units) for units in controls[c]])
        top_drops.append(intact - top_acc)
        random_drops.append(intact - random_mean)
        wins += int(intact - top_acc > intact - random_mean)
        per_class.append({"class": c, "name": class_names[c], "intact_class_accuracy": intact,
                          "top_class_accuracy": top_acc, "random_class_accuracy_mean": random_mean,
                          "random_class_accuracy_std": random_std})
    return {"per_class": per_class, "summary": {
        "intact_class_accuracy_mean": _mean_std([e["intact_class_accuracy"] for e in per_class])[0],
        "top_class_accuracy_drop_mean": _mean_std(top_drops)[0],
        "random_class_accuracy_drop_mean": _mean_std(random_drops)[0],
        "classes_where_top_hurts_more": wins, "classes": len(per_class)}}
