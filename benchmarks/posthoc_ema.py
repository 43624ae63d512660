"""Sample quality against EMA length, chosen after training (EDM2's post-hoc EMA).

    python benchmarks/posthoc_ema.py --run runs/quality_at_budget-tiny-imagenet-100/colour-64-flow-conditional \\
        --dataset tiny-imagenet-100 --samples 2000 --guidance 3 --inception

The run must have kept EMA profiles and their snapshots (`ema_profiles=[0.05,0.1]
ema_snapshot_every=250`). At its last checkpoint, EMA weights of each `--sigma-rel` are rebuilt
from the snapshots (`pixel-diffusion ema`), then every set of weights the checkpoint holds (the
fixed-decay `ema` the presets use, the raw `model`, the two kept profiles and the rebuilt ones) is
sampled with the same seeds and walk and scored: FID, KID and the confident share in the data set's
classifier's features, and with `--inception` the standard FID. The same measures of as many real
training images give the floor. Writes a table and FID against sigma_rel to
docs/performance_{dataset}_posthoc_ema{tag}.{md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pixel_diffusion import checkpoints, ema
from pixel_diffusion.runs import find_checkpoint, load_run, write_posthoc_ema

from common import ROOT, InceptionScorer, Scorer, cpu_name


def score_weights(run: Path, weights: str, args, scorer: Scorer, inception) -> dict:
    folder = find_checkpoint(run, "latest")
    guided = f"-guidance-{args.guidance:g}" if args.guidance != 1 else ""
    saved = folder / f"scores-{weights}-{args.sampler}-{args.spacing}-{args.steps}-{args.samples}{guided}.npz"
    if saved.exists():  # a rerun reuses what was scored
        with np.load(saved, allow_pickle=False) as f:
            return json.loads(str(f["scores"]))
    trained = load_run(run, weights=weights)
    images = trained.sample(args.samples, sampler=args.sampler, steps=args.steps, spacing=args.spacing, seed=0,
                            guidance=args.guidance, labels=trained.sample_labels(args.samples), batch_size=250,
                            precision="bf16", progress=True)
    scores = {**scorer(images, with_precision_recall=False), **(inception(images) if inception else {})}
    np.savez(saved, scores=np.array(json.dumps(scores)))
    return scores


def plot(rows: list[tuple[str, float | None, dict]], floor: dict, key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = sorted((s, r[key]) for _, s, r in rows if s is not None)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s for s, _ in swept], [v for _, v in swept], "o-", label="power-function EMA (post-hoc)")
    for name, s, r in rows:
        if s is None:
            ax.axhline(r[key], linestyle="--", color="grey" if name == "model" else "C1", label=name)
    ax.axhline(floor[key], linestyle=":", color="black", label="real images (floor)")
    ax.set_xlabel("EMA length sigma_rel (share of training)")
    ax.set_ylabel("FID (Inception)" if key == "inception_fid" else "FID (classifier)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--sigma-rel", type=float, nargs="+", default=[0.02, 0.03, 0.07, 0.15, 0.2, 0.25])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--sampler", default="dpmpp-2m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--spacing", default="karras")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--inception", action="store_true", help="also the standard FID (TF-Inception features)")
    parser.add_argument("--tag", default="", help="a suffix for the files written to docs/ (another run's sweep beside the first)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    folder = find_checkpoint(args.run, "latest")
    kept = {ema.weights_name(s): s for s in checkpoints.read_json(args.run / "config.json")["train"]["ema_profiles"]}
    wanted = [s for s in args.sigma_rel if ema.weights_name(s) not in kept]
    missing = [s for s in wanted if not (folder / f"{ema.weights_name(s)}.safetensors").exists()]
    if missing:
        write_posthoc_ema(args.run, missing)
    candidates = [("model", None), ("ema", None), *[(name, s) for name, s in kept.items()],
                  *[(ema.weights_name(s), s) for s in wanted]]
    scorer = Scorer(args.dataset)
    inception = InceptionScorer(args.dataset) if args.inception else None
    rows = []
    for name, sigma_rel in candidates:
        scores = score_weights(args.run, name, args, scorer, inception)
        rows.append((name, sigma_rel, scores))
        print(f"{name}: FID {scores['fid']:.2f}" + (f", Inception FID {scores['inception_fid']:.2f}" if inception else ""))
    real = scorer.real(args.samples)
    floor = {**scorer(real, with_precision_recall=False), **(inception(real) if inception else {})}

    standard = " FID (Inception) |" if inception else ""
    lines = [f"| weights | sigma_rel |{standard} FID | KID | confident > 0.9 |",
             "|---|---:|" + "---:|" * (4 if inception else 3),
             f"| real training images ({args.samples}, the floor) | - |" + (f" {floor['inception_fid']:.2f} |" if inception else "")
             + f" {floor['fid']:.2f} | {floor['kid']:.4f} | {floor['confidence']:.1%} |"]
    for name, sigma_rel, r in sorted(rows, key=lambda row: (row[1] is not None, row[1] or 0)):
        lines.append(f"| {name} | {'-' if sigma_rel is None else f'{sigma_rel:g}'} |"
                     + (f" {r['inception_fid']:.2f} |" if inception else "")
                     + f" {r['fid']:.2f} | {r['kid']:.4f} | {r['confidence']:.1%} |")
    step = checkpoints.read_json(folder / "state.json")["step"]
    train = checkpoints.read_json(args.run / "config.json")["train"]
    lines += ["", f"{args.run.name} at step {step}; `ema` is the fixed-decay EMA (decay {train['ema_decay']}"
              + (", with warmup" if train.get("ema_warmup") else "") + "), `model` the raw weights; every row samples "
              f"{args.samples} images with the same seeds ({args.sampler}, {args.steps} steps, {args.spacing} spacing"
              + (f", guidance {args.guidance:g}" if args.guidance != 1 else "") + ")."]
    text = "\n".join(lines)
    print(text)
    prefix = f"performance_{args.dataset}_posthoc_ema{args.tag}"
    command = "python benchmarks/posthoc_ema.py " + " ".join(sys.argv[1:])
    (args.docs / f"{prefix}.md").write_text(f"<!-- written by: {command} (on {cpu_name()}) -->\n{text}\n")
    plot(rows, floor, "inception_fid" if inception else "fid", args.docs / f"{prefix}.png")


if __name__ == "__main__":
    main()
