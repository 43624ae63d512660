"""What the quality benchmarks share: the MNIST digit classifier whose features give FID and KID,
the cached features of the reference data, and scoring a set of uint8 samples against them."""

from __future__ import annotations

from pathlib import Path

from pixel_diffusion.data import DataConfig
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

