"""Recipe trials at the ten-minute budget: the `mnist` preset with one change each, same scoring.

    python benchmarks/recipe_trials.py                          # every trial not trained yet, then the table
    python benchmarks/recipe_trials.py --trials log-normal      # one trial

Each trial trains the `mnist` preset with its overrides (`TRIALS`) for `--minutes` of wall-clock
time on mnist-5k, with the same seed, checkpoints and budget as benchmarks/quality_at_budget.py,
whose `ours` run is the `mnist` trial itself (used when present rather than trained again). The
last checkpoint's EMA weights draw `--samples` images (20-step DDPM, seeds 0..n-1) that are scored
with the digit classifier's features: FID, KID, the share called with confidence > 0.9,
precision and recall. Writes docs/performance_recipes.md; the runs stay in --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import ROOT, Scorer
from quality_at_budget import score_run

from pixel_diffusion import checkpoints
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.training import train

# name: (what changes, overrides of the mnist preset)
TRIALS = {
    "mnist": ("the preset as shipped", {}),
    "lr-4e-3": ("learning rate 4e-3 (2e-3)", {"lr": 4e-3}),
    "mid-attention": ("self-attention in the 7x7 middle block (none)", {"network_options.mid_attention": True}),
    "batch-32": ("batch 32 (64)", {"batch_size": 32}),
    "log-normal": ("EDM log-normal noise levels, ln(sigma/alpha) ~ N(-1.2, 1.2^2) (uniform t)",
                   {"loss.time_sampling": "log-normal"}),
    "batch-128": ("batch 128 (64)", {"batch_size": 128}),
    "ema-0.997": ("EMA decay 0.997 from the start (0.999 behind the warmup (1 + n) / (10 + n), 0.995 at step 1800)",
                  {"ema_decay": 0.997, "ema_warmup": False}),
}
BASELINE = ROOT / "runs" / "quality_at_budget" / "ours"


def train_trial(name: str, minutes: float, out: Path) -> Path:
    if name == "mnist" and checkpoints.latest_checkpoint(BASELINE) is not None and minutes == 10:
        return BASELINE
    run = out / name
    if checkpoints.latest_checkpoint(run) is not None:
        print(f"{run} is trained already; delete it to train again")
        return run
    overrides = {"steps": None, "epochs": None, "minutes": minutes, "checkpoint_every": 300, "keep_checkpoints": 1000,
                 "preview_every": 0, "kid_every": 0, **TRIALS[name][1]}
    train(apply_overrides(preset("mnist"), overrides), run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", nargs="+", default=list(TRIALS), choices=list(TRIALS))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    scorer = Scorer()
    lines = [f"| trial | change (shipped value) | steps in {args.minutes:g} min | images seen | FID | KID | "
             "confident > 0.9 | precision | recall |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.trials:  # each scored as soon as it is trained
        run = train_trial(name, args.minutes, args.out)
        last = score_run(run, scorer, sampler="ddpm", steps=20, spacing="uniform", samples=args.samples,
                         curve_samples=args.samples, last_only=True)[-1]
        batch = checkpoints.read_json(run / "config.json")["train"]["batch_size"]
        lines.append(f"| `{name}` | {TRIALS[name][0]} | {last['step']} | {last['step'] * batch:,} | {last['fid']:.2f} | "
                     f"{last['kid']:.4f} | {last['confidence']:.1%} | {last['precision']:.2f} | {last['recall']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if set(args.trials) == set(TRIALS):  # the page holds the whole table only
        command = "python benchmarks/recipe_trials.py " + " ".join(sys.argv[1:])
        (args.docs / "performance_recipes.md").write_text(f"<!-- written by: {command.strip()} -->\n{text}\n")


if __name__ == "__main__":
    main()
