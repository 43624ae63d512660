"""Training data streamed from tar shards: delivery speed, the training step it feeds, memory, start.

    python benchmarks/stream.py                         # ../shared/data/tiny-imagenet-100, writes docs/data_stream.md
    python benchmarks/stream.py --batches 40 --repeats 1 --steps 10 --scales 1 2   # a quick look

On the Tiny ImageNet shards (50,000 64x64 JPEGs in ten shards), measured one at a time:
  - delivery: images/s of training batches (uint8 read, decoded, fitted, then normalised and
    flipped as the loop does) from the shards with 0, 1 and 2 decoding workers; from the same set
    decoded into memory first (`data.stream=no`, the cache), and from the same images as a folder
    of JPEG files read item by item with 2 workers (`data.stream=yes`);
  - the training step of the 64x64 recipe (`colour-64`, its batch) fed from the shards (default
    workers) and from the cache: images/s over `--steps` steps after the first few;
  - peak memory of a training process on the shards and on the cache, and on the shards named
    `--scales` times over (a list file repeating them): its resident set (VmHWM), and its decoding
    workers' own memory (USS, the pages they do not share with it), sampled every 0.5 s;
  - the time from `pixel-diffusion train` starting to its first step done (a 1-step run, its
    checkpoint included).
Median and spread (min..max) over `--repeats`; ratios against the cache in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from pixel_diffusion.data import DataConfig, load_images
from pixel_diffusion.loader import BatchLoader, StepItems

from common import ROOT, cpu_name

SHARDS = ROOT.parent / "shared" / "data" / "tiny-imagenet-100"
DOCS = ROOT / "docs" / "data_stream.md"
BATCH = 128


def spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def delivery(data, workers: int, batches: int) -> float:
    """Images/s of `batches` training batches, read ahead by `workers`, normalised and flipped."""
    items = StepItems(data, seed=0, batch_size=BATCH)
    generator = torch.Generator().manual_seed(0)
    start, n = time.perf_counter(), 0
    for _, batch in zip(range(batches), BatchLoader(items, 0, workers=workers)):
        n += len(data.serve_images(batch.images, generator=generator))
    return n / (time.perf_counter() - start)


def as_folder(shards: Path, folder: Path) -> None:
    """The shards' JPEGs as files, one folder per class (the same bytes)."""
    for path in sorted(shards.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    (folder / member.name).write_bytes(tar.extractfile(member).read())


TRAIN = """
import json, sys, threading, time
start = time.perf_counter()
import psutil
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.training import train
peak = {"main": 0, "workers": 0}
def watch():  # the training process's resident memory, and its workers' own (USS: pages not shared)
    me = psutil.Process()
    while True:
        peak["main"] = max(peak["main"], me.memory_info().rss)
        try:
            peak["workers"] = max(peak["workers"], sum(c.memory_full_info().uss for c in me.children(recursive=True)))
        except psutil.Error:
            pass
        time.sleep(0.5)
threading.Thread(target=watch, daemon=True).start()
overrides, out = json.loads(sys.argv[1]), sys.argv[2]
train(apply_overrides(preset("colour-64"), overrides), out)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "rss_gib": max(peak["main"], int(status["VmHWM"].split()[0]) * 1024) / 2**30,
                  "workers_rss_gib": peak["workers"] / 2**30}))
"""


def train_run(source: str, steps: int, out: Path, **data) -> dict:
    """A colour-64 training process on `source` for `steps` steps: its seconds, peak RSS, and the
    images/s of its steps after the first five."""
    overrides = {"data.source": source, "steps": steps, "checkpoint_every": 10**6, "preview_every": 0, "kid_every": 0,
                 "log_every": 1, "progress": False, "clusters": 0, **{f"data.{k}": v for k, v in data.items()}}
    result = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(overrides), str(out)], capture_output=True, text=True,
                            cwd=ROOT, check=False)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r][5:]
    measured["images_per_s"] = statistics.median(speeds) if speeds else float("nan")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, default=SHARDS)
    parser.add_argument("--batches", type=int, default=100, help="batches of 128 per delivery measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps per training measurement")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 10], help="the shards named so many times over")
    args = parser.parse_args()
    if not args.shards.is_dir():
        raise SystemExit(f"this benchmark reads tar shards from {args.shards}")
    spec = str(args.shards)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        streamed = load_images(DataConfig(spec, image_size=64, flip=True), progress=False)
        opened = time.perf_counter() - start
        start = time.perf_counter()
        cached = load_images(DataConfig(spec, image_size=64, flip=True, stream="no"), progress=False)
        decoded = time.perf_counter() - start
        folder = tmp / "folder"
        folder.mkdir()
        as_folder(args.shards, folder)
        files = load_images(DataConfig(str(folder), image_size=64, flip=True, stream="yes"), progress=False)
        rates: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # one at a time, alternating
            for name, data, workers in (("cache", cached, 0), ("shards, 0 workers", streamed, 0),
                                        ("shards, 1 worker", streamed, 1), ("shards, 2 workers", streamed, 2),
                                        ("folder of JPEGs, 2 workers", files, 2)):
                rates.setdefault(name, []).append(delivery(data, workers, args.batches))
        reference = statistics.median(rates["cache"])
        rows += ["| delivered from | images / s | against the cache |", "|---|---:|---:|"]
        rows += [f"| {name} | {spread(r)} | {statistics.median(r) / reference:.2f}x |" for name, r in rates.items()]
        notes.append(f"Opening the shards (index and a sample of {streamed.sampled:,}): {opened:.1f} s; decoding all "
                     f"{len(cached):,} into memory first: {decoded:.0f} s.")
        del cached, files

        steps: dict[str, list[float]] = {"shards": [], "cache": []}
        memory: dict[str, list[float]] = {}
        for k in range(args.repeats):
            for name, stream in (("shards", "auto"), ("cache", "no")):
                run = train_run(spec, args.steps, tmp / f"run-{name}-{k}", stream=stream)
                steps[name].append(run["images_per_s"])
                memory.setdefault(f"{name}, 1x", []).append(run["rss_gib"])
                memory.setdefault(f"{name}, 1x: its workers' own", []).append(run["workers_rss_gib"])
        ratio = statistics.median(steps["shards"]) / statistics.median(steps["cache"])
        rows += ["", "| colour-64 training step fed from | images / s |", "|---|---:|"]
        rows += [f"| {name} | {spread(r, ',.1f')} |" for name, r in steps.items()]
        notes.append(f"The step fed from the shards runs at {ratio:.1%} of its speed fed from the cache.")
        for scale in [s for s in args.scales if s > 1]:
            listed = tmp / f"shards-x{scale}.txt"
            listed.write_text("".join(f"{p}\n" for _ in range(scale) for p in sorted(args.shards.glob("*.tar"))))
            run = train_run(str(listed), 10, tmp / f"run-x{scale}")
            memory[f"shards, {scale}x"] = [run["rss_gib"]]
            memory[f"shards, {scale}x: its workers' own"] = [run["workers_rss_gib"]]
        rows += ["", "| peak memory of a colour-64 training process, fed from | GiB |", "|---|---:|"]
        rows += [f"| {name} | {spread(r, '.2f')} |" for name, r in memory.items()]
        firsts = [train_run(spec, 1, tmp / f"first-{k}")["seconds"] for k in range(args.repeats)]
        notes.append(f"From `train` starting (in a fresh process) to its first step done, checkpoint included: "
                     f"{spread(firsts, '.1f')} s.")
    command = "python benchmarks/stream.py " + " ".join(sys.argv[1:])
    text = (f"<!-- written by: {command.strip()} -->\n`{command.strip()}` on {cpu_name()} ({torch.get_num_threads()} "
            f"threads), {args.repeats} repetitions, median (min..max); batches of {BATCH}.\n\n" + "\n".join(rows)
            + "\n\n" + "\n\n".join(notes) + "\n")
    print(text)
    DOCS.write_text(text)


if __name__ == "__main__":
    main()
