"""Recipe trials at the same budget: the `mnist` (or `cifar10`) preset with one change each, same scoring.

    python benchmarks/recipe_trials.py                          # every trial not trained yet, then the table
    python benchmarks/recipe_trials.py --trials log-normal      # one trial
    python benchmarks/recipe_trials.py --dataset cifar10 --minutes 6    # the colour trials (COLOUR_TRIALS)
    python benchmarks/recipe_trials.py --dataset cifar10-64 --minutes 6 # 64x64 (COLOUR_64_TRIALS)
    python benchmarks/recipe_trials.py --dataset tiny-imagenet-100 --minutes 10 --sampler dpmpp-2m --steps 10 --spacing karras --inception

Each trial trains the `mnist` preset with its overrides (`TRIALS`) on mnist-5k with the same seed
and checkpoints as benchmarks/quality_at_budget.py, whose `ours` and `ours-conditional` runs are
the `mnist` and `conditional` trials themselves (used when present rather than trained again). A change that alters the time a step takes (the
network, the batch size) trains for `--minutes` of wall-clock time, like `ours`; any other change
trains for exactly as many steps as `ours` made in its minutes, so that the machine's speed on
the day (1805 steps in ten minutes one day, 1479 another) does not enter the comparison; trials
of the preset before patches (residual-mnist) name that network and its 1805 steps, and those of
the preset before clusters name `clusters=0` and its 2907 steps. The last
checkpoint's EMA weights draw `--samples` images (20-step DDPM, seeds 0..n-1) that are scored with
the digit classifier's features: FID, KID, the share called with confidence > 0.9, precision and
recall. Writes docs/performance_recipes.md; the runs stay in --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pixel_diffusion import checkpoints
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.training import train

from common import ROOT, InceptionScorer, Scorer, cpu_name
from quality_at_budget import score_run

# The trials before the preset moved to 2x2 patches ran on residual-mnist (widths 32/64/96 at
# 28x28, 14x14, 7x7) without clusters; they name both, so that they still train what they trained.
PLAIN = {"network": "residual-mnist", "clusters": 0}
# The trials before the preset moved to clusters ran unconditional patch-mnist, against its 2907 steps.
UNCONDITIONAL = {"clusters": 0}
# Flow matching in place of diffusion, all else equal (presets.flow_matching): rectified flow's straight path,
# the flow velocity as the network's output and the loss's target, logit-normal times, the time as the noise input.
FLOW = {"schedule": "rectified-flow", "prediction": "flow", "noise_input": "time", "loss.kind": "flow-matching"}
# name: (what changes, overrides of the mnist preset, budget): "clock" for a change of the time a
# step takes (trained for --minutes), "steps" for any other (as many steps as the `mnist` trial
# made), or a number of steps (the trials that matched an earlier preset's steps).
TRIALS = {
    "mnist": ("the preset as shipped (patch-mnist, 50 clusters)", {}, "clock"),
    "no-clusters": ("unconditional: no clusters (50 k-means clusters of the images, drawn by their share)",
                    UNCONDITIONAL, "clock"),
    "no-patches": ("residual-mnist, no patches, widths 32/64/96 at 28/14/7 (the preset before patches)", PLAIN, "clock"),
    "mnist-again": ("no-patches, trained again on another day", PLAIN, "clock"),
    "lr-4e-3": ("no-patches, learning rate 4e-3 (2e-3)", {**PLAIN, "lr": 4e-3}, "clock"),
    "lr-1e-3": ("no-patches, learning rate 1e-3 (2e-3)", {**PLAIN, "lr": 1e-3}, 1805),
    "mid-attention": ("no-patches, self-attention in the 7x7 middle block (none)",
                      {**PLAIN, "network_options.mid_attention": True}, "clock"),
    "batch-32": ("no-patches, batch 32 (64)", {**PLAIN, "batch_size": 32}, "clock"),
    "log-normal": ("no-patches, EDM log-normal noise levels, ln(sigma/alpha) ~ N(-1.2, 1.2^2) (uniform t)",
                   {**PLAIN, "loss.time_sampling": "log-normal"}, "clock"),
    "batch-128": ("no-patches, batch 128 (64)", {**PLAIN, "batch_size": 128}, "clock"),
    "ema-0.997": ("no-patches, EMA decay 0.997 from the start (0.999 behind the warmup (1 + n) / (10 + n), 0.995 at "
                  "step 1800)", {**PLAIN, "ema_decay": 0.997, "ema_warmup": False}, 1805),
    "min-snr-1": ("no-patches, min-SNR weighting with gamma 1 (5)", {**PLAIN, "loss.min_snr_gamma": 1.0}, 1805),
    "beta2-0.99": ("no-patches, AdamW beta2 0.99 (0.999)", {**PLAIN, "betas": (0.9, 0.99)}, 1805),
    "widths-24-64-128": ("no-patches, widths 24/64/128: 0.375 GFLOP (32/64/96: 0.358)",
                         {**PLAIN, "network_options.widths": (24, 64, 128)}, "clock"),
    "widths-32-64-128": ("no-patches, widths 32/64/128: 0.436 GFLOP (32/64/96: 0.358)",
                         {**PLAIN, "network_options.widths": (32, 64, 128)}, "clock"),
    "one-up-block": ("no-patches, one up block a level, skips from the blocks only: 0.250 GFLOP (two, skips from the "
                     "stem and down-samplers too: 0.358)", {**PLAIN, "network_options.skip_stem_and_downsamples": False},
                     "clock"),
    "mnist-again-2": ("no-patches, trained again on the day of the patch trials", PLAIN, "clock"),
    "patch-2": ("2x2 patches, widths 64/96 at 14x14 and 7x7: 0.232 GFLOP (what patch-mnist became)",
                {**PLAIN, "network_options.patch_size": 2, "network_options.widths": (64, 96)}, "clock"),
    "patch-2-64-128": ("2x2 patches, widths 64/128: 0.309 GFLOP",
                       {**PLAIN, "network_options.patch_size": 2, "network_options.widths": (64, 128)}, "clock"),
    "patch-2-two-blocks": ("2x2 patches, widths 64/96, two blocks a level: 0.350 GFLOP",
                           {**PLAIN, "network_options.patch_size": 2, "network_options.widths": (64, 96),
                            "network_options.blocks_per_level": 2}, "clock"),
    "lr-3e-3": ("no-clusters, learning rate 3e-3 (2e-3)", {**UNCONDITIONAL, "lr": 3e-3}, 2907),
    "conditional": ("the digit labels instead of clusters, 10% of examples without a label; sampled with the classes "
                    "in turn, no guidance", {"conditional": True, "clusters": 0}, "clock"),
    "flow-matching": ("flow matching: the straight path x_t = (1 - t) x_0 + t eps, the flow velocity eps - x_0, "
                      "logit-normal times (diffusion: cosine schedule, velocity, min-SNR-5, uniform times)", FLOW, "steps"),
}
# The colour trials: the `cifar10` preset with one change each on the CIFAR-10 folder, all trained
# for the same minutes (`--dataset cifar10`). Both rounds ran with learning rate 1e-3, the preset's
# until the second round measured 2e-3 better; they name it, so that they still train what they trained.
CIFAR = {"data.source": str(ROOT.parent / "shared" / "data" / "cifar10-train")}
BEFORE = {**CIFAR, "lr": 1e-3}  # the preset before the second round
THREE_LEVELS = {**BEFORE, "network_options.widths": (64, 128, 192)}  # the preset before the first round
COLOUR_TRIALS = {
    "cifar10": ("three levels, widths 64/128/192 at 16/8/4, attention at 4x4 (the preset before the trials)",
                THREE_LEVELS, "clock"),
    "widths-64-128": ("two levels, widths 64/128 at 16/8, attention at 8x8 (patch-cifar as shipped), 50 clusters",
                      {**BEFORE, "network_options.widths": (64, 128)}, "clock"),
    "batch-128": ("three levels, batch 128 (64)", {**THREE_LEVELS, "batch_size": 128}, "clock"),
    "conditional": ("three levels, the class folders' labels instead of clusters, 10% without a label; sampled with the "
                    "classes in turn, no guidance",
                    {**THREE_LEVELS, "conditional": True, "clusters": 0, "data.class_folders": True}, "clock"),
    # The second round (`--table performance_colour_recipes_2.md`), on patch-cifar with lr 1e-3.
    "shipped": ("patch-cifar, lr 1e-3 (the preset before this round), trained again on the day", BEFORE, "clock"),
    "one-up-block": ("one up block a level, skips from the blocks only: 0.31 GFLOP (two, skips from the stem and "
                     "down-sampler too: 0.42)", {**BEFORE, "network_options.skip_stem_and_downsamples": False},
                     "clock"),
    "log-normal": ("noise levels drawn log-normally, EDM's P_mean -1.2, P_std 1.2 (uniform in time)",
                   {**BEFORE, "loss.time_sampling": "log-normal"}, "clock"),
    "lr-2e-3": ("learning rate 2e-3 (1e-3): the preset as shipped", {**CIFAR, "lr": 2e-3}, "clock"),
    "lr-3e-3": ("learning rate 3e-3 (1e-3)", {**CIFAR, "lr": 3e-3}, "clock"),
    "flow-matching": ("the preset as shipped, trained by flow matching (diffusion)", {**CIFAR, **FLOW}, "clock"),
}
# The 64x64 trials: `colour-64` on CIFAR-10 upscaled to 64 (`--dataset cifar10-64`), scored by the
# CIFAR-10 classifier on samples averaged back down to 32x32.
AT_64 = {**CIFAR, "data.image_size": 64, "data.allow_upscale": True, "network": "patch-64"}
COLOUR_64_TRIALS = {
    "colour-64": ("the preset as shipped: patch-64, 4x4 patches, widths 64/128 at 16/8, attention at 8x8: 0.42 GFLOP",
                  AT_64, "clock"),
    "patch-2-three-levels": ("2x2 patches, widths 32/64/128 at 32/16/8, attention at 8x8: 0.59 GFLOP",
                             {**AT_64, "network_options.patch_size": 2, "network_options.widths": (32, 64, 128)},
                             "clock"),
}
# The 64x64 photo trials: `colour-64` on Tiny ImageNet-100's shards, streamed (`--dataset tiny-imagenet-100`),
# one change each from what the literature found for higher resolutions.
# They start from the preset as it was (patch-64); it moved to the `patch-2-three-levels` network, photo-64.
TINY = {"data.source": str(ROOT.parent / "shared" / "data" / "tiny-imagenet-100" / "train-{0000..0009}.tar"),
        "network": "patch-64"}
# `colour-64-conditional` as shipped, on the shards' labels (the trials' base preset is `colour-64`).
SHIPPED_64 = {"data.source": TINY["data.source"], "conditional": True, "clusters": 0, "guidance": 3.0}
TINY_TRIALS = {
    "colour-64": ("the preset before these trials: patch-64, 4x4 patches, widths 64/128 at 16/8, attention in the "
                  "8x8 middle, 50 clusters", TINY, "clock"),
    "conditional": ("the shards' 100 class labels instead of clusters, 10% without a label; sampled with the classes in "
                    "turn, no guidance", {**TINY, "conditional": True, "clusters": 0}, "clock"),
    "shift-2": ("the cosine schedule shifted to 64x64, log-SNR lowered by 2 log 2 (simple diffusion; none)",
                {**TINY, "schedule_options": {"shift": 2.0}}, "clock"),
    "shift-4": ("the cosine schedule shifted by 4, log-SNR lowered by 2 log 4 (none)",
                {**TINY, "schedule_options": {"shift": 4.0}}, "clock"),
    "patch-2-three-levels": ("2x2 patches, widths 32/64/128 at 32/16/8, attention in the 8x8 middle",
                             {**TINY, "network_options.patch_size": 2, "network_options.widths": (32, 64, 128)}, "clock"),
    "attention-16": ("self-attention after the 16x16 block too (the 8x8 middle only)",
                     {**TINY, "network_options.attention_levels": (0,)}, "clock"),
    "log-normal": ("noise levels drawn log-normally, EDM's P_mean -1.2, P_std 1.2 (uniform in time)",
                   {**TINY, "loss.time_sampling": "log-normal"}, "clock"),
    "photo-64": ("photo-64 as shipped (= patch-2-three-levels), trained again on the day", {**TINY, "network": "photo-64"},
                 "clock"),
    "flow-matching": ("photo-64 trained by flow matching (diffusion)", {**TINY, "network": "photo-64", **FLOW}, "clock"),
    # The third round (`--table performance_tiny_recipes_3.md`), on `colour-64-conditional` as shipped.
    "conditional-shipped": ("`colour-64-conditional` as shipped: photo-64 by flow matching on the 100 labels, guidance 3",
                            SHIPPED_64, "clock"),
    "lr-4e-3": ("learning rate 4e-3 (2e-3)", {**SHIPPED_64, "lr": 4e-3}, "clock"),
    "wide-8": ("widths 32/64/192, the 8x8 level and its attention wider (32/64/128)",
               {**SHIPPED_64, "network_options.widths": (32, 64, 192)}, "clock"),
    "batch-32": ("batch 32 (64)", {**SHIPPED_64, "batch_size": 32}, "clock"),
    "lr-8e-3": ("learning rate 8e-3 (2e-3)", {**SHIPPED_64, "lr": 8e-3}, "clock"),
}
# dataset: (trials, the preset they change, the data set whose classifier scores them, table)
DATASETS = {"mnist": (TRIALS, "mnist", "mnist", "performance_recipes.md"),
            "cifar10": (COLOUR_TRIALS, "cifar10", "cifar10", "performance_colour_recipes.md"),
            "cifar10-64": (COLOUR_64_TRIALS, "colour-64", "cifar10", "performance_colour_64_recipes.md"),
            "tiny-imagenet-100": (TINY_TRIALS, "colour-64", "tiny-imagenet-100", "performance_tiny_recipes.md")}
# Trials that are a recipe of benchmarks/quality_at_budget.py: its run is used for 10 minutes, if trained.
SHARED = {"mnist": ROOT / "runs" / "quality_at_budget" / "ours",
          "conditional": ROOT / "runs" / "quality_at_budget" / "ours-conditional"}


def trial_run(name: str, minutes: float, out: Path, dataset: str = "mnist") -> Path:
    """Where a trial's run is: quality_at_budget's for the shared recipes at 10 minutes, if trained."""
    if dataset == "mnist" and name in SHARED and minutes == 10 and checkpoints.latest_checkpoint(SHARED[name]) is not None:
        return SHARED[name]
    return out / name


def train_trial(name: str, minutes: float, out: Path, dataset: str = "mnist") -> Path:
    run = trial_run(name, minutes, out, dataset)
    if checkpoints.latest_checkpoint(run) is not None:
        print(f"{run} is trained already; delete it to train again")
        return run
    trials, base, _, _ = DATASETS[dataset]
    _, changes, kind = trials[name]
    budget = {"steps": None, "minutes": minutes}
    if kind == "steps":  # as many steps as the baseline made in its minutes
        baseline = checkpoints.latest_checkpoint(trial_run("mnist", minutes, out))
        if baseline is None:
            raise SystemExit(f"{name} trains for as many steps as the `mnist` trial made: run --trials mnist first")
        budget = {"steps": checkpoints.read_json(baseline / "state.json")["step"], "minutes": None}
    elif kind != "clock":
        budget = {"steps": kind, "minutes": None}
    overrides = {"epochs": None, **budget, "checkpoint_every": 300, "keep_checkpoints": 1000, "preview_every": 0,
                 "kid_every": 0, **changes}
    train(apply_overrides(preset(base), overrides), run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=list(DATASETS))
    parser.add_argument("--trials", nargs="+", help="some of the data set's trials (default: all)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--spacing", default="uniform")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance of conditional trials")
    parser.add_argument("--inception", action="store_true", help="also the standard FID and KID (TF-Inception features)")
    parser.add_argument("--out", type=Path, help="runs (default: runs/recipe, runs/recipe-cifar10)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--table", help="write the trials run to this page of --docs (default: the data set's page, "
                                        "written when every trial ran)")
    args = parser.parse_args()
    trials, _, scored_by, table = DATASETS[args.dataset]
    args.trials = args.trials or list(trials)
    if any(t not in trials for t in args.trials):
        parser.error(f"the {args.dataset} trials are {', '.join(trials)}")
    out = args.out or ROOT / "runs" / ("recipe" if args.dataset == "mnist" else f"recipe-{args.dataset}")

    scorer = Scorer(scored_by)
    inception = InceptionScorer(scored_by) if args.inception else None
    standard = " FID (Inception) | KID (Inception) |" if inception else ""
    lines = [f"| trial | change (shipped value) | budget | steps | images seen |{standard} FID | KID | confident > 0.9 | "
             "precision | recall |", "|---|---|---|---:|---:|" + "---:|" * (7 if inception else 5)]
    for name in args.trials:  # each scored as soon as it is trained
        run = train_trial(name, args.minutes, out, args.dataset)
        last = score_run(run, scorer, sampler=args.sampler, steps=args.steps, spacing=args.spacing, samples=args.samples,
                         curve_samples=args.samples, last_only=True, guidance=args.guidance,
                         inception=inception)[-1]
        config = checkpoints.read_json(run / "config.json")["train"]
        budget = f"{config['minutes']:g} min" if config["steps"] is None else f"{config['steps']} steps"
        scores = f" {last['inception_fid']:.2f} | {last['inception_kid']:.4f} |" if inception else ""
        lines.append(f"| `{name}` | {trials[name][0]} | {budget} | {last['step']} | {last['step'] * config['batch_size']:,} |"
                     f"{scores} {last['fid']:.2f} | {last['kid']:.4f} | {last['confidence']:.1%} | {last['precision']:.2f} | "
                     f"{last['recall']:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.table or set(args.trials) == set(trials):  # the data set's page holds the whole table only
        command = "python benchmarks/recipe_trials.py " + " ".join(sys.argv[1:])
        (args.docs / (args.table or table)).write_text(f"<!-- written by: {command.strip()} (on {cpu_name()}) -->\n{text}\n")


if __name__ == "__main__":
    main()
