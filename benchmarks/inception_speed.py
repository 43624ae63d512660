"""Speed of the FID Inception on this machine, and what each faster setting costs in FID.

    python benchmarks/inception_speed.py --repeats 5 --images 100      # speed: docs/performance_inception.md
    python benchmarks/inception_speed.py --agreement 5000              # FID under each setting, CIFAR-10

Speed: every setting extracts features of the same `--images` CIFAR-10 images (32x32, resized to
299 by the standard preprocessing) once per round, the settings alternating within a round so that
drift of the machine hits all alike; images per second as the median (min..max) over `--repeats`
rounds, and the ratio to the plain float32 network (BatchNorm as its own operation, the default
memory layout, batches of 50), timed in the same rounds. A compiled setting is compiled before
the first round.

Agreement: FIDs between sets of `--agreement` CIFAR-10 images each, computed from the features of
float32 and of bf16 (both folded and channels-last; float32 so equals the plain network to 1e-6): two disjoint real sets (the floor), and the
first against the second blurred (3x3 box) and with Gaussian noise (sigma 8 on 0..255), so that
the change is seen at small and at large FIDs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pixel_diffusion.data import DataConfig, load_images
from pixel_diffusion.features.inception import InceptionFeatures
from pixel_diffusion.metrics import fid

from common import CACHE, CIFAR, cpu_name

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "performance_inception.md"

# name -> InceptionFeatures options; the first is the reference of every ratio
SETTINGS = {
    "fp32, plain": dict(precision="fp32", channels_last=False, fold=False),
    "fp32, folded, channels-last": dict(precision="fp32"),
    "bf16, plain": dict(precision="bf16", channels_last=False, fold=False, float32_layers=0),
    "bf16, folded, channels-last": dict(precision="bf16", float32_layers=0),
    "bf16, folded, channels-last, first 5 layers float32": dict(precision="bf16", float32_layers=5),
    "bf16, folded, channels-last, first 7 layers float32": dict(precision="bf16", float32_layers=7),
    "bf16, folded, channels-last, first 5 layers float32, batch 100": dict(precision="bf16", batch_size=100, float32_layers=5),
    "bf16, folded, channels-last, first 5 layers float32, compiled": dict(precision="bf16", compiled=True, float32_layers=5),
}
AGREEMENT = ["fp32, folded, channels-last", "bf16, folded, channels-last", "bf16, folded, channels-last, first 5 layers float32",
             "bf16, folded, channels-last, first 7 layers float32"]  # the first equals fp32, plain to 1e-6


def cifar(n: int, seed: int = 0) -> np.ndarray:
    data = load_images(DataConfig(str(CIFAR), class_folders=True), progress=False)
    chosen = np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False))
    return data.uint8(chosen).permute(0, 2, 3, 1).numpy()


def extractor(options: dict) -> InceptionFeatures:
    options = dict(options)
    compiled = options.pop("compiled", False)
    features = InceptionFeatures(**options)
    if compiled:
        features.net = torch.compile(features.net)
    return features


def speed(images: np.ndarray, repeats: int) -> list[str]:
    extractors = {}
    for name, options in SETTINGS.items():
        start = time.perf_counter()
        extractors[name] = extractor(options)
        extractors[name](images[:50])  # warm up (and compile)
        print(f"{name}: ready in {time.perf_counter() - start:.1f} s", flush=True)
    rates = {name: [] for name in SETTINGS}
    for round_ in range(repeats):
        for name, features in extractors.items():
            start = time.perf_counter()
            features(images)
            rates[name].append(len(images) / (time.perf_counter() - start))
        print(f"round {round_ + 1}: " + ", ".join(f"{r[-1]:.1f}" for r in rates.values()), flush=True)
    reference = statistics.median(rates[next(iter(SETTINGS))])
    rows = ["| setting | images / s | ratio to fp32, plain |", "|---|---:|---:|"]
    for name, values in rates.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:.1f} ({min(values):.1f}..{max(values):.1f}) | {median / reference:.2f}x |")
    return rows


def blurred(images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def noisy(images: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(1).normal(0, 8, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def agreement(n: int) -> list[str]:
    real = cifar(2 * n)
    first, second = real[:n], real[n:]
    sets = {"real / real": second, "real / blurred": blurred(second), "real / noisy": noisy(second)}
    names = AGREEMENT
    scores = {}
    for name in names:
        saved = CACHE / "benchmark-agreement" / f"{name.replace(', ', '-').replace(' ', '-')}-{n}.npz"
        if not saved.exists():  # features of each setting are kept, so that a new setting costs only its own
            features = extractor(SETTINGS[name])
            saved.parent.mkdir(parents=True, exist_ok=True)
            np.savez(saved, anchor=features(first)[0], **{f"set{i}": features(images)[0] for i, images in enumerate(sets.values())})
        with np.load(saved) as kept:
            scores[name] = {pair: fid(kept["anchor"], kept[f"set{i}"]) for i, pair in enumerate(sets)}
        print(name, scores[name], flush=True)
    reference = scores[names[0]]
    rows = ["| setting | " + " | ".join(f"FID {pair}" for pair in sets) + " |", "|---" + "|---:" * len(sets) + "|"]
    for name in names:
        cells = [f"{scores[name][pair]:.3f} ({100 * (scores[name][pair] / reference[pair] - 1):+.2f}%)" for pair in sets]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=100, help="images per timed extraction (default: 100)")
    parser.add_argument("--agreement", type=int, default=0, help="images per set for the FID agreement (default: off)")
    args = parser.parse_args()
    if not CIFAR.is_dir():
        raise SystemExit(f"this benchmark reads CIFAR-10 from {CIFAR}")
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.agreement:
        title = f"## FID by setting\n\n`python benchmarks/inception_speed.py --agreement {args.agreement}` on {machine}"
        rows = agreement(args.agreement)
    else:
        title = (f"## Speed\n\n`python benchmarks/inception_speed.py --repeats {args.repeats} --images {args.images}` on "
                 f"{machine}: {args.images} CIFAR-10 images per extraction, median (min..max) over the rounds")
        rows = speed(cifar(args.images), args.repeats)
    text = title + "\n\n" + "\n".join(rows) + "\n"
    print(text)
    sections = DOCS.read_text().split("\n## ") if DOCS.exists() else ["# The FID Inception's speed\n"]
    heading = title.split("\n")[0][3:]
    sections = [s for s in sections if not s.startswith(heading)] + [text[3:]]
    DOCS.write_text("\n## ".join(s.rstrip("\n") + "\n" for s in sections).replace("\n\n## ", "\n## ").replace("\n## ", "\n\n## "))


if __name__ == "__main__":
    main()
