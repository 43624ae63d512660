"""Feature extractors for the metrics: `extractor(uint8 images (N, H, W, C)) -> (features (N, D),
class probabilities (N, K) or None)`, each with a `key` naming it for the reference cache."""

from pathlib import Path

from .classifier import ClassifierFeatures, train_classifier
from .inception import InceptionFeatures


def _classifier(classifier: Path | None, inception_weights: Path | None, device):
    if classifier is None:
        raise ValueError("the classifier extractor needs --classifier FOLDER (train one with pixel-diffusion train-classifier)")
    return ClassifierFeatures(classifier, device)


def _inception(classifier: Path | None, inception_weights: Path | None, device):
    return InceptionFeatures(inception_weights, device)


# name -> opener(classifier folder, Inception weights file, device): the choices of --extractor.
EXTRACTORS = {"classifier": _classifier, "inception": _inception}


def load_extractor(name: str, *, classifier: Path | None = None, inception_weights: Path | None = None, device="cpu"):
    """`classifier` (needs the folder train-classifier wrote) or `inception` (the FID weights)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; expected one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](classifier, inception_weights, device)


__all__ = ["EXTRACTORS", "ClassifierFeatures", "InceptionFeatures", "load_extractor", "train_classifier"]
