"""Interpretability of the Fashion-MNIST k-sparse autoencoder + linear probe (issue 3).

``importance`` (which units each class relies on), ``attribution`` (feature overlays, occlusion),
``ablation`` (zeroing top units vs random units), ``figures`` (matplotlib) and ``study``
(``KSparseStudy``, the ``analyze.py`` job that writes the report).
"""

from analysis.ksparse.ablation import ablate, ablation_study
from analysis.ksparse.artifacts import ProbedAutoencoder, load_probed_autoencoder
from analysis.ksparse.attribution import check_image, feature_overlay, occlusion_map
from analysis.ksparse.importance import class_mean_codes, importance, top_units

__all__ = [
    "ProbedAutoencoder", "load_probed_autoencoder", "class_mean_codes", "importance", "top_units",
    "check_image", "feature_overlay", "occlusion_map", "ablate", "ablation_study",
]
