"""Training speed on a GPU: the colour recipes against diffusers' train_unconditional recipe, at
32x32 and 64x64, in one run (a few minutes in all).

    python benchmarks/gpu_speed.py                  # needs CUDA; table to stdout and docs/performance_gpu_speed.md
    python benchmarks/gpu_speed.py --steps 60 --repeats 3

diffusers' examples/unconditional_image_generation/train_unconditional.py trains UNet2DModel
with widths 128/128/256/256/512/512 (attention at the fifth level), the linear 1000-step DDPM
schedule, AdamW 1e-4, batch 16, fp16 and EMA: that is the `ddpm-anime` preset here, whose
network equals UNet2DModel's (tests/test_parity_diffusers.py). Every variant trains on the GPU
with its preset's precision (fp16 for ddpm-anime, bf16 for ours), torch.compile and fused
AdamW, on a generated set of 5,000 smooth colour images (speed does not depend on the pictures,
and the GPU machine has no data set). Variants alternate, `--repeats` rounds; each row is the
median images/s after `--warmup` steps, its spread, and the ratio to the diffusers recipe at the
same size. Uses train_speed.py's worker, so each variant runs in a process of its own.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from train_speed import run_worker

ROOT = Path(__file__).resolve().parents[1]
# name: (train_speed suite, variant there, size, what)
VARIANTS = {
    "diffusers-32": ("colour-64", "ddpm-anime", 32, "diffusers train_unconditional (ddpm-64 UNet2DModel, fp16, batch 16) at 32"),
    "cifar-labml": ("colour", "cifar-labml", 32, "labml.ai DDPM (labml-cifar, fp32, batch 128)"),
    "cifar10": ("colour", "cifar10", 32, "the `cifar10` preset (patch-cifar, bf16, batch 64)"),
    "diffusers-64": ("colour-64", "ddpm-anime", 64, "diffusers train_unconditional at 64"),
    "keras-flowers": ("colour-64", "keras-flowers", 64, "Keras DDIM example (keras-ddim, fp32, batch 64)"),
    "colour-64": ("colour-64", "colour-64", 64, "the `colour-64` preset (photo-64, bf16, batch 64)"),
}


def synthetic(path: Path, size: int, count: int = 5000) -> Path:
    """A .npz of `count` smooth colour images (N, size, size, 3): upsampled 4x4 noise."""
    rng = np.random.default_rng(0)
    small = torch.from_numpy(rng.random((count, 3, 4, 4), dtype=np.float32))
    images = torch.nn.functional.interpolate(small, size=size, mode="bilinear", align_corners=False)
    np.savez(path, images=(images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out (torch.compile's work)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance_gpu_speed.md")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_speed.py measures a CUDA GPU, and this machine has none")

    results: dict[str, list[float]] = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as scratch:
        data = {size: str(synthetic(Path(scratch) / f"images-{size}.npz", size)) for size in (32, 64)}
        for round_ in range(args.repeats):
            shift = round_ % len(args.variants)
            for name in args.variants[shift:] + args.variants[:shift]:
                suite, variant, size, _ = VARIANTS[name]
                extra = {"device": "cuda", "compile": not args.no_compile, "fused_optimizer": True,
                         "data.source": data[size], "data.image_size": size, "data.allow_upscale": False,
                         "data.class_folders": False, "conditional": False}
                speed = run_worker(suite, variant, args.steps, args.warmup, extra)["images_per_s"]
                results[name].append(speed)
                print(f"{name}: {speed:.0f} images/s", flush=True)
    medians = {name: statistics.median(v) for name, v in results.items()}
    rows = ["| variant | what | images/s (median) | spread (min-max) | vs diffusers at its size |", "|---|---|---:|---:|---:|"]
    for name in args.variants:
        reference = medians.get(f"diffusers-{VARIANTS[name][2]}")
        ratio = f"{medians[name] / reference:.2f}x" if reference else "-"
        rows.append(f"| `{name}` | {VARIANTS[name][3]} | {medians[name]:.0f} | {min(results[name]):.0f}-{max(results[name]):.0f} | {ratio} |")
    device = torch.cuda.get_device_name()
    text = "\n".join(rows)
    print(text)
    command = "python benchmarks/gpu_speed.py " + " ".join(sys.argv[1:])
    args.doc.write_text(f"<!-- written by: {command.strip()} on {device} ({platform.node()}), torch {torch.__version__} -->\n{text}\n")


if __name__ == "__main__":
    main()
