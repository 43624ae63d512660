"""What the quality benchmarks share: the MNIST digit classifier whose features give FID and KID,
the cached features of the reference data, scoring a set of uint8 samples against them, and how
close samples lie to the training images (a check for copies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixel_diffusion.data import DataConfig, load_builtin
from pixel_diffusion.features import load_extractor
from pixel_diffusion.features.classifier import train_classifier
from pixel_diffusion.metrics import evaluate_images, reference_features

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "pixel-diffusion"


class Scorer:
    """FID, KID, precision/recall and classifier confidence of uint8 (N, 28, 28, 1) samples against
    the whole of mnist-5k, in the features of a digit classifier (trained here once if missing)."""

    def __init__(self, classifier: Path = CACHE / "benchmark-classifier"):
        classifier = Path(classifier)
        if not (classifier / "classifier.json").exists():
            print(f"training the digit classifier into {classifier}")
            train_classifier(DataConfig("mnist-5k"), classifier)
        self.extractor = load_extractor("classifier", classifier=classifier)
        self.reference = reference_features(self.extractor, DataConfig("mnist-5k", validation_fraction=0.0), CACHE / "reference")

    def __call__(self, images) -> dict[str, float]:
        return evaluate_images(images, self.reference, self.extractor, kid_subset_size=min(1000, len(images)))



def nearest_training_distance(images: np.ndarray, exclude_self: bool = False) -> float:
    """Median pixel distance (L2, pixels in [0, 1]) from each uint8 (N, 28, 28, 1) image to its
    nearest mnist-5k training image; with `exclude_self` (the training images themselves) the
    image's own copy is skipped. A model that copies its training set scores far below the
    training images' own spacing."""
    train = torch.from_numpy(load_builtin("mnist-5k")[0]).reshape(5000, -1).float() / 255
    query = torch.from_numpy(np.asarray(images)).reshape(len(images), -1).float() / 255
    nearest = []
    for start in range(0, len(query), 500):  # (500, 5000) distances at a time
        d = torch.cdist(query[start:start + 500], train)
        if exclude_self:
            d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")
        nearest.append(d.min(1).values)
    return float(torch.cat(nearest).median())
