"""Few-step generation: a consistency student distilled from a run, against the run's own solvers.

    python benchmarks/distill_quality.py --teacher runs/quality_at_budget-cifar10/ours-conditional \\
        --dataset cifar10 --minutes 15 --samples 2000 --inception

Distils the teacher (`distillation.student_config`: its data and network, its weights as the start,
consistency distillation with its own guidance folded in; `--set KEY=VALUE` changes any field) for
`--minutes` or `--train-steps` into `--out`, unless that run is there already. Then samples, with the
same seeds and the classes in turn: the student at 1, 2 and 4 steps of its consistency walk (every
`--mids` as the second noise level of the 2-step walk; `--four` the levels of the 4-step one), and
the teacher by DPM-Solver++(2M) on Karras steps at its own guidance, at 1, 2 and 4 steps and at 10
(its best at 10 or more evaluations, docs/samplers.md). Each is scored in the data set's
classifier's features (FID, KID, confident share) and with `--inception` in the standard FID, beside
the same measures of as many real images (the floor), and timed: the median of three runs of
`--time-images` images, in seconds per image. Writes docs/performance_{dataset}_distill{tag}.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from pixel_diffusion import checkpoints
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.distillation import student_config
from pixel_diffusion.runs import load_run
from pixel_diffusion.samplers import Walk
from pixel_diffusion.training import train

from common import ROOT, InceptionScorer, Scorer, cpu_name


def walks(args, teacher_guidance: float) -> list[tuple[str, str, Walk, int]]:
    """(who, label, walk, evaluations per image) of every row."""
    rows = [("student", "1 step", Walk("consistency", 1, sigmas=(80.0,)), 1)]
    rows += [("student", f"2 steps, second at sigma {mid:g}", Walk("consistency", 2, sigmas=(80.0, mid)), 2) for mid in args.mids]
    rows.append(("student", f"4 steps at sigma {', '.join(f'{s:g}' for s in args.four)}",
                 Walk("consistency", 4, sigmas=tuple(args.four)), 4))
    per_step = 2 if teacher_guidance != 1 else 1  # classifier-free guidance evaluates twice a step
    rows += [("teacher", f"DPM-Solver++(2M), {k} step{'s' if k > 1 else ''}", Walk("dpmpp-2m", k, spacing="karras"), per_step * k)
             for k in (1, 2, 4, 10)]
    return rows


def score(run, walk: Walk, args, scorer: Scorer, inception, saved: Path) -> dict:
    if saved.exists():  # a rerun reuses what was scored
        return json.loads(saved.read_text())
    images = run.sample(args.samples, walk, seed=0, labels=run.sample_labels(args.samples), batch_size=250,
                        precision="bf16", progress=True)
    scores = {**scorer(images, with_precision_recall=False), **(inception(images) if inception else {})}
    checkpoints.atomic_write_text(saved, json.dumps(scores))
    return scores


def seconds_per_image(run, walk: Walk, n: int) -> tuple[float, float]:
    """Median and spread (max - min) of three timed draws of n images, in seconds per image."""
    labels = run.sample_labels(n)
    run.sample(min(n, 16), walk, seed=1, labels=None if labels is None else labels[:16], progress=False, precision="bf16")
    times = []
    for repeat in range(3):
        start = time.perf_counter()
        run.sample(n, walk, seed=repeat, labels=labels, batch_size=250, progress=False, precision="bf16")
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times), max(times) - min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--out", type=Path, help="the student's run (default: runs/distill-DATASET{tag})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=15.0)
    budget.add_argument("--train-steps", type=int)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config fields of the student")
    parser.add_argument("--guidance", type=float, help="the teacher's guidance, folded into the student and sampled "
                        "by the teacher's rows (default: the teacher's own)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--mids", type=float, nargs="+", default=[0.4, 0.821, 2.0])
    parser.add_argument("--four", type=float, nargs=4, default=[80.0, 2.0, 0.821, 0.3])
    parser.add_argument("--time-images", type=int, default=250)
    parser.add_argument("--inception", action="store_true", help="also the standard FID (TF-Inception features)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    out = args.out or ROOT / "runs" / f"distill-{args.dataset}{args.tag}"
    if checkpoints.latest_checkpoint(out) is None:
        budget = {"steps": args.train_steps, "minutes": None} if args.train_steps else {"steps": None, "minutes": args.minutes}
        config = student_config(args.teacher, guidance=args.guidance,
                                overrides={**budget, "preview_every": 0, "checkpoint_every": 250})
        train(apply_overrides(config, args.set), out)
    student, teacher = load_run(out), load_run(args.teacher)
    scale = teacher.spec.guidance if args.guidance is None else args.guidance
    scorer = Scorer(args.dataset)
    inception = InceptionScorer(args.dataset) if args.inception else None
    rows = []
    for who, label, walk, evaluations in walks(args, scale):
        walk = walk.replace(guidance=scale) if who == "teacher" else walk
        run = student if who == "student" else teacher
        guided = f"-guidance-{walk.guidance:g}" if walk.guidance not in (None, 1) else ""
        name = f"{who}-{walk.sampler}-{walk.steps}-{'-'.join(f'{s:g}' for s in walk.sigmas or ())}-{args.samples}{guided}.json"
        scores = score(run, walk, args, scorer, inception, run.checkpoint / f"scores-{name}")
        seconds, spread = seconds_per_image(run, walk, args.time_images)
        rows.append((who, label, evaluations, scores, seconds, spread))
        print(f"{who} {label}: FID {scores['fid']:.2f}" + (f", Inception {scores['inception_fid']:.2f}" if inception else ""), flush=True)
    real = scorer.real(args.samples)
    floor = {**scorer(real, with_precision_recall=False), **(inception(real) if inception else {})}

    standard = " FID (Inception) |" if inception else ""
    lines = [f"| model | walk | evaluations |{standard} FID (classifier) | KID | confident > 0.9 | ms per image |",
             "|---|---|---:|" + "---:|" * (5 if inception else 4),
             f"| real training images ({args.samples}, the floor) | - | - |" + (f" {floor['inception_fid']:.2f} |" if inception else "")
             + f" {floor['fid']:.2f} | {floor['kid']:.4f} | {floor['confidence']:.1%} | - |"]
    for who, label, evaluations, r, seconds, spread in rows:
        lines.append(f"| {who} | {label} | {evaluations} |" + (f" {r['inception_fid']:.2f} |" if inception else "")
                     + f" {r['fid']:.2f} | {r['kid']:.4f} | {r['confidence']:.1%} | {1000 * seconds:.1f} ± {1000 * spread / 2:.1f} |")
    state = checkpoints.read_json(student.checkpoint / "state.json")
    lines += ["", f"The student ({out.name}) after {state['step']} steps ({state.get('elapsed_s', 0) / 60:.1f} minutes) of "
              f"{student.training['loss']['target']} consistency {'distillation' if student.training['loss']['target'] == 'teacher' else 'training'} "
              f"from {args.teacher} (guidance {student.training['loss']['guidance']:g} folded in); the teacher at guidance "
              f"{scale:g}. {args.samples} samples each, the same seeds, the classes in turn; time: median "
              f"(± half the spread) of three draws of {args.time_images} images in batches of 250, bf16."]
    text = "\n".join(lines)
    print(text)
    command = "python benchmarks/distill_quality.py " + " ".join(sys.argv[1:])
    path = args.docs / f"performance_{args.dataset}_distill{args.tag}.md"
    checkpoints.atomic_write_text(path, f"<!-- written by: {command} (on {cpu_name()}) -->\n{text}\n")


if __name__ == "__main__":
    main()
