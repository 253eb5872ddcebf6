"""Interpretability of the Fashion-MNIST k-sparse autoencoder + linear probe.

``importance`` (which units each class relies on), ``attribution`` (feature overlays, occlusion),
``ablation`` (zeroing top units vs firing-strength-matched random units, judged by the probe
and, after decoding, by the raw-pixel probe), ``figures`` (matplotlib) and ``study``
(``KSparseStudy``, the ``analyze.py`` job that writes the report).
"""

from analysis.ksparse.ablation import (
    RANKINGS, ablate, ablation_study, decoder_side_ablation, draw_controls, matched_random_units, quantile_bins,
    ranking_scores)
from analysis.ksparse.artifacts import ProbedAutoencoder, load_probed_autoencoder
from analysis.ksparse.attribution import check_image, feature_overlay, occlusion_map
from analysis.ksparse.importance import class_mean_codes, importance, top_units

__all__ = [
    "ProbedAutoencoder", "load_probed_autoencoder", "class_mean_codes", "importance", "top_units",
    "check_image", "feature_overlay", "occlusion_map", "ablate", "ablation_study",
    "RANKINGS", "ranking_scores", "quantile_bins", "matched_random_units", "draw_controls", "decoder_side_ablation",
]
