"""Cluster labels for images that have none: k-means on downsampled pixels.

A class-conditional model draws far better samples early in training than an unconditional one
(docs/performance.md), because it no longer has to choose which mode of the data to draw while
it is still learning to draw. Images without labels get the same help from labels found in the
data itself (as self-guided diffusion does with learned features, Hu et al. 2023): the model is
trained on the k-means cluster of each image and samples by drawing a cluster in proportion to
its size, so the samples follow the data's distribution without anyone naming a class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import checkpoints

# Above this many points, mini-batch k-means (Sculley 2010): on 50,000 CIFAR-10 images it finds
# clusters within 2% of Lloyd's inertia in a seventh of the time.
MINI_BATCH_ABOVE = 10_000


def kmeans(points: Tensor, k: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """k-means on (N, D) points from k-means++ seeds (Arthur & Vassilvitskii 2007), scikit-learn's
    Lloyd iterations, or mini-batch updates for more than MINI_BATCH_ABOVE points:
    (assignment (N,) int64, centres (k, D) float64). Deterministic for a seed."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= the {n} points; got k={k}")
    x = points.detach().cpu().numpy()
    if n > MINI_BATCH_ABOVE:
        model = MiniBatchKMeans(k, n_init=1, batch_size=4096, random_state=seed).fit(x)
    else:
        model = KMeans(k, n_init=1, max_iter=300, tol=0.0, random_state=seed).fit(x)
    centres = torch.from_numpy(model.cluster_centers_).double()
    # Each point's nearest centre (what Lloyd's algorithm ends at; mini-batch k-means's own labels
    # lag its last update).
    return torch.cdist(points.double(), centres).argmin(1), centres


def pixel_features(images: Tensor, max_dims: int = 1024) -> Tensor:
    """(N, D) float features of uint8 (N, C, H, W) images: the pixels in [0, 1], averaged down to
    the largest of 32, 16 or 8 on a side with D = side * side * C at most `max_dims` (the layout,
    not the texture: 28x28 digits stay whole, colour images go to 16x16)."""
    x = images.float() / 255
    side = next((s for s in (32, 16, 8) if s * s * x.shape[1] <= max_dims), 8)
    if max(x.shape[-2:]) > side:
        x = torch.nn.functional.adaptive_avg_pool2d(x, side)
    return x.flatten(1)


def cluster_labels(features: Tensor, k: int, *, seed: int = 0) -> Tensor:
    """The k-means cluster (N,) of each row of `features`, numbered from the largest cluster down."""
    assignment = kmeans(features, k, seed=seed)[0]
    order = torch.argsort(torch.bincount(assignment, minlength=k), descending=True, stable=True)
    return torch.argsort(order)[assignment]


def draw_clusters(prior: list[float], n: int, *, seed: int) -> Tensor:
    """n clusters (int64) drawn with the probabilities `prior` by inverting its cumulative sum at
    uniform draws: sample i gets the same cluster for a seed whatever n is."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cumulative = torch.tensor(prior, dtype=torch.float64).cumsum(0)
    return torch.searchsorted(cumulative / cumulative[-1], u, right=True).clamp(max=len(prior) - 1)


def cluster_centres(features: Tensor, k: int, *, seed: int = 0) -> tuple[Tensor, list[float]]:
    """k-means centres (k, D) float64 of a sample's features, numbered from the largest cluster
    down, and each cluster's share of the sample: the clusters of a set too large to read whole,
    whose images get their labels from `nearest_cluster` as they are read."""
    assignment, centres = kmeans(features, k, seed=seed)
    counts = torch.bincount(assignment, minlength=k)
    order = torch.argsort(counts, descending=True, stable=True)
    return centres[order], (counts[order].double() / len(assignment)).tolist()


def nearest_cluster(images: Tensor, centres: Tensor) -> Tensor:
    """The cluster (B,) int64 of uint8 (B, C, H, W) images: the centre nearest their pixel features."""
    return torch.cdist(pixel_features(images, max_dims=1024).double(), centres).argmin(1)


def label_by_clusters(data, k: int, *, seed: int, sample: int, path: Path, write: bool, progress: bool = True):
    """The data labelled by its k-means clusters, and each cluster's share. Found once and kept in
    the run (clusters.json), so that a resumed run trains on the same labels: every item's
    cluster for a set read whole; for a stream, the centres found on a sample of
    `sample` images, each image labelled by its nearest centre as it is read. `data` is an
    `ImageData`; returns it relabelled, and each cluster's share of the training images."""
    from tqdm.auto import tqdm

    if k > len(data.train):
        raise ValueError(f"clusters={k} needs at least as many training images; the data has "
                         f"{len(data.train)} (set fewer clusters, or clusters=0)")
    saved = checkpoints.read_json(path) if path.exists() else {}
    whole = not data.streamed
    items = (np.arange(len(data)) if whole else
             np.sort(np.random.default_rng(seed).choice(data.train, min(len(data.train), sample), replace=False)))
    if saved.get("k") != k or len(saved.get("labels", [])) != (len(items) if whole else 0):
        # Pixel features a chunk at a time, so a set that streams from disk is never in memory whole.
        with tqdm(total=len(items) + 1, desc=f"finding {k} clusters" + ("" if whole else f" in a sample of {len(items):,}"),
                  disable=not progress) as bar:
            features = []
            for start in range(0, len(items), 1024):
                features.append(pixel_features(data.uint8(items[start : start + 1024])))
                bar.update(len(features[-1]))
            if whole:
                saved = {"k": k, "labels": cluster_labels(torch.cat(features), k, seed=seed).tolist()}
            else:
                centres, prior = cluster_centres(torch.cat(features), k, seed=seed)
                saved = {"k": k, "labels": [], "sample": len(items), "centres": centres.tolist(), "prior": prior}
            bar.update(1)
        if write:
            checkpoints.write_json(path, saved)
    if whole:
        labels = torch.tensor(saved["labels"], dtype=torch.long)
        counts = torch.bincount(labels[torch.as_tensor(data.train)], minlength=k)
        return dataclasses.replace(data, labels=labels, class_names=[]), (counts / counts.sum()).tolist()
    centres = torch.tensor(saved["centres"], dtype=torch.float64)
    return dataclasses.replace(data, labels=None, class_names=[], label_fn=lambda x: nearest_cluster(x, centres)), saved["prior"]
