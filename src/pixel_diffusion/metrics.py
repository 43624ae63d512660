"""Sample-quality metrics over features from any extractor (features/).

- FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to two feature sets,
  ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3,
  averaged over random subsets; reported as mean and standard deviation over the subsets.
- Precision and recall (Kynkaanniemi et al. 2019): the fraction of generated features inside the
  k-nearest-neighbour balls of the real ones, and the reverse.
- With a classifier: confidence (fraction of samples given some class with probability > 0.9),
  class balance (entropy of the predicted-class histogram over log K, 1 = uniform), and the
  accuracy of the requested class for class-conditional samples.
FID and KID are computed in float64; precision and recall in float32 on the features' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class FeatureStats:
    """Mean (D,) and covariance (D, D) of a feature set, float64, and how many features made them."""

    mean: np.ndarray
    covariance: np.ndarray
    count: int

    @classmethod
    def of(cls, features) -> FeatureStats:
        x = np.asarray(torch.as_tensor(features).double().cpu())
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"feature statistics need at least 2 feature vectors (N, D); got shape {x.shape}")
        return cls(x.mean(0), np.cov(x, rowvar=False), len(x))

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, mean=self.mean, covariance=self.covariance, count=np.int64(self.count))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        """Ours (mean, covariance, count) or the TTUR / pytorch-fid / clean-fid form (mu, sigma)."""
        with np.load(path, allow_pickle=False) as saved:
            if {"mu", "sigma"} <= set(saved.files):
                return cls(saved["mu"].astype(np.float64), saved["sigma"].astype(np.float64), int(saved.get("count", 0)))
            return cls(saved["mean"], saved["covariance"], int(saved["count"]))

    @staticmethod
    def in_file(path: Path) -> bool:
        """Whether an .npz holds feature statistics (rather than images)."""
        try:
            with np.load(path, allow_pickle=False) as saved:
                return {"mu", "sigma"} <= set(saved.files) or {"mean", "covariance"} <= set(saved.files)
        except (OSError, ValueError):
            return False


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two feature statistics. Tr((S_1 S_2)^(1/2)) is computed as the sum of square
    roots of the eigenvalues of the symmetric S_1^(1/2) S_2 S_1^(1/2), which are real and >= 0."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {a.mean.shape[0]} and {b.mean.shape[0]}")
    values, vectors = np.linalg.eigh(a.covariance)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T  # S_1^(1/2)
    middle = root @ b.covariance @ root
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    difference = a.mean - b.mean
    return float(difference @ difference + np.trace(a.covariance) + np.trace(b.covariance) - 2 * trace_sqrt)


def fid(real, fake) -> float:
    """FID between two feature sets (N, D) and (M, D)."""
    return frechet_distance(FeatureStats.of(real), FeatureStats.of(fake))


def _mmd2_unbiased(x: Tensor, y: Tensor) -> Tensor:
    d = x.shape[1]
    k_xx, k_yy, k_xy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    m, n = len(x), len(y)
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return sum_xx / (m * (m - 1)) + sum_yy / (n * (n - 1)) - 2 * k_xy.sum() / (m * n)


def kid(real, fake, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID as (mean, standard deviation) over `subsets` random subsets of min(subset_size, N, M)."""
    x, y = torch.as_tensor(real).double().cpu(), torch.as_tensor(fake).double().cpu()
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two feature sets (N, D) of one D; got {tuple(x.shape)} and {tuple(y.shape)}")
    size = min(subset_size, len(x), len(y))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features in each set; got {len(x)} and {len(y)}")
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack([
        _mmd2_unbiased(x[torch.randperm(len(x), generator=generator)[:size]], y[torch.randperm(len(y), generator=generator)[:size]])
        for _ in range(subsets)
    ])
    return float(values.mean()), float(values.std(unbiased=subsets > 1)) if subsets > 1 else 0.0


def _kth_neighbour_radius(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    radii = []
    for start in range(0, len(x), chunk):
        distances = torch.cdist(x[start : start + chunk], x)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # k + 1: the point itself is at 0
    return torch.cat(radii)


def _inside_any_ball(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    inside = []
    for start in range(0, len(points), chunk):
        distances = torch.cdist(points[start : start + chunk], centres)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def precision_recall(real, fake, *, k: int = 3, device="cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-nearest-neighbour balls, in
    float32 on `device`: the N x N distances of the reference set dominate the time."""
    x = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    y = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if min(len(x), len(y)) <= k:
        raise ValueError(f"precision and recall with k={k} need more than {k} features in each set")
    precision = _inside_any_ball(y, x, _kth_neighbour_radius(x, k)).double().mean()
    recall = _inside_any_ball(x, y, _kth_neighbour_radius(y, k)).double().mean()
    return float(precision), float(recall)


def classifier_scores(probabilities, requested=None, *, threshold: float = 0.9) -> dict[str, float]:
    """From class probabilities (N, K): confidence, class balance and, given the requested
    classes (N,), their accuracy."""
    p = torch.as_tensor(probabilities).double()
    top, predicted = p.max(dim=1)
    counts = torch.bincount(predicted, minlength=p.shape[1]).double()
    share = counts / counts.sum()
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    scores = {
        "confidence": float((top > threshold).double().mean()),
        "class_balance": float(entropy / np.log(p.shape[1])) if p.shape[1] > 1 else 1.0,
    }
    if requested is not None:
        scores["accuracy"] = float((predicted == torch.as_tensor(requested)).double().mean())
    return scores


# ---- evaluating a set of images against reference data ----------------------------------------


@dataclass
class Reference:
    """What samples are compared with: reference features (None for a statistics file, which
    gives FID only), their statistics, and the shape (H, W, C) of the reference images if known."""

    stats: FeatureStats
    features: np.ndarray | None = None
    image_shape: tuple[int, int, int] | None = None

    @classmethod
    def of(cls, features) -> Reference:
        return cls(FeatureStats.of(features), np.asarray(features))


def load_reference(extractor, data_config, cache_dir: Path, *, progress: bool = True) -> Reference:
    """Features and statistics of every image of a data source (training split), cached on disk
    under a key made of the source, its preparation and the extractor (its network, preprocessing
    and precision), so a second evaluation reads them back instead of extracting them again."""
    import hashlib
    import json

    from .data import image_fields, load_images

    key_text = json.dumps({"data": image_fields(data_config), "extractor": extractor.key}, sort_keys=True)
    path = Path(cache_dir) / f"{hashlib.sha256(key_text.encode()).hexdigest()[:24]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            if "covariance" in saved.files:
                stats = FeatureStats(saved["mean"], saved["covariance"], int(saved["count"]))
                return Reference(stats, saved["features"], tuple(int(n) for n in saved["image_shape"]))
            return Reference.of(saved["features"])  # written before statistics and shapes were kept
    data = load_images(data_config, progress=progress)
    chunks = [data.train[start : start + 10_000] for start in range(0, len(data.train), 10_000)]  # a stream never whole
    features = np.concatenate([extractor(data.uint8(chunk).permute(0, 2, 3, 1).numpy())[0].astype(np.float32)
                               for chunk in chunks])
    shape = (*data.size, data.channels)
    reference = Reference(FeatureStats.of(features), features, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, features=features, mean=reference.stats.mean, covariance=reference.stats.covariance,
             count=np.int64(len(features)), image_shape=np.array(shape), key=np.array(key_text))
    tmp.replace(path)
    return reference


def images_config(extractor, source: str, image_size: int | None = None):
    """How a source's images are read for an extractor: a classifier takes its own size and
    channels; the Inception any size (resized to 299 itself) unless `image_size` is given."""
    from .data import DataConfig

    config = getattr(extractor, "config", None)
    if config is not None:
        return DataConfig(source, image_size=config.image_size[0], channels=str(config.channels))
    return DataConfig(source, image_size=image_size)


def open_reference(extractor, source: str | None, cache_dir: Path, *, run_data=None, image_size: int | None = None,
                   progress: bool = True) -> tuple[Reference, str]:
    """The reference named by `source` (a data source, or an .npz of feature statistics: FID
    only) or else a run's training data, and its name."""
    import dataclasses

    if source and source.endswith(".npz") and FeatureStats.in_file(source):
        return Reference(FeatureStats.load(source)), source
    if source:
        config = images_config(extractor, source, image_size)
    elif run_data is not None:
        config = dataclasses.replace(run_data, flip=False, validation_fraction=0.0)
        if getattr(extractor, "config", None) is None and image_size:
            config = dataclasses.replace(config, image_size=image_size)
    else:
        raise ValueError("no reference: name a data source or a statistics file")
    return load_reference(extractor, config, cache_dir, progress=progress), config.source


def reference_features(extractor, data_config, cache_dir: Path, *, progress: bool = True) -> np.ndarray:
    """The cached features alone (`load_reference`)."""
    return load_reference(extractor, data_config, cache_dir, progress=progress).features


def evaluate_images(
    images: np.ndarray, reference: Reference | np.ndarray, extractor, *, requested=None, kid_subsets: int = 100,
    kid_subset_size: int = 1000, k: int = 3, with_precision_recall: bool = True, device="cpu",
) -> dict[str, float]:
    """All metrics of uint8 images (N, H, W, C) against a reference (or its features (M, D)); a
    reference of statistics alone gives FID only. Precision and recall take every reference
    feature's k-th neighbour (M x M distances: most of the time for a large reference);
    `with_precision_recall=False` leaves them out."""
    if not isinstance(reference, Reference):
        reference = Reference.of(reference)
    shape = reference.image_shape
    if shape is not None and shape[-1] != images.shape[-1]:
        kinds = {1: "grayscale (1 channel)", 3: "colour (3 channels)"}
        raise ValueError(f"the images are {kinds.get(images.shape[-1], images.shape[-1])} and the reference "
                         f"{kinds.get(shape[-1], shape[-1])}; compare images of one kind")
    features, probabilities = extractor(images)
    return evaluate_features(features, reference, probabilities=probabilities, requested=requested, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, k=k, with_precision_recall=with_precision_recall, device=device)


def evaluate_features(
    features: np.ndarray, reference: Reference | np.ndarray, *, probabilities=None, requested=None, kid_subsets: int = 100,
    kid_subset_size: int = 1000, k: int = 3, with_precision_recall: bool = True, device="cpu",
) -> dict[str, float]:
    """`evaluate_images` on features (N, D) already extracted (and the classifier's probabilities)."""
    if not isinstance(reference, Reference):
        reference = Reference.of(reference)
    scores = {"n": len(features), "fid": frechet_distance(reference.stats, FeatureStats.of(features))}
    if reference.features is not None:
        scores["kid"], scores["kid_std"] = kid(reference.features, features, subsets=kid_subsets, subset_size=kid_subset_size)
        if with_precision_recall:
            scores["precision"], scores["recall"] = precision_recall(reference.features, features, k=k, device=device)
    if probabilities is not None:
        scores.update(classifier_scores(probabilities, requested))
    return scores
