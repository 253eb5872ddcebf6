"""Unit importance per class: ``importance[i, c] = |W[c, i]| · mean(z_i over images of class c)``
(docs/metrics.md), with ``W`` the linear probe's weight (C, n) and ``z`` the k-sparse codes (N, n)."""

from __future__ import annotations

import torch
from torch import Tensor


def class_mean_codes(codes: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean code of each class, float64 sums: (N, n) codes, (N,) labels → (C, n).

    A class without images gets a row of NaN (its mean is undefined)."""
    codes = codes.double()
    sums = codes.new_zeros(num_classes, codes.shape[1]).index_add_(0, labels, codes)
    counts = torch.bincount(labels, minlength=num_classes).double()
    return sums / counts.unsqueeze(1)


def importance(classifier_weight: Tensor, class_means: Tensor) -> Tensor:
    """``importance[i, c] = |W[c, i]| · class_means[c, i]``: (C, n) weight and means → (n, C), float64."""
    if classifier_weight.shape != class_means.shape:
        raise ValueError(f"weight {tuple(classifier_weight.shape)} and class means "
                         f"{tuple(class_means.shape)} must both be (classes, units)")
    return (classifier_weight.double().abs() * class_means.double()).t().contiguous()


def top_units(scores: Tensor, top: int) -> Tensor:
    """Indices of the ``top`` highest-scoring units per class: (n, C) scores → (C, top), best first.

    Ties go to the lower unit index, so the ranking is reproducible."""
    order = torch.argsort(-scores.t(), dim=1, stable=True)
    return order[:, :top]
