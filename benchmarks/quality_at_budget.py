"""Sample quality after the same wall-clock budget: our `mnist` recipe (and its class-conditional
form) against the MNIST tutorial's.

    python benchmarks/quality_at_budget.py                 # 10 minutes each, then scores and a plot
    python benchmarks/quality_at_budget.py --minutes 2 --samples 200    # a quick look

Each recipe trains on mnist-5k for `--minutes` of wall-clock time on this machine (its preset,
with the budget replaced by minutes; learning-rate decay follows the time budget), writing a
checkpoint every few hundred steps. Every checkpoint is then sampled with the same seeds
(`--sampler`, `--steps`; `--curve-samples` for the intermediate ones, `--samples` for the last)
and scored with the digit classifier's features against all of mnist-5k: FID, KID, and the
share of samples the classifier calls with confidence > 0.9 (a class-conditional run draws the
ten classes in turn, without guidance). Writes a table, and FID and the confident share against
training minutes, to docs/ (performance_quality.md, performance_fid.png) and keeps the runs in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pixel_diffusion import checkpoints
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.data import load_builtin
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import load_run
from pixel_diffusion.training import train

from common import ROOT, Scorer, nearest_training_distance

# name: (preset, checkpoint every so many steps)
RECIPES = {"ours": ("mnist", 300), "ours-conditional": ("mnist-conditional", 300), "tutorial": ("mnist-tutorial", 40)}


def train_recipe(name: str, minutes: float, out: Path) -> Path:
    run = out / name
    if checkpoints.latest_checkpoint(run) is not None:
        print(f"{run} is trained already; delete it to train again")
        return run
    config = preset(RECIPES[name][0])
    config = apply_overrides(config, {"steps": None, "epochs": None, "minutes": minutes, "checkpoint_every": RECIPES[name][1],
                                      "keep_checkpoints": 1000, "preview_every": 0, "kid_every": 0})
    train(config, run)
    return run


def checkpoint_minutes(run: Path, step: int) -> float:
    """Training minutes at `step`: those of the last logged step at or before it (metrics.jsonl
    logs every few steps; the final checkpoint falls between two logs)."""
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return max((r["elapsed_s"] for r in records if r["step"] <= step), default=0.0) / 60


def score_run(run: Path, scorer: Scorer, *, sampler: str, steps: int, spacing: str, samples: int,
              curve_samples: int, last_only: bool = False) -> list[dict]:
    folders = sorted(run.glob("checkpoints/step-*"), key=lambda p: int(p.name.split("-")[1]))
    folders = folders[-1:] if last_only else folders
    rows = []
    for k, folder in enumerate(folders):
        step = int(folder.name.split("-")[1])
        minutes = checkpoint_minutes(run, step)
        trained = load_run(run, checkpoint=step)
        n = samples if k == len(folders) - 1 else curve_samples
        saved = folder / f"scores-{sampler}-{spacing}-{steps}-{n}.npz"  # a rerun reuses what was scored
        if saved.exists():
            with np.load(saved, allow_pickle=False) as f:
                images, scores = f["images"], json.loads(str(f["scores"]))
        else:
            # A run on labels draws the classes in turn, one on clusters by their shares (no guidance).
            images = trained.sample(n, sampler=sampler, steps=steps, spacing=spacing, seed=0,
                                    labels=trained.sample_labels(n), batch_size=250, precision="bf16", progress=False)
            scores = scorer(images)
            np.savez(saved, images=images, scores=np.array(json.dumps(scores)))
        rows.append({"step": step, "minutes": minutes, "n": n, **scores, "images": images})
        print(f"{run.name} step {step} ({minutes:.1f} min): FID {scores['fid']:.2f}, KID {scores['kid']:.4f}, "
              f"confident {scores['confidence']:.1%}")
    return rows


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, share) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        minutes = [r["minutes"] for r in rows]
        ax.plot(minutes, [r["fid"] for r in rows], marker="o", label=f"{name} ({RECIPES[name][0]} preset)")
        share.plot(minutes, [100 * r["confidence"] for r in rows], marker="o", label=name)
    ax.set_ylabel("FID (classifier features)")
    ax.set_yscale("log")
    share.set_ylabel("samples called with confidence > 0.9 (%)")
    share.axhline(80, color="grey", linestyle="--", linewidth=1)
    for a in (ax, share):
        a.set_xlabel("training minutes (2 CPU cores)")
        a.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=1000, help="samples scored at the end of each run")
    parser.add_argument("--curve-samples", type=int, default=500, help="samples scored at the intermediate checkpoints")
    parser.add_argument("--sampler", default="ddpm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--spacing", default="uniform")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality_at_budget")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    from pixel_diffusion.viz import image_grid

    runs = {name: train_recipe(name, args.minutes, args.out) for name in args.recipes}
    scorer = Scorer()
    curves = {name: score_run(run, scorer, sampler=args.sampler, steps=args.steps, spacing=args.spacing,
                              samples=args.samples, curve_samples=args.curve_samples) for name, run in runs.items()}

    lines = [f"| recipe | preset | steps in {args.minutes:g} min | images seen | FID | KID | confident > 0.9 | precision | recall "
             "| nearest training image |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rows in curves.items():
        last = rows[-1]
        batch = checkpoints.read_json(runs[name] / "config.json")["train"]["batch_size"]
        lines.append(f"| {name} | `{RECIPES[name][0]}` | {last['step']} | {last['step'] * batch:,} | {last['fid']:.2f} | "
                     f"{last['kid']:.4f} | {last['confidence']:.1%} | {last['precision']:.2f} | {last['recall']:.2f} | "
                     f"{nearest_training_distance(last['images']):.2f} |")
        grid = last["images"][:64]
        if preset(RECIPES[name][0]).conditional:  # drawn with the classes in turn: one row per digit
            grid = last["images"][:80][np.argsort(np.arange(80) % 10, kind="stable")]
        image_grid(grid, columns=8, scale=2).save(args.docs / f"performance_{name}_samples.png")
    spacing = nearest_training_distance(load_builtin("mnist-5k")[0], exclude_self=True)
    lines += ["", "Nearest training image: the median pixel distance (L2, pixels in [0, 1]) from a sample to the "
              f"closest mnist-5k image; between the training images themselves it is {spacing:.2f}.",
              "", "FID against training minutes (intermediate checkpoints scored on "
              f"{args.curve_samples} samples, the last on {args.samples}):", "",
              "| recipe | minutes | step | FID | KID | confident > 0.9 |", "|---|---:|---:|---:|---:|---:|"]
    for name, rows in curves.items():
        lines += [f"| {name} | {r['minutes']:.1f} | {r['step']} | {r['fid']:.2f} | {r['kid']:.4f} | {r['confidence']:.1%} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    command = "python benchmarks/quality_at_budget.py " + " ".join(sys.argv[1:])
    (args.docs / "performance_quality.md").write_text(f"<!-- written by: {command.strip()} -->\n{text}\n")
    plot(curves, args.docs / "performance_fid.png")


if __name__ == "__main__":
    main()
