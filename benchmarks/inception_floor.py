"""The standard FID of real CIFAR-10 images against the training set: the floor of every CIFAR-10
figure at each sample count, and a check of the whole pipeline against the literature.

    python benchmarks/inception_floor.py                 # table to stdout and docs/metrics_cifar10_floor.md
    python benchmarks/inception_floor.py --counts 2000 5000 10000 --seeds 3

Features of all 50,000 images of ../shared/data/cifar10-train are extracted once by the standard
FID Inception (TF1 resize, `--precision`, cached under ~/.cache/pixel-diffusion/reference as
`evaluate` caches them). Then, for each count n, FID and KID of n images drawn from the set
(`--seeds` draws, median and min..max) against all 50,000 (the protocol of every table here:
samples against the whole training set), and of two disjoint halves of 25,000 against each other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from pixel_diffusion.data import DataConfig
from pixel_diffusion.features import load_extractor
from pixel_diffusion.metrics import FeatureStats, frechet_distance, kid, load_reference

from common import CACHE, CIFAR, ROOT, cpu_name

DOCS = ROOT / "docs" / "metrics_cifar10_floor.md"


def spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}..{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 5000, 10000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    if not CIFAR.is_dir():
        raise SystemExit(f"this benchmark reads CIFAR-10 from {CIFAR}")
    extractor = load_extractor("inception", precision=args.precision)
    start = time.perf_counter()
    reference = load_reference(extractor, DataConfig(str(CIFAR), class_folders=True, validation_fraction=0.0),
                               CACHE / "reference")
    print(f"features of {len(reference.features)} images in {time.perf_counter() - start:.0f} s (0 if cached)")
    features = reference.features
    rows = ["| real images | against | FID | KID |", "|---|---|---:|---:|"]
    for n in args.counts:
        fids, kids = [], []
        for seed in range(args.seeds):
            chosen = features[np.random.default_rng(seed).choice(len(features), n, replace=False)]
            fids.append(frechet_distance(reference.stats, FeatureStats.of(chosen)))
            kids.append(kid(features, chosen, subsets=100, subset_size=1000, seed=seed)[0])
        rows.append(f"| {n:,} drawn from the training set | all {len(features):,} | {spread(fids, 2)} | {spread(kids, 5)} |")
        print(rows[-1], flush=True)
    fids, kids = [], []
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(len(features))
        first, second = features[order[: len(order) // 2]], features[order[len(order) // 2 :]]
        fids.append(frechet_distance(FeatureStats.of(first), FeatureStats.of(second)))
        kids.append(kid(first, second, subsets=100, subset_size=1000, seed=seed)[0])
    half = len(features) // 2
    rows.append(f"| {half:,} (one half) | the other {half:,} | {spread(fids, 2)} | {spread(kids, 5)} |")
    command = "python benchmarks/inception_floor.py " + " ".join(sys.argv[1:])
    text = (f"<!-- written by: {command.strip()} -->\n`{command.strip()}` on {cpu_name()}; the Inception in "
            f"{extractor.precision}; {args.seeds} draws each, median (min..max).\n\n" + "\n".join(rows) + "\n")
    print(text)
    DOCS.write_text(text)


if __name__ == "__main__":
    main()
