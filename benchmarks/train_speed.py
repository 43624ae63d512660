"""Training speed of the default recipes against the reference systems' on the same data.

    python benchmarks/train_speed.py                       # mnist suite: table to stdout and docs/performance_speed.md
    python benchmarks/train_speed.py --repeats 5 --steps 30
    python benchmarks/train_speed.py --suite colour        # CIFAR-10 32x32: cifar10 against cifar-labml
    python benchmarks/train_speed.py --suite colour-64     # CIFAR-10 at 64x64: colour-64 against keras-flowers, ddpm-anime

Every variant is a real `train()` run of a preset with overrides (the mnist suite on the built-in
mnist-5k, the colour suites on ../shared/data/cifar10-train, served from the uint8 cache), in its
own process so each has a fresh allocator and an honest peak memory (the process's max resident
set). Variants run alternately, `--repeats` rounds with the order rotated each round, so drift
of the machine hits all of them alike. Speed is the median of the logged images/s windows after
the first `--warmup` steps (which hold torch.compile's work); each row reports the median over
rounds and the spread (min-max), and the ratio to the suite's reference system. The same run
measures the machine's peak: a 2048x2048 matrix product in float32 and in bf16. Each row says the
precision its runs trained in (for the presets' `auto`, what this machine measured faster), and
the table's first line the processor.

`--against REV` measures every variant twice in each round: on this tree and on the package as of
git revision REV (checked out into a temporary worktree and put first on the worker's PYTHONPATH),
so a change's speed is read as a ratio from one run (its table goes to the suite's
`*_against.md`).

`--loss-steps N` adds the check that a lever does not cost quality: fp32 and bf16 runs of the
default recipe for N steps from the same seed, mean training loss over the last 20% of steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pixel_diffusion.devices import processor

# name: (preset, overrides, what it is)
VARIANTS = {
    "tutorial": ("mnist-tutorial", {}, "tutorial recipe: ddpm-mnist (UNet2DModel 32/64/64 + attention), fp32, Adam"),
    "tutorial-bf16": ("mnist-tutorial", {"precision": "bf16"}, "the tutorial's network with bf16 autocast"),
    "ours-fp32": ("mnist", {"precision": "fp32", "fused_optimizer": False, "batch_size": 128},
                  "patch-mnist (residual U-Net on 2x2 patches, 50 clusters), fp32, AdamW"),
    "ours-bf16": ("mnist", {"fused_optimizer": False, "batch_size": 128}, "+ bf16 autocast"),
    "ours-bf16-fused": ("mnist", {"batch_size": 128}, "+ bf16, fused AdamW"),
    "ours-bf16-fused-cl": ("mnist", {"channels_last": True, "batch_size": 128}, "+ bf16, fused AdamW, channels_last"),
    "ours-bf16-fused-compile": ("mnist", {"compile": True, "batch_size": 128}, "+ bf16, fused AdamW, torch.compile"),
    "ours-bf16-fused-1thread": ("mnist", {"threads": 1, "batch_size": 128}, "+ bf16, fused AdamW, one thread"),
    "ours-conv-upsample": ("mnist", {"network_options": {"upsample": "nearest"}, "batch_size": 128},
                           "+ bf16, fused AdamW, but nearest + 3x3 conv up-sampling"),
    "ours-no-patches": ("mnist", {"network": "residual-mnist"},
                        "the preset with residual-mnist (32/64/96 at 28/14/7, no patches), its own batch"),
    "ours-default": ("mnist", {}, "the `mnist` preset as shipped (precision auto, fused AdamW, its own batch)"),
}
# The levers must not cost quality: loss after the same steps, same seed, of the `mnist` recipe.
LOSS_CHECKS = {
    "fp32": {"precision": "fp32"},
    "bf16 (shipped)": {},
    "bf16, nearest + conv up-sampling": {"network_options": {"upsample": "nearest"}},
    "bf16, no patches (residual-mnist)": {"network": "residual-mnist"},
    "bf16, no clusters (unconditional)": {"clusters": 0},
}
ROOT = Path(__file__).resolve().parents[1]
CIFAR = str(ROOT.parent / "shared" / "data" / "cifar10-train")
AT_64 = {"data.source": CIFAR, "data.image_size": 64, "data.allow_upscale": True}
COLOUR = {
    "cifar-labml": ("cifar-labml", {"data.source": CIFAR}, "the labml.ai DDPM: labml-cifar U-Net (4.2M), fp32, batch 128"),
    "cifar10-fp32": ("cifar10", {"data.source": CIFAR, "precision": "fp32", "fused_optimizer": False},
                     "patch-cifar (2x2 patches, 64/128, attention at 8x8), fp32, AdamW"),
    "cifar10-cl": ("cifar10", {"data.source": CIFAR, "channels_last": True}, "+ bf16, fused AdamW, channels_last"),
    "cifar10": ("cifar10", {"data.source": CIFAR}, "the `cifar10` preset as shipped (precision auto, fused AdamW)"),
}
COLOUR_64 = {
    "keras-flowers": ("keras-flowers", {**AT_64, "kid_every": 0}, "the Keras DDIM example: keras-ddim U-Net (2.0M), fp32"),
    "ddpm-anime": ("ddpm-anime", {**AT_64, "precision": "bf16"},
                   "the diffusers DDPM walkthrough: ddpm-64 UNet2DModel (114M), bf16 here (fp16 needs a GPU)"),
    "colour-64-patch-4": ("colour-64", {**AT_64, "network": "patch-64"},
                          "the `colour-64` preset on patch-64 (patch-cifar on 4x4 patches), as it was"),
    "colour-64": ("colour-64", AT_64, "the `colour-64` preset as shipped (photo-64: 2x2 patches, 32/64/128)"),
}
# suite: (variants, reference variant, input shape of one image, table)
SUITES = {
    "mnist": (VARIANTS, "tutorial", (1, 28, 28), ROOT / "docs" / "performance_speed.md"),
    "colour": (COLOUR, "cifar-labml", (3, 32, 32), ROOT / "docs" / "performance_colour_speed.md"),
    "colour-64": (COLOUR_64, "keras-flowers", (3, 64, 64), ROOT / "docs" / "performance_colour_64_speed.md"),
}


def worker(suite: str, name: str, steps: int, warmup: int, extra: dict) -> dict:
    """Train one variant for `steps` steps in a scratch directory; report speed and peak memory."""
    from pixel_diffusion.checkpoints import latest_checkpoint, read_json
    from pixel_diffusion.config import apply_overrides
    from pixel_diffusion.presets import preset
    from pixel_diffusion.training import train

    preset_name, overrides, _ = SUITES[suite][0][name]
    config = preset(preset_name)
    settings = {**overrides, **extra, "steps": steps, "log_every": 5, "checkpoint_every": 10**9,
                "preview_every": 0, "lr_warmup": 0, "progress": False, "kid_every": 0}
    config = apply_overrides(config, settings)
    with tempfile.TemporaryDirectory() as run:
        start = time.perf_counter()
        train(config, Path(run))
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in open(Path(run) / "metrics.jsonl")]
        settled = read_json(latest_checkpoint(Path(run)) / "state.json").get("precision", config.precision)
    measured = [r["images_per_s"] for r in records if r["step"] > warmup]
    tail = [r["loss"] for r in records[-max(1, len(records) // 5):]]
    return {
        "images_per_s": statistics.median(measured),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": wall,
        "tail_loss": statistics.fmean(tail),
        "batch_size": config.batch_size,
        "precision": settled,  # what the run trained in: precision=auto's choice on this machine
    }


def run_worker(suite: str, name: str, steps: int, warmup: int, extra: dict | None = None, source: Path | None = None) -> dict:
    """One variant in a process of its own; `source`: a src/ folder to import the package from."""
    command = [sys.executable, __file__, "--suite", suite, "--worker", name, "--steps", str(steps), "--warmup", str(warmup),
               "--extra", json.dumps(extra or {})]
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size).to(dtype)
    a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def forward_gflops(network: str, options: dict, shape: tuple[int, int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from pixel_diffusion.networks import build_network, config_to_dict, network_config

    config = dataclasses.replace(network_config(network, in_channels=shape[0]), **options)
    net = build_network(config_to_dict(config)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, *shape), torch.tensor([0.5]))
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="mnist", choices=list(SUITES))
    parser.add_argument("--variants", nargs="+", help="some of the suite's variants (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the speed (compilation, caches)")
    parser.add_argument("--loss-steps", type=int, default=0, help="also compare fp32 and bf16 loss after this many steps (mnist)")
    parser.add_argument("--doc", type=Path, help="table to write (default: the suite's in docs/)")
    parser.add_argument("--against", metavar="REV", help="also measure each variant on the package as of this git revision")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    suite, reference_name, shape, doc = SUITES[args.suite]
    if args.worker:
        print(json.dumps(worker(args.suite, args.worker, args.steps, args.warmup, json.loads(args.extra))))
        return
    args.variants = args.variants or list(suite)
    unknown = [v for v in args.variants if v not in suite]
    if unknown:
        parser.error(f"{', '.join(unknown)} not in the {args.suite} suite; it has {', '.join(suite)}")

    from tqdm import tqdm

    from pixel_diffusion.presets import preset

    sources, worktree = {"": None}, None
    if args.against:
        worktree = Path(tempfile.mkdtemp(prefix="train_speed-")) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.against],
                       check=True, capture_output=True)
        sources[f" @ {args.against}"] = worktree / "src"
        doc = doc.with_name(f"{doc.stem}_against.md")
    runs = [(name, label) for name in args.variants for label in sources]
    results: dict[str, list[dict]] = {name + label: [] for name, label in runs}
    peaks = {"fp32": [], "bf16": []}
    try:
        with tqdm(total=args.repeats * len(runs), desc="train_speed") as bar:
            for round_ in range(args.repeats):
                shift = round_ % len(runs)
                for name, label in runs[shift:] + runs[:shift]:
                    results[name + label].append(run_worker(args.suite, name, args.steps, args.warmup, source=sources[label]))
                    bar.update(1)
                peaks["fp32"].append(peak_gflops(torch.float32))
                peaks["bf16"].append(peak_gflops(torch.bfloat16))
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
    peak = {k: statistics.median(v) for k, v in peaks.items()}

    def speed(key: str) -> float | None:
        return statistics.median(r["images_per_s"] for r in results[key]) if key in results else None

    # The ratio column: against the suite's reference system, or with --against each variant against itself at REV.
    against = f" @ {args.against}" if args.against else None
    reference_of = (lambda name: speed(name + against)) if against else (lambda name: speed(reference_name))
    versus = "itself" + against if against else reference_name
    rows = [f"| variant | what | batch | precision | images/s (median) | spread (min-max) | vs {versus} | peak memory (MB) "
            "| GFLOP/s (fwd+bwd = 3x fwd) | of peak |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, label in runs:
        speeds = [r["images_per_s"] for r in results[name + label]]
        median = statistics.median(speeds)
        preset_name, overrides, what = suite[name]
        config = preset(preset_name)
        precision = results[name + label][0]["precision"]
        network = overrides.get("network", config.network)
        achieved = 3 * forward_gflops(network, overrides.get("network_options", {}), shape) * median
        fraction = achieved / peak["bf16" if precision == "bf16" else "fp32"]
        reference = reference_of(name)
        ratio = f"{median / reference:.2f}x" if reference else "-"
        rows.append(
            f"| `{name}`{label} | {what} | {results[name + label][0]['batch_size']} | {precision} | {median:.0f} | "
            f"{min(speeds):.0f}-{max(speeds):.0f} | {ratio} | "
            f"{statistics.median(r['peak_rss_mb'] for r in results[name + label]):.0f} | {achieved:.0f} | {100 * fraction:.0f}% |"
        )
    lines = [
        "| measured peak | GFLOP/s (2048x2048 matrix product, median) |", "|---|---:|",
        f"| float32 | {peak['fp32']:.0f} |", f"| bf16 | {peak['bf16']:.0f} |", "",
        *rows,
    ]
    if args.loss_steps:
        losses = {label: run_worker("mnist", "ours-default", args.loss_steps, 0, extra) for label, extra in LOSS_CHECKS.items()}
        lines += ["", f"Loss after {args.loss_steps} steps of the `mnist` recipe (same seed, mean over the last 20% "
                  "of logged windows):", "", "| variant | loss | images/s |", "|---|---:|---:|"]
        lines += [f"| {label} | {r['tail_loss']:.5f} | {r['images_per_s']:.0f} |" for label, r in losses.items()]
    text = "\n".join(lines)
    print(text)
    command = "python benchmarks/train_speed.py " + " ".join(sys.argv[1:])
    (args.doc or doc).write_text(f"<!-- written by: {command.strip()} on {processor()}, "
                                 f"{torch.get_num_threads()} threads -->\n{text}\n")


if __name__ == "__main__":
    main()
