"""Universality analysis of a Universal SAE against independent SAEs (Thasarathan et al., ICML 2025,
"Universal Sparse Autoencoders"), and the study report that ``analyze.py`` writes.

One module per job: ``codes`` (codes over a split), ``entropy``, ``r2``, ``correlation``, ``stats``,
``top_images``, ``activation_max``, ``feature_model`` (backbone → features → SAE pre-activation),
``side_by_side``, ``report`` (HTML + JSON, atomic), ``wandb_export``, ``inputs`` (loading and checks)
and ``study`` (``UniversalityStudy``, the ``Analysis`` that ties them together).
"""
