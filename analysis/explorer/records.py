"""Per-latent numbers of the concept explorer, computed for every latent at once from one split's codes.

Inputs are the (N, n) TopK codes of each model (scipy CSR, or dense tensors), the (N,) labels
and the (n, d_m) decoder dictionaries. Firing is ``code > threshold``. Products of firing patterns
use scipy.sparse (TopK codes hold ≤ k non-zeros per row, so a latent-by-latent co-firing matrix
costs ~N·k² operations instead of N·n²).

Definitions (the explorer's docs repeat them):

* firing entropy (``metrics.universality.FiringEntropy``, as in the report) and the tag: universal
  (H ≥ hi), specific (H ≤ lo), else intermediate;
* same-index r: Pearson r of two models' codes of latent f over the images (what
  ``analysis.universality.correlation.pearson_columns`` gives), NaN if f fires on fewer than
  ``min_activations`` images in either model;
* best independent match: for latent f of the USAE in model m, the latent g of model m's independent
  SAE whose codes have the highest Pearson r with f's codes (same images), and that r;
* co-firing IoU of models (a, b): images where f fires in both / images where it fires in either;
* dominant class and purity: the class with most firings of f (summed over models) and its share;
* similar latents by decoder: highest mean cosine of decoder atoms over models (atoms of different
  models are never compared: their dimensions differ); by co-activation: highest Jaccard index of
  the sets of images where the latents fire (in any model).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from metrics.universality import FiringEntropy

CHUNK = 512  # latents per block in the latent-by-latent products (caps memory at CHUNK·n floats)


def to_csr(codes: Tensor | np.ndarray | sparse.spmatrix) -> sparse.csr_matrix:
    """(N, n) codes as float32 CSR (zeros dropped)."""
    if sparse.issparse(codes):
        return sparse.csr_matrix(codes, dtype=np.float32)
    array = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    return sparse.csr_matrix(array.astype(np.float32, copy=False))


def fires_matrix(codes: sparse.csr_matrix, threshold: float) -> sparse.csc_matrix:
    """(N, n) float32 0/1 CSC: where each latent fires (code > threshold)."""
    fires = codes.copy()
    fires.data = (fires.data > threshold).astype(np.float32)
    fires.eliminate_zeros()
    return fires.tocsc()


def top_images(codes: Tensor | np.ndarray | sparse.spmatrix, count: int,
               threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` images with the highest code of every latent: (n, count) image rows and codes,
    best first, ties to the lower row; slots where the latent does not fire (code ≤ threshold) get
    row -1 and code NaN. Sparse: one sort of the non-zeros by (latent, −code, row)."""
    csc = to_csr(codes).tocsc()
    n = csc.shape[1]
    cols = np.repeat(np.arange(n), np.diff(csc.indptr))
    keep = csc.data > threshold
    vals, rows, cols = csc.data[keep].astype(np.float64), csc.indices[keep], cols[keep]
    order = np.lexsort((rows, -vals, cols))
    vals, rows, cols = vals[order], rows[order], cols[order]
    rank = np.arange(cols.size) - np.searchsorted(cols, np.arange(n))[cols]
    sel = rank < count
    out_rows = np.full((n, count), -1, dtype=np.int64)
    out_vals = np.full((n, count), np.nan)
    out_rows[cols[sel], rank[sel]] = rows[sel]
    out_vals[cols[sel], rank[sel]] = vals[sel]
    return out_rows, out_vals


def histograms(codes: sparse.csr_matrix, threshold: float, upper: np.ndarray, bins: int) -> np.ndarray:
    """(n, bins) counts of each latent's firing codes over ``bins`` equal bins on
    (threshold, upper[f]]; ``upper`` (n,) is the latent's largest code (over models, so bins match)."""
    csc = codes.tocsc()
    cols = np.repeat(np.arange(csc.shape[1]), np.diff(csc.indptr))
    keep = csc.data > threshold
    values, cols = csc.data[keep].astype(np.float64), cols[keep]
    width = np.maximum(upper[cols] - threshold, 1e-12)
    b = np.clip(np.floor((values - threshold) / width * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(cols * bins + b, minlength=csc.shape[1] * bins).reshape(csc.shape[1], bins)


def class_counts(fires: sparse.csc_matrix, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, C) int64: on how many images of each class each latent fires."""
    onehot = sparse.csr_matrix((np.ones(len(labels), np.float32), (np.arange(len(labels)), labels)),
                               shape=(len(labels), n_classes))
    return np.rint((fires.T @ onehot).toarray()).astype(np.int64)


def pair_iou(fires_a: sparse.csc_matrix, fires_b: sparse.csc_matrix) -> np.ndarray:
    """(n,) co-firing IoU of each latent between two models; NaN where it fires in neither."""
    inter = np.asarray(fires_a.multiply(fires_b).sum(0)).ravel()
    union = np.asarray(fires_a.sum(0)).ravel() + np.asarray(fires_b.sum(0)).ravel() - inter
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def _column_moments(m: sparse.csc_matrix) -> tuple[np.ndarray, np.ndarray]:
    n = m.shape[0]
    mean = np.asarray(m.sum(0)).ravel() / n
    sq = np.asarray(m.multiply(m).sum(0)).ravel() / n
    return mean, np.sqrt(np.maximum(sq - mean ** 2, 0.0))


def same_index_r(a: sparse.spmatrix, b: sparse.spmatrix, eligible: np.ndarray) -> np.ndarray:
    """(n,) Pearson r over the rows between column f of ``a`` and column f of ``b`` (both (N, n)), for
    ``eligible`` (n,) bool columns, NaN elsewhere or where either is constant (what
    ``analysis.universality.correlation.pearson_columns`` gives, from sparse codes)."""
    a, b = a.tocsc().astype(np.float64), b.tocsc().astype(np.float64)
    mu_a, sd_a = _column_moments(a)
    mu_b, sd_b = _column_moments(b)
    cross = np.asarray(a.multiply(b).sum(0)).ravel() / a.shape[0]
    ok = eligible & (sd_a > 1e-12) & (sd_b > 1e-12)
    r = np.full(a.shape[1], np.nan)
    r[ok] = np.clip((cross[ok] - mu_a[ok] * mu_b[ok]) / (sd_a[ok] * sd_b[ok]), -1, 1)
    return r


def entropy_from_counts(counts: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Firing entropy (n,) (NaN for dead) and dead (n,) from (M, n) fire counts, by the report's metric
    (``metrics.universality.FiringEntropy``, its count state filled from the sparse codes)."""
    metric = FiringEntropy(counts.shape[1], counts.shape[0], threshold)
    metric.fire_counts = torch.from_numpy(counts.astype(np.float64))
    metric._update_count = 1  # the state is filled: compute() without its "update was never called" warning
    res = metric.compute()
    return res["entropy"].numpy().astype(np.float64) + 0.0, res["dead"].numpy().astype(bool)


def best_match(a: sparse.csr_matrix, b: sparse.csr_matrix, eligible_a: np.ndarray,
               eligible_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every column f of ``a`` (N, p): the column g of ``b`` (N, q) with the highest Pearson r over
    the rows, among ``eligible_b`` (q,) bool, and that r: (p,) int64 (-1: none) and (p,) float64
    (NaN where f is not ``eligible_a`` or no g is eligible). Sparse: r = (aᵀb/N − μ_a μ_b) / (σ_a σ_b)."""
    a, b = a.tocsc().astype(np.float64), b.tocsc().astype(np.float64)
    n_rows = a.shape[0]
    mu_a, sd_a = _column_moments(a)
    mu_b, sd_b = _column_moments(b)
    ok_b = eligible_b & (sd_b > 1e-12)
    best = np.full(a.shape[1], -1, dtype=np.int64)
    best_r = np.full(a.shape[1], np.nan)
    rows = np.flatnonzero(eligible_a & (sd_a > 1e-12))
    if not ok_b.any():
        return best, best_r
    bt = b.T.tocsr()
    for start in range(0, rows.size, CHUNK):
        f = rows[start:start + CHUNK]
        cross = (bt @ a[:, f]).T.toarray() / n_rows  # (chunk, q)
        r = (cross - mu_a[f, None] * mu_b[None, :]) / (sd_a[f, None] * np.where(ok_b, sd_b, 1.0)[None, :])
        r[:, ~ok_b] = -np.inf
        g = r.argmax(1)
        best[f], best_r[f] = g, np.clip(r[np.arange(f.size), g], -1, 1)
    return best, best_r


def similar_by_decoder(dictionaries: Sequence[Tensor], count: int, latents: np.ndarray,
                       device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """For each latent in ``latents``: the ``count`` other latents (among ``latents``) with the highest
    decoder-atom cosine averaged over models; (L, count) ids and cosines."""
    idx = torch.as_tensor(latents, dtype=torch.long)
    units = [torch.nn.functional.normalize(d.detach().float()[idx].to(device), dim=1) for d in dictionaries]
    count = min(count, max(0, len(latents) - 1))
    ids, vals = [], []
    for start in range(0, len(latents), CHUNK):
        sim = sum(u[start:start + CHUNK] @ u.T for u in units) / len(units)
        sim[torch.arange(sim.shape[0]), torch.arange(start, start + sim.shape[0])] = -float("inf")
        v, i = sim.topk(count, dim=1)
        ids.append(idx[i.cpu()].numpy())
        vals.append(v.cpu().numpy().astype(np.float64))
    if not ids:
        return np.zeros((0, count), np.int64), np.zeros((0, count))
    return np.concatenate(ids), np.concatenate(vals)


def similar_by_coactivation(fires_any: sparse.csc_matrix, count: int,
                            latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each latent in ``latents``: the ``count`` others (among ``latents``) with the highest Jaccard
    index of their firing sets ``fires_any`` (N, n) 0/1; (L, count) ids and indices."""
    sub = fires_any[:, latents].astype(np.float32).tocsc()
    sizes = np.asarray(sub.sum(0)).ravel()
    count = min(count, max(0, len(latents) - 1))
    subt = sub.T.tocsr()
    ids, vals = [], []
    for start in range(0, len(latents), CHUNK):
        stop = min(start + CHUNK, len(latents))
        inter = (subt[start:stop] @ sub).toarray()
        union = sizes[start:stop, None] + sizes[None, :] - inter
        jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        jac[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        part = np.argpartition(-jac, count - 1, axis=1)[:, :count] if 0 < count < jac.shape[1] else \
            np.tile(np.arange(jac.shape[1]), (jac.shape[0], 1))[:, :count]
        top = np.take_along_axis(part, np.argsort(-np.take_along_axis(jac, part, 1), axis=1, kind="stable"), 1)
        ids.append(latents[top])
        vals.append(np.take_along_axis(jac, top, 1))
    if not ids:
        return np.zeros((0, count), np.int64), np.zeros((0, count))
    return np.concatenate(ids), np.concatenate(vals)


@dataclass
class ModelRecords:
    """One model's per-latent arrays: fire counts (n,), mean firing code (n,), top images (n, K)
    rows/codes, histograms (n, bins), class counts (n, C), best independent match (n,) id and r."""

    fires: np.ndarray
    mean_code: np.ndarray
    top_rows: np.ndarray
    top_codes: np.ndarray
    hist: np.ndarray
    classes: np.ndarray
    match: np.ndarray | None = None
    match_r: np.ndarray | None = None


@dataclass
class UsaeRecords:
    """Every latent's explorer numbers for one USAE over one split (arrays indexed by latent id).

    entropy (n,) NaN for dead; dead (n,); tag (n,) str; hist_upper (n,) top of the histograms' range;
    same_index / iou: pair "a|b" -> (n,); decoder_cos: pair -> (n,) or None (dims differ);
    iou_all (n,) fires in every model / in any; dominant (n,) class, purity (n,);
    similar_decoder / similar_coact: (n_alive, S) ids and scores in ``alive`` order.
    """

    names: list[str]
    n_images: int
    entropy: np.ndarray
    dead: np.ndarray
    tag: np.ndarray
    models: dict[str, ModelRecords]
    hist_upper: np.ndarray
    same_index: dict[str, np.ndarray]
    iou: dict[str, np.ndarray]
    decoder_cos: dict[str, np.ndarray | None]
    iou_all: np.ndarray
    dominant: np.ndarray
    purity: np.ndarray
    alive: np.ndarray
    similar_decoder: tuple[np.ndarray, np.ndarray]
    similar_coact: tuple[np.ndarray, np.ndarray]


def pair_key(a: str, b: str) -> str:
    return f"{a}|{b}"


def tags(entropy: np.ndarray, dead: np.ndarray, fires: np.ndarray, names: Sequence[str], lo: float,
         hi: float) -> np.ndarray:
    """(n,) "universal" (H ≥ hi), "specific:<model>" (H ≤ lo; the model where it fires most),
    "intermediate", or "dead"."""
    h = np.nan_to_num(entropy, nan=-1.0)
    top_model = fires.argmax(0)
    out = np.array(["intermediate"] * entropy.size, dtype=object)
    for f in range(entropy.size):
        if dead[f]:
            out[f] = "dead"
        elif h[f] >= hi:
            out[f] = "universal"
        elif h[f] <= lo:
            out[f] = f"specific:{names[top_model[f]]}"
    return out


def usae_records(codes: Mapping[str, Tensor | sparse.spmatrix], labels: Tensor, n_classes: int,
                 dictionaries: Mapping[str, Tensor], threshold: float, lo: float, hi: float, min_activations: int,
                 n_top: int, bins: int, n_similar: int,
                 independent: Mapping[str, Tensor | sparse.spmatrix] | None = None,
                 device: str | torch.device = "cpu") -> UsaeRecords:
    """All explorer numbers of a USAE: ``codes`` model -> (N, n) codes (dense or CSR) in model order,
    ``labels`` (N,), ``dictionaries`` model -> (n, d_m) decoder atoms, ``independent`` model -> (N, n)
    codes of the independent SAEs (optional: the best-match columns)."""
    names = list(codes)
    csr = {m: to_csr(codes[m]) for m in names}
    fires = {m: fires_matrix(csr[m], threshold) for m in names}
    counts = np.stack([np.asarray(fires[m].sum(0)).ravel() for m in names]).astype(np.int64)
    h, dead = entropy_from_counts(counts, threshold)
    labels_np = labels.cpu().numpy().astype(np.int64)
    upper = np.max(np.stack([csr[m].max(0).toarray().ravel() for m in names]), 0).astype(np.float64)
    per_model = {}
    for j, m in enumerate(names):
        rows, top = top_images(csr[m], n_top, threshold)
        total = np.asarray(csr[m].multiply(fires[m].tocsr()).sum(0)).ravel()
        per_model[m] = ModelRecords(counts[j], np.where(counts[j] > 0, total / np.maximum(counts[j], 1), np.nan),
                                    rows, top, histograms(csr[m], threshold, upper, bins),
                                    class_counts(fires[m], labels_np, n_classes))
    if independent is not None:
        for m in names:
            ind = to_csr(independent[m])
            eligible_b = np.asarray(fires_matrix(ind, threshold).sum(0)).ravel() >= min_activations
            g, r = best_match(csr[m], ind, per_model[m].fires >= min_activations, eligible_b)
            per_model[m].match, per_model[m].match_r = g, r
    same, iou, cos = {}, {}, {}
    for a, b in combinations(names, 2):
        key = pair_key(a, b)
        eligible = (per_model[a].fires >= min_activations) & (per_model[b].fires >= min_activations)
        same[key], iou[key] = same_index_r(csr[a], csr[b], eligible), pair_iou(fires[a], fires[b])
        da, db = dictionaries[a].detach().float(), dictionaries[b].detach().float()
        cos[key] = (torch.nn.functional.cosine_similarity(da, db, dim=1).numpy().astype(np.float64)
                    if da.shape == db.shape else None)
    every, any_fire = fires[names[0]], fires[names[0]]
    for m in names[1:]:
        every, any_fire = every.multiply(fires[m]).tocsc(), any_fire.maximum(fires[m]).tocsc()
    n_every, n_any = np.asarray(every.sum(0)).ravel(), np.asarray(any_fire.sum(0)).ravel()
    iou_all = np.where(n_any > 0, n_every / np.maximum(n_any, 1), np.nan)
    total_classes = sum(per_model[m].classes for m in names)
    n_fire = total_classes.sum(1)
    dominant = total_classes.argmax(1)
    purity = np.where(n_fire > 0, total_classes.max(1) / np.maximum(n_fire, 1), np.nan)
    alive = np.flatnonzero(~dead)
    return UsaeRecords(
        names=names, n_images=int(labels_np.size), entropy=h, dead=dead,
        tag=tags(h, dead, counts, names, lo, hi), models=per_model, hist_upper=upper, same_index=same,
        iou=iou, decoder_cos=cos, iou_all=iou_all, dominant=dominant, purity=purity, alive=alive,
        similar_decoder=similar_by_decoder([dictionaries[m] for m in names], n_similar, alive, device),
        similar_coact=similar_by_coactivation(any_fire, n_similar, alive))
