"""Sample quality after the same wall-clock budget: our recipes against the reference systems'.

    python benchmarks/quality_at_budget.py                 # mnist: 10 minutes each, then scores and a plot
    python benchmarks/quality_at_budget.py --minutes 2 --samples 200    # a quick look
    python benchmarks/quality_at_budget.py --dataset cifar10 --minutes 30 --samples 2000

Each recipe trains on the data set (mnist: mnist-5k, ours and its class-conditional form against
the MNIST tutorial's; cifar10: the 50,000 CIFAR-10 training images, `cifar10` and
`cifar10-conditional` against the labml.ai DDPM; tiny-imagenet-100: the 50,000 64x64 photos of
its ten shards, streamed, `colour-64-conditional` (flow matching), its diffusion form and
`colour-64` as it was (diffusion on patch-64) against the Keras DDIM and diffusers DDPM presets;
mnist's and cifar10's `*-flow*` recipes are their own recipes trained by flow matching) for `--minutes` of wall-clock time on this machine (its preset,
with the budget replaced by minutes; learning-rate decay follows the time budget), or for
`--train-steps` steps to match a run trained earlier, writing a checkpoint every few hundred steps. Every checkpoint is then sampled with the
same seeds (`--sampler`, `--steps`; `--curve-samples` for the intermediate ones, `--samples` for
the last) and scored with the data set's classifier features against all of its training images:
FID, KID, and the share of samples the classifier calls with confidence > 0.9 (a
class-conditional run draws the classes in turn, without guidance, and with `--guidance` too).
The same measures of as many real training images give each one's floor. With `--inception` the
last samples (and the floor) are also scored in the standard FID and KID, the TF-Inception's
features against all training images (benchmarks/inception_floor.py caches them). Writes a table, and
FID and the confident share against training minutes, to docs/ (performance_quality.md and
performance_fid.png, or performance_cifar10_*; `--tag` adds a suffix, so that a second sampler's
scores of the same runs sit beside the first's) and keeps the runs in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pixel_diffusion import checkpoints
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import load_run
from pixel_diffusion.training import train

from common import DATASETS, ROOT, InceptionScorer, Scorer, cpu_name, nearest_training_distance, training_images

# Flow matching in place of diffusion (presets.flow_matching), and EMA profiles with snapshots
# for benchmarks/posthoc_ema.py.
FLOW = {"schedule": "rectified-flow", "schedule_options": {}, "prediction": "flow", "noise_input": "time",
        "loss.kind": "flow-matching"}
SNAPSHOTS = {"ema_profiles": [0.05, 0.1], "ema_snapshot_every": 250}
# The diffusion recipe of `mnist` and `cifar10`, for a preset that now trains by flow matching.
DIFFUSION = {"schedule": "cosine", "schedule_options": {}, "prediction": "velocity", "noise_input": "timestep",
             "loss.kind": "diffusion", "loss.target": "velocity", "loss.weighting": "min-snr"}
# The fixed-decay EMA the presets sampled with before the short power-function one (presets.SHORT_EMA).
FIXED_EMA = {"ema_profiles": [], "weights": "ema"}
# name: (preset, checkpoint every so many steps, overrides)
RECIPES = {"ours": ("mnist", 300, {}), "ours-conditional": ("mnist-conditional", 300, {}),
           "tutorial": ("mnist-tutorial", 40, {}), "ours-flow": ("mnist-flow", 300, {}),
           "ours-snapshots": ("mnist", 300, SNAPSHOTS), "ours-flow-snapshots": ("mnist-flow", 300, SNAPSHOTS)}
CIFAR = {"data.source": str(DATASETS["cifar10"].data.source)}
CIFAR_RECIPES = {"ours": ("cifar10", 1500, CIFAR), "ours-conditional": ("cifar10-conditional", 1500, CIFAR),
                 "labml": ("cifar-labml", 250, CIFAR),
                 "ours-flow-conditional": ("cifar10-conditional", 1500, {**CIFAR, **FLOW, **SNAPSHOTS}),
                 "ours-conditional-snapshots": ("cifar10-conditional", 1500, {**CIFAR, **SNAPSHOTS})}
# Tiny ImageNet-100 streamed from its shards; the reference systems' presets on their own recipes
# (ddpm-anime's fp16 is a GPU's: bf16 autocast here).
TINY = {"data.source": str(DATASETS["tiny-imagenet-100"].data.source)}
TINY_RECIPES = {"colour-64-conditional": ("colour-64-conditional", 300, {**TINY, **SNAPSHOTS}),
                "colour-64-conditional-lr-4e-3": ("colour-64-conditional", 300, {**TINY, **SNAPSHOTS, "lr": 4e-3}),
                "colour-64-diffusion-conditional": ("colour-64-conditional", 300, {**TINY, **DIFFUSION, **FIXED_EMA}),
                "colour-64-before": ("colour-64", 300, {**TINY, **DIFFUSION, **FIXED_EMA, "network": "patch-64"}),
                "keras-flowers": ("keras-flowers", 100, TINY),
                "ddpm-anime": ("ddpm-anime", 200, {**TINY, "precision": "bf16"})}
# dataset: (recipes, prefix of the files written to docs/)
BENCHMARKS = {"mnist": (RECIPES, "performance"), "cifar10": (CIFAR_RECIPES, "performance_cifar10"),
              "tiny-imagenet-100": (TINY_RECIPES, "performance_tiny")}


def train_recipe(recipes: dict, name: str, minutes: float, out: Path, steps: int | None = None) -> Path:
    run = out / name
    if checkpoints.latest_checkpoint(run) is not None:
        print(f"{run} is trained already; delete it to train again")
        return run
    name_of_preset, every, overrides = recipes[name]
    budget = {"steps": None, "minutes": minutes} if steps is None else {"steps": steps, "minutes": None}
    config = apply_overrides(preset(name_of_preset), {**overrides, **budget, "epochs": None,
                                                      "checkpoint_every": every, "keep_checkpoints": 1000,
                                                      "preview_every": 0, "kid_every": 0})
    train(config, run)
    return run


def runs_classes(run: Path) -> int:
    return checkpoints.read_json(run / "config.json")["model"]["num_classes"]


def checkpoint_minutes(run: Path, step: int) -> float:
    """Training minutes at `step`: those of the last logged step at or before it (metrics.jsonl
    logs every few steps; the final checkpoint falls between two logs)."""
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return max((r["elapsed_s"] for r in records if r["step"] <= step), default=0.0) / 60


def score_run(run: Path, scorer: Scorer, *, sampler: str, steps: int, spacing: str, samples: int,
              curve_samples: int, last_only: bool = False, guidance: float = 1.0, inception=None) -> list[dict]:
    folders = sorted(run.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))
    folders = folders[-1:] if last_only else folders
    rows = []
    for k, folder in enumerate(folders):
        step = int(folder.name.split("-")[1])
        minutes = checkpoint_minutes(run, step)
        trained = load_run(run, checkpoint=step)
        n = samples if k == len(folders) - 1 else curve_samples
        guided = f"-guidance-{guidance:g}" if guidance != 1 else ""
        saved = folder / f"scores-{sampler}-{spacing}-{steps}-{n}{guided}.npz"  # a rerun reuses what was scored
        if saved.exists():
            with np.load(saved, allow_pickle=False) as f:
                images, scores = f["images"], json.loads(str(f["scores"]))
        else:
            # A run on labels draws the classes in turn, one on clusters by their shares.
            images = trained.sample(n, sampler=sampler, steps=steps, spacing=spacing, seed=0, guidance=guidance,
                                    labels=trained.sample_labels(n), batch_size=250, precision="bf16", progress=False)
            scores = scorer(images)
            np.savez(saved, images=images, scores=np.array(json.dumps(scores)))
        if inception is not None and k == len(folders) - 1 and "inception_nearest" not in scores:
            scores.update(inception(images))  # the last checkpoint's samples in the standard FID too
            np.savez(saved, images=images, scores=np.array(json.dumps(scores)))
        rows.append({"step": step, "minutes": minutes, "n": n, **scores, "images": images})
        print(f"{run.name} step {step} ({minutes:.1f} min{', guidance ' + str(guidance) if guided else ''}): FID {scores['fid']:.2f}, KID {scores['kid']:.4f}, "
              f"confident {scores['confidence']:.1%}")
    return rows


def plot(curves: dict[str, list[dict]], recipes: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, share) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        minutes = [r["minutes"] for r in rows]
        ax.plot(minutes, [r["fid"] for r in rows], marker="o", label=f"{name} ({recipes[name][0]} preset)")
        share.plot(minutes, [100 * r["confidence"] for r in rows], marker="o", label=name)
    ax.set_ylabel("FID (classifier features)")
    ax.set_yscale("log")
    share.set_ylabel("samples called with confidence > 0.9 (%)")
    for a in (ax, share):
        a.set_xlabel("training minutes (2 CPU cores)")
        a.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def class_rows(images: np.ndarray, classes: int, rows: int = 10, columns: int = 8) -> np.ndarray:
    """From samples drawn with the classes in turn (sample i of class i mod K), `columns` samples
    of each of the first `rows` classes, one class after another (a grid row per class)."""
    picks = [c + classes * j for c in range(min(rows, classes)) for j in range(columns)]
    return images[[i for i in picks if i < len(images)]]


def row(label: str, name: str, last: dict, batch: int | None, distance: float) -> str:
    seen = f"{last['step']} | {last['step'] * batch:,}" if batch else "- | -"
    standard = f" {last['inception_fid']:.2f} | {last['inception_kid']:.4f} |" if "inception_fid" in last else ""
    nearest = f" {last['inception_nearest']:.1f} |" if "inception_nearest" in last else ""
    return (f"| {label} | {name} | {seen} |{standard} {last['fid']:.2f} | {last['kid']:.4f} | {last['confidence']:.1%} | "
            f"{last.get('class_balance', float('nan')):.3f} | {last['precision']:.2f} | {last['recall']:.2f} | {distance:.2f} |"
            f"{nearest}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=list(BENCHMARKS))
    parser.add_argument("--recipes", nargs="+", help="some of the data set's recipes (default: all)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--train-steps", type=int,
                        help="train new runs for this many steps instead (to match a run trained earlier, perhaps on another processor)")
    parser.add_argument("--samples", type=int, default=1000, help="samples scored at the end of each run")
    parser.add_argument("--curve-samples", type=int, default=500, help="samples scored at the intermediate checkpoints")
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--spacing", default="uniform")
    parser.add_argument("--guidance", type=float, nargs="*", default=[], help="also score conditional runs at these scales")
    parser.add_argument("--inception", action="store_true",
                        help="also score the last samples in the standard FID and KID (TF-Inception features, all training images)")
    parser.add_argument("--last-only", action="store_true", help="score only the last checkpoint (no curve)")
    parser.add_argument("--tag", default="", help="a suffix for the files written to docs/ (another sampler's scores beside the first)")
    parser.add_argument("--out", type=Path, help="runs (default: runs/quality_at_budget, or runs/quality_at_budget-cifar10)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    recipes, prefix = BENCHMARKS[args.dataset]
    prefix += f"_{args.tag}" if args.tag else ""
    args.recipes = args.recipes or list(recipes)
    out = args.out or ROOT / "runs" / ("quality_at_budget" + ("" if args.dataset == "mnist" else f"-{args.dataset}"))

    from pixel_diffusion.viz import image_grid

    runs = {name: train_recipe(recipes, name, args.minutes, out, args.train_steps) for name in args.recipes}
    scorer = Scorer(args.dataset)
    inception = InceptionScorer(args.dataset) if args.inception else None
    score = dict(sampler=args.sampler, steps=args.steps, spacing=args.spacing, samples=args.samples,
                 curve_samples=args.curve_samples, inception=inception)
    curves = {name: score_run(run, scorer, **score, last_only=args.last_only) for name, run in runs.items()}
    nearest = lambda images: nearest_training_distance(images, dataset=args.dataset)  # noqa: E731
    real = scorer.real(args.samples)
    floor = {"step": 0, **scorer(real), **(inception(real) if inception else {})}
    if inception:  # the real images are training images: each one's nearest other
        floor["inception_nearest"] = inception.real_nearest(args.samples)
    standard = " FID (Inception) | KID (Inception) |" if inception else ""
    budget = "steps" if args.train_steps else f"steps in {args.minutes:g} min"
    lines = [f"| recipe | preset | {budget} | images seen |{standard} FID | KID | confident > 0.9 | "
             "class balance | precision | recall | nearest training image |" + (" nearest (Inception) |" if inception else ""),
             "|---|---|---:|---:|" + "---:|" * (10 if inception else 7),
             row(f"real training images ({args.samples}, the floor)", "-", floor, None,
                 nearest_training_distance(training_images(args.dataset)[: args.samples], exclude_self=True, dataset=args.dataset))]
    for name, rows in curves.items():
        last, config = rows[-1], preset(recipes[name][0])
        batch = checkpoints.read_json(runs[name] / "config.json")["train"]["batch_size"]
        lines.append(row(name, f"`{recipes[name][0]}`", last, batch, nearest(last["images"])))
        grid = last["images"][:64]
        if config.conditional:  # drawn with the classes in turn: one row per class
            grid = class_rows(last["images"], runs_classes(runs[name]))
            for scale in args.guidance:
                guided = score_run(runs[name], scorer, **score, last_only=True, guidance=scale)[-1]
                lines.append(row(f"{name}, guidance {scale:g}", f"`{recipes[name][0]}`", guided, batch, nearest(guided["images"])))
                image_grid(class_rows(guided["images"], runs_classes(runs[name])), columns=8, scale=2).save(
                    args.docs / f"{prefix}_{name}-guidance-{scale:g}_samples.png")
        image_grid(grid, columns=8, scale=2).save(args.docs / f"{prefix}_{name}_samples.png")
    if inception:
        lines += ["", "FID and KID (Inception): the standard measures, in the TF-Inception's pool features (docs/metrics.md), "
                  "against all training images; FID, KID and the rest without the word: the data set's classifier's features. "
                  "Nearest (Inception): the median L2 distance from a sample's pool features to the nearest training "
                  "image's; the floor row gives it between training images themselves."]
    lines += ["", "Class balance: the entropy of the shares of the classes the classifier assigns to the samples, divided by "
              "that of the uniform distribution (1: every class equally often). Nearest training image: the median pixel "
              "distance (L2, pixels in [0, 1]) from a sample to the closest training image; the floor row gives it "
              "between training images themselves.",
              "", "FID against training minutes (intermediate checkpoints scored on "
              f"{args.curve_samples} samples, the last on {args.samples}):", "",
              "| recipe | minutes | step | FID | KID | confident > 0.9 |", "|---|---:|---:|---:|---:|---:|"]
    for name, rows in curves.items():
        lines += [f"| {name} | {r['minutes']:.1f} | {r['step']} | {r['fid']:.2f} | {r['kid']:.4f} | {r['confidence']:.1%} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    command = "python benchmarks/quality_at_budget.py " + " ".join(sys.argv[1:])
    quality = "performance_quality.md" if args.dataset == "mnist" and not args.tag else f"{prefix}_quality.md"
    (args.docs / quality).write_text(f"<!-- written by: {command.strip()} (on {cpu_name()}) -->\n{text}\n")
    plot(curves, recipes, args.docs / f"{prefix}_fid.png")


if __name__ == "__main__":
    main()
