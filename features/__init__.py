"""Backbone features: fast extraction and the on-disk activation cache."""

from features.activation_cache import ActivationCache, FeatureNormalizer
from features.extractor import FeatureExtractor, extract_features

__all__ = ["ActivationCache", "FeatureExtractor", "FeatureNormalizer", "extract_features"]
