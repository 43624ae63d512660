"""Cluster labels for images that have none: k-means on downsampled pixels.

A class-conditional model draws far better samples early in training than an unconditional one
(docs/performance.md), because it no longer has to choose which mode of the data to draw while
it is still learning to draw. Images without labels get the same help from labels found in the
data itself (as self-guided diffusion does with learned features, Hu et al. 2023): the model is
trained on the k-means cluster of each image and samples by drawing a cluster in proportion to
its size, so the samples follow the data's distribution without anyone naming a class.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kmeans(points: Tensor, k: int, *, seed: int = 0, iterations: int = 100) -> tuple[Tensor, Tensor]:
    """Lloyd's algorithm from k-means++ seeds (Arthur & Vassilvitskii 2007) on (N, D) points:
    (assignment (N,) int64, centres (k, D)). Deterministic for a seed."""
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= the {n} points; got k={k}")
    points = points.double()
    generator = torch.Generator().manual_seed(seed)
    # k-means++: each new centre is a point drawn with probability proportional to its squared
    # distance from the nearest centre chosen so far.
    centres = points[torch.randint(n, (1,), generator=generator)]
    nearest = (points - centres).square().sum(1)
    for _ in range(1, k):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)  # all points already centres
        chosen = points[torch.multinomial(weights, 1, generator=generator)]
        centres = torch.cat([centres, chosen])
        nearest = torch.minimum(nearest, (points - chosen).square().sum(1))
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(1)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        # An emptied cluster keeps its centre.
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    return torch.cdist(points, centres).argmin(1), centres


def pixel_features(images: Tensor, side: int = 32) -> Tensor:
    """(N, D) float features of uint8 (N, C, H, W) images: the pixels in [0, 1], averaged down to
    at most side x side (the layout, not the texture)."""
    x = images.float() / 255
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
