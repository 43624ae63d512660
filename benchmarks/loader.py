"""Image loading speed: decoding a folder on the first pass, and serving training batches.

    python benchmarks/loader.py [--images 2000] [--size 64] [--repeats 5]
    python benchmarks/loader.py --folder ../shared/data/cifar10-train --size 32 --repeats 3

Writes a generated folder of PNG files to a temporary directory (or reads `--folder`, searched
recursively, such as the 50,000 CIFAR-10 JPEGs), then measures, several times each, alternating:
  - first pass: `load_images` (decode, fit, cache) against a plain loop of PIL open + numpy
    conversion + resize over the same files (the reference);
  - serving: one epoch of normalised, flipped batches from the uint8 cache, from the streaming
    reader (files decoded again), and from a torch DataLoader over a per-item Dataset on the same
    cache (the reference).
Prints median and spread (min..max) in images per second, and the ratios to the references, and
rewrites the loader section of docs/benchmarks.md. Streaming from tar shards, with workers, is
measured by benchmarks/stream.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixel_diffusion.data import IMAGE_SUFFIXES, DataConfig, load_images

from common import cpu_name


def write_folder(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, size + 16, size + 16, 3), dtype=np.uint8)
    for k in range(count):  # smooth-ish, compressible images, slightly larger than the target
        image = np.roll(base[k % 8], k, axis=1)
        Image.fromarray(image).save(folder / f"{k:05d}.png")


def reference_decode(folder: Path, size: int) -> int:
    n = 0
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as image:
            np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))
        n += 1
    return n


class _PerItem(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i].float() / 127.5 - 1
        return x.flip(-1) if torch.rand(()) < 0.5 else x


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(rates: list[float]) -> str:
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}..{max(rates):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="measure this folder of images instead of a generated one")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp)
        if args.folder is None:
            write_folder(folder, args.images, args.size)
        else:
            args.images = sum(1 for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        config = DataConfig(str(folder), image_size=args.size, flip=True)
        rates = {name: [] for name in ("first pass", "reference decode", "cached", "streaming", "DataLoader")}
        data = streamed = None
        for _ in range(args.repeats):
            seconds = timed(lambda: globals().__setitem__("_data", load_images(config, progress=False)))
            data = globals()["_data"]
            rates["first pass"].append(args.images / seconds)
            rates["reference decode"].append(args.images / timed(lambda: reference_decode(folder, args.size)))

            def epoch(source):
                n = 0
                for x, _ in source.batches(args.batch, generator=torch.Generator().manual_seed(0)):
                    n += len(x)
                return n

            served = len(data.train) // args.batch * args.batch
            rates["cached"].append(served / timed(lambda: epoch(data)))
            streamed = streamed or load_images(DataConfig(str(folder), image_size=args.size, flip=True, max_cache_bytes=0), progress=False)
            rates["streaming"].append(served / timed(lambda: epoch(streamed)))
            loader = torch.utils.data.DataLoader(_PerItem(data.images), batch_size=args.batch, shuffle=True, drop_last=True)
            rates["DataLoader"].append(served / timed(lambda: sum(len(x) for x in loader)))

    ratio_decode = statistics.median(rates["first pass"]) / statistics.median(rates["reference decode"])
    ratio_serve = statistics.median(rates["cached"]) / statistics.median(rates["DataLoader"])
    machine = f"{cpu_name()} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    title = "## Image loading (`benchmarks/loader.py`)" if args.folder is None else f"## Image loading: {args.folder.name}"
    what = (f"`python benchmarks/loader.py --images {args.images} --size {args.size} --repeats {args.repeats}` on {machine}: "
            f"{args.images} PNG files of {args.size + 16}x{args.size + 16} RGB, fitted to {args.size}x{args.size}"
            if args.folder is None else
            f"`python benchmarks/loader.py --folder {args.folder} --size {args.size} --repeats {args.repeats}` on {machine}: "
            f"the folder's {args.images} image files (read from the page cache after the first repetition)")
    lines = [
        title,
        "",
        f"{what}; batches of {args.batch} with random flips. Images per second, median (min..max) over the repetitions.",
        "",
        "| what | images / s |",
        "|---|---:|",
        f"| first pass: `load_images` (decode, crop, resize, cache) | {summary(rates['first pass'])} |",
        f"| reference: a plain PIL open + convert + resize loop | {summary(rates['reference decode'])} |",
        f"| serving from the uint8 cache | {summary(rates['cached'])} |",
        f"| serving while streaming (files decoded again) | {summary(rates['streaming'])} |",
        f"| reference: torch DataLoader over a per-item Dataset on the same cache | {summary(rates['DataLoader'])} |",
        "",
        f"First pass / reference decode: {ratio_decode:.2f}x. Cached serving / DataLoader: {ratio_serve:.1f}x.",
        "",
        "The first pass does more per file than the reference loop (EXIF orientation, centre crop, "
        "grayscale detection, bad-file checks) and runs once per run; every later epoch is served from "
        "the uint8 cache. A thread pool over the files was slower on this 2-core machine for images of "
        "this size (the decode is too short to release the interpreter for long), so decoding is serial.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    docs = args.docs.read_text() if args.docs.exists() else "# Benchmarks\n\n"
    start = docs.find(title)
    if start >= 0:
        end = docs.find("\n## ", start + 1)
        docs = docs[:start] + text + (docs[end + 1 :] if end >= 0 else "")
    else:
        docs = docs.rstrip() + "\n\n" + text
    args.docs.write_text(docs)


if __name__ == "__main__":
    main()
