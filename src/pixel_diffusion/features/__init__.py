"""Feature extractors for the metrics: `extractor(uint8 images (N, H, W, C)) -> (features (N, D),
class probabilities (N, K) or None)`, each with a `key` naming it for the reference cache."""

from pathlib import Path

from .classifier import ClassifierFeatures, train_classifier
from .inception import PRECISIONS, InceptionFeatures


def _classifier(classifier: Path | None, inception_weights: Path | None, device, precision: str):
    if classifier is None:
        raise ValueError("the classifier extractor needs --classifier FOLDER (train one with pixel-diffusion train-classifier)")
    return ClassifierFeatures(classifier, device)


def _inception(classifier: Path | None, inception_weights: Path | None, device, precision: str):
    return InceptionFeatures(inception_weights, device, preprocess="tf1", precision=precision)


def _inception_pytorch_fid(classifier: Path | None, inception_weights: Path | None, device, precision: str):
    return InceptionFeatures(inception_weights, device, preprocess="pytorch-fid", precision=precision)


# name -> opener(classifier folder, Inception weights file, device, precision): the choices of --extractor.
EXTRACTORS = {
    "classifier": _classifier,
    "inception": _inception,  # the standard FID: the reference code's resize and scaling
    "inception-pytorch-fid": _inception_pytorch_fid,  # pytorch-fid's resize: not comparable with published FIDs
}


def load_extractor(name: str, *, classifier: Path | None = None, inception_weights: Path | None = None, device="cpu",
                   precision: str = "auto"):
    """`classifier` (needs the folder train-classifier wrote), `inception` (the standard FID
    Inception) or `inception-pytorch-fid`; `precision` (auto, fp32, bf16) is the Inception's."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; expected one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](classifier, inception_weights, device, precision)


__all__ = ["EXTRACTORS", "PRECISIONS", "ClassifierFeatures", "InceptionFeatures", "load_extractor", "train_classifier"]
