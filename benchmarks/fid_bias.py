"""How the number of samples biases FID (and not KID): both between two disjoint halves of the
real mnist-5k images, in the features of the toolkit's MNIST classifier.

    python benchmarks/fid_bias.py [--classifier classifiers/mnist-5k] [--repeats 5]

Trains the classifier first if the folder holds none. Prints a table (median and min..max over
random splits) and rewrites the "Sample size" section of docs/metrics.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from pixel_diffusion.data import DataConfig, load_images
from pixel_diffusion.features import ClassifierFeatures, train_classifier
from pixel_diffusion.metrics import fid, kid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", type=Path, default=Path("classifiers/mnist-5k"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "metrics.md")
    args = parser.parse_args()
    if not (args.classifier / "classifier.json").exists():
        train_classifier(DataConfig("mnist-5k"), args.classifier)
    extractor = ClassifierFeatures(args.classifier)
    data = load_images(DataConfig("mnist-5k"), progress=False)
    features, _ = extractor(data.uint8(np.arange(len(data))).permute(0, 2, 3, 1).numpy())
    rows = []
    for n in (100, 250, 500, 1000, 2500):
        fids, kids = [], []
        for seed in range(args.repeats):
            order = np.random.default_rng(seed).permutation(len(features))
            a, b = features[order[:n]], features[order[n : 2 * n]]
            fids.append(fid(a, b))
            kids.append(kid(a, b, subsets=50, subset_size=min(n, 1000))[0])
        rows.append(f"| {n} | {statistics.median(fids):.3f} ({min(fids):.3f}..{max(fids):.3f}) | "
                    f"{statistics.median(kids):.5f} ({min(kids):.5f}..{max(kids):.5f}) |")
    table = "\n".join(["| images per set | FID between two real sets | KID between two real sets |", "|---:|---:|---:|", *rows])
    print(table)
    section = (
        "## Sample size\n\n"
        "FID is biased upward for finite samples: the covariance of n features is a noisy estimate, and\n"
        "the trace term does not average the noise away, so two sets drawn from the same distribution\n"
        "get an FID that shrinks roughly like 1/n. KID's estimator is unbiased: it scatters around 0 at\n"
        "every n. Compare FIDs only at equal n. Between two disjoint halves of the real mnist-5k images\n"
        f"(classifier features, {args.repeats} random splits, median and min..max; "
        "`python benchmarks/fid_bias.py`):\n\n" + table + "\n"
    )
    docs = args.docs.read_text()
    start = docs.find("## Sample size")
    end = docs.find("\n## ", start + 1)
    docs = (docs[:start] + section + (docs[end + 1 :] if end >= 0 else "")) if start >= 0 else docs.rstrip() + "\n\n" + section
    args.docs.write_text(docs)


if __name__ == "__main__":
    main()
