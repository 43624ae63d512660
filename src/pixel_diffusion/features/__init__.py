"""Feature extractors for the metrics: `extractor(uint8 images (N, H, W, C)) -> (features (N, D),
class probabilities (N, K) or None)`, each with a `key` naming it for the reference cache."""

from .classifier import ClassifierFeatures, train_classifier

__all__ = ["ClassifierFeatures", "train_classifier"]
