"""What the quality benchmarks share: a classifier per data set whose features give FID and KID
(trained here once if missing), the cached features of the reference data, scoring a set of
uint8 samples against them, real images for the floor of every measure, and how close samples
lie to the training images (a check for copies)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from pixel_diffusion.data import DataConfig, fit_image, load_images
from pixel_diffusion.features import load_extractor
from pixel_diffusion.features.classifier import train_classifier
from pixel_diffusion.metrics import evaluate_features, evaluate_images, load_reference, reference_features

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "pixel-diffusion"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-train"
TINY_IMAGENET = ROOT.parent / "shared" / "data" / "tiny-imagenet-100"


@dataclass(frozen=True)
class Dataset:
    """A benchmark's data: where it is, and how its classifier is trained."""

    data: DataConfig
    classifier: Path
    epochs: int = 8
    flip: bool = False
    classifier_size: int | None = None  # the classifier's side when it works on averaged-down images


DATASETS = {
    "mnist": Dataset(DataConfig("mnist-5k"), CACHE / "benchmark-classifier"),
    # 10 epochs with flips: 45,000 training images, 5,000 held out (accuracy in docs/metrics.md).
    "cifar10": Dataset(DataConfig(str(CIFAR), class_folders=True), CACHE / "cifar10-classifier", epochs=10, flip=True),
    # 50,000 64x64 photos of 100 classes in ten tar shards, decoded into memory (614 MiB) for scoring;
    # the classifier sees them averaged down to 32x32 (at 64x64 it would take 2.5 hours here).
    "tiny-imagenet-100": Dataset(DataConfig(str(TINY_IMAGENET / "train-{0000..0009}.tar"), stream="no"),
                                 CACHE / "tiny-imagenet-100-classifier", epochs=8, flip=True, classifier_size=32),
}


class Scorer:
    """FID, KID, precision/recall and classifier confidence of uint8 (N, H, W, C) samples against
    the whole of a data set, in the features of a classifier trained on it (mnist: mnist-5k;
    cifar10: the 50,000 CIFAR-10 training images). Samples at a whole multiple of the data's size
    (a 64x64 recipe trained on CIFAR-10 upscaled, Tiny ImageNet for its 32x32 classifier) are averaged
    down to it first."""

    def __init__(self, dataset: str = "mnist"):
        self.dataset = DATASETS[dataset]
        classifier = self.dataset.classifier
        if not (classifier / "classifier.json").exists():
            print(f"training the {dataset} classifier into {classifier}")
            train_classifier(self.classifier_data, classifier, epochs=self.dataset.epochs, flip=self.dataset.flip)
        self.extractor = load_extractor("classifier", classifier=classifier)
        self.reference = reference_features(self.extractor, self.reference_config, CACHE / "reference")

    @property
    def classifier_data(self) -> DataConfig:
        size = self.dataset.classifier_size
        return self.dataset.data if size is None else replace(self.dataset.data, image_size=size)

    @property
    def reference_config(self) -> DataConfig:
        return replace(self.classifier_data, validation_fraction=0.0)

    def __call__(self, images, with_precision_recall: bool = True) -> dict[str, float]:
        images = np.asarray(images)
        if self.dataset.classifier_size is not None:  # resized as the reference images were
            fitted = [fit_image(image, self.classifier_data) for image in images]  # a grey image comes back 1-channel
            images = np.stack([np.repeat(f, images.shape[-1] // f.shape[-1], -1) for f in fitted])
        images = self.to_data_size(images)
        return evaluate_images(images, self.reference, self.extractor, kid_subset_size=min(1000, len(images)),
                               with_precision_recall=with_precision_recall)

    def to_data_size(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, k H, k W, C) -> (N, H, W, C), the mean of each k x k block, rounded."""
        size = self.extractor.config.image_size
        k = images.shape[1] // size[0]
        if k <= 1 or images.shape[1:3] != (k * size[0], k * size[1]):
            return images
        n, _, _, c = images.shape
        blocks = images.reshape(n, size[0], k, size[1], k, c).astype(np.float32)
        return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)

    def real(self, n: int, seed: int = 0) -> np.ndarray:
        """n training images (N, H, W, C) at their own size, drawn without replacement: the floor of
        every measure at n."""
        data = load_images(replace(self.dataset.data, validation_fraction=0.0), progress=False)
        chosen = np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False))
        return data.uint8(chosen).permute(0, 2, 3, 1).numpy()


class InceptionScorer:
    """The standard FID and KID (the TF-Inception's pool features, docs/metrics.md) of uint8
    (N, H, W, C) samples against all of a data set's training images, whose features are cached
    where `evaluate` and benchmarks/inception_floor.py cache them; and the median distance from a
    sample's features to the nearest training image's (a copy lies far closer than the training
    images lie to each other: `real_nearest`)."""

    def __init__(self, dataset: str = "cifar10", precision: str = "auto"):
        self.extractor = load_extractor("inception", precision=precision)
        self.reference = load_reference(self.extractor, replace(DATASETS[dataset].data, validation_fraction=0.0),
                                        CACHE / "reference")
        self.features = torch.from_numpy(self.reference.features).float()  # (M, 2048), the training images in order

    def __call__(self, images) -> dict[str, float]:
        features, _ = self.extractor(np.asarray(images))
        scores = evaluate_features(features, self.reference, kid_subset_size=min(1000, len(images)), with_precision_recall=False)
        return {"inception_fid": scores["fid"], "inception_kid": scores["kid"],
                "inception_nearest": nearest_distance(torch.from_numpy(features).float(), self.features)}

    def real_nearest(self, n: int) -> float:
        """The same distance for the first n training images, each to its nearest other one."""
        return nearest_distance(self.features[:n], self.features, exclude_self=True)


def training_images(dataset: str = "mnist") -> np.ndarray:
    """Every training image of a benchmark data set, uint8 (N, H, W, C)."""
    data = load_images(DATASETS[dataset].data, progress=False)
    return data.uint8(np.arange(len(data))).permute(0, 2, 3, 1).numpy()


def nearest_training_distance(images: np.ndarray, exclude_self: bool = False, dataset: str = "mnist") -> float:
    """Median pixel distance (L2 per pixel value in [0, 1], over all channels) from each uint8
    (N, H, W, C) image to its nearest training image; with `exclude_self` (the training images
    themselves) the image's own copy is skipped. A model that copies its training set scores far
    below the training images' own spacing."""
    train = torch.from_numpy(training_images(dataset)).reshape(-1, np.prod(images.shape[1:])).float() / 255
    query = torch.from_numpy(np.asarray(images)).reshape(len(images), -1).float() / 255
    return nearest_distance(query, train, exclude_self)


def nearest_distance(query: torch.Tensor, reference: torch.Tensor, exclude_self: bool = False) -> float:
    """Median L2 distance from each row of `query` (N, D) to its nearest row of `reference` (M, D);
    with `exclude_self`, query row i is reference row i and is skipped."""
    nearest = []
    for start in range(0, len(query), 500):  # (500, M) distances at a time
        d = torch.cdist(query[start:start + 500], reference)
        if exclude_self:
            d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")
        nearest.append(d.min(1).values)
    return float(torch.cat(nearest).median())


def cpu_name() -> str:
    """The processor's model name, for every figure a benchmark writes."""
    from pixel_diffusion.devices import processor

    return processor()
