"""Sample quality per network evaluation: every sampler at 3, 4, 5, 7, 10, 20 and 50 evaluations.

    python benchmarks/samplers.py --run runs/samplers/mnist            # a trained `mnist` run
    python benchmarks/samplers.py                                      # trains the mnist preset first
    python benchmarks/samplers.py --samplers ddim dpmpp-2m --nfe 250   # the reference cells
    python benchmarks/samplers.py --study                              # time spacings and clipping

Every cell draws the same `--samples` images (seeds 0..n-1, so the same starting noise in every
cell) from the run's EMA weights and scores them with the digit classifier's features against all
of mnist-5k (FID, KID), or with `--dataset cifar10` the CIFAR-10 classifier's against the 50,000
training images (a model on labels samples the classes in turn, at `--guidance`). Each sampler
walks its own time spacing, as `pixel-diffusion sample` does: DDPM and DDIM their papers' uniform
times from t = 1, the others Karras et al.'s rho = 7 spacing from EDM sigma 80 (`--study`
compares spacings). With `--inception` each cell is also scored in the standard FID and KID (the
TF-Inception's features against all training images). The image estimate is clipped to the data range as
`pixel-diffusion sample` does (`--no-clip` measures unclipped cells, kept out of the main table).
A sampler with more than one evaluation a step (Heun, DPM-Solver++(2S)) takes as many steps as
fit in the evaluations asked for; a count it cannot use is skipped. The adaptive DPM-Solver has
cells by tolerance (`ADAPTIVE_RTOLS`) and reports the evaluations it spent. Wall time per image
is measured with the network compiled and in bf16 autocast, `--batch-size` images at a time.

Cells are appended to docs/samplers_results.jsonl as they finish and a rerun skips the cells it
finds there, so the grid can be filled over several runs; docs/samplers_table.md and
docs/samplers_fid.png (beside --results) are rewritten from every cell of the run measured so far.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from pixel_diffusion.runs import load_run
from pixel_diffusion.samplers import SAMPLERS, evaluations
from pixel_diffusion.schedules import SIGMA_MAX

from common import ROOT, InceptionScorer, Scorer

# Each sampler walks the spacing `sample` gives it (its registry entry's): DDPM and DDIM uniform
# in t from t = 1 (their papers'), the others Karras et al.'s rho = 7 spacing from sigma 80. As
# (spacing, sigma_max); sigma_max None: the walk starts at t = 1. The adaptive solver uses only
# the walk's two ends.
SPACING = {name: (entry.spacing, SIGMA_MAX if entry.spacing in ("karras", "log-snr") else None)
           for name, entry in SAMPLERS.items()}
NFES = (3, 4, 5, 7, 10, 20, 50)
ADAPTIVE_RTOLS = (0.4, 0.2, 0.1, 0.05)
# Time spacings and clipping, with DDPM and DDIM beside them: (sampler, spacing, sigma_max, clip)
# at 5 and 10 evaluations. First-order SDE-DPM-Solver++ is DDPM's posterior step, so DDPM on the
# Karras walk isolates the multistep correction.
STUDY = {"nfes": (5, 10), "variants": tuple(
    (sampler, spacing, sigma_max, True) for sampler in ("dpmpp-2m", "unipc", "ipndm", "dpmpp-2m-sde")
    for spacing, sigma_max in (("uniform", None), ("log-snr", 80.0), ("karras", 80.0))) + (
    ("dpmpp-2m", "karras", 80.0, False), ("unipc", "karras", 80.0, False), ("ddpm", "uniform", None, False),
    ("ddim", "uniform", None, False), ("ddpm", "karras", 80.0, True))}
DOCS = ROOT / "docs"


def steps_for(sampler: str, nfe: int) -> int:
    """The most steps whose network evaluations fit in nfe (the registry says what a step costs)."""
    return max(steps for steps in range(1, nfe + 1) if evaluations(sampler, steps) <= nfe)


def repeats_a_column(sampler: str, nfe: int) -> bool:
    """Whether a count the sampler cannot use spends what another column already measures (Heun at
    4 evaluations is Heun at 3); such a cell is neither measured nor shown."""
    spent = evaluations(sampler, steps_for(sampler, nfe))
    return spent != nfe and spent in NFES


def cell_key(cell: dict) -> tuple:
    return (cell["run"], cell["sampler"], cell["spacing"], cell["sigma_max"], cell["clip"], cell["nfe"], cell["samples"],
            cell["precision"], cell.get("rtol"), cell.get("guidance", 1.0))


def walk_name(spacing: str, sigma_max: float | None) -> str:
    return f"{spacing} from t = 1" if sigma_max is None else f"{spacing} from sigma {sigma_max:g}"


def is_main(cell: dict) -> bool:
    return cell["clip"] and (cell["spacing"], cell["sigma_max"]) == SPACING[cell["sampler"]]


def measure(run, cell: dict, scorer: Scorer, batch_size: int, inception: InceptionScorer | None = None) -> dict:
    adaptive = SAMPLERS[cell["sampler"]].adaptive
    steps = 10 if adaptive else steps_for(cell["sampler"], cell["nfe"])
    options = {} if cell["clip"] else {"clip": None}
    if adaptive:
        options["rtol"] = cell["rtol"]
    if cell["spacing"] in ("karras", "log-snr"):
        options["sigma_max"] = math.inf if cell["sigma_max"] is None else cell["sigma_max"]
    report: dict = {}
    labels = run.sample_labels(cell["samples"])  # a model on labels: the classes in turn
    start = time.perf_counter()
    images = run.sample(cell["samples"], sampler=cell["sampler"], steps=steps, spacing=cell["spacing"], seed=0,
                        labels=labels, guidance=cell.get("guidance", 1.0), batch_size=batch_size,
                        precision=cell["precision"], progress=False, report=report, **options)
    seconds = time.perf_counter() - start
    scores = scorer(images, with_precision_recall=False)  # the table has no use for them
    if inception is not None:
        scores.update(inception(images))
    spent = report["evaluations"]
    standard = {k: scores[k] for k in ("inception_fid", "inception_kid") if k in scores}
    return {**cell, "steps": steps, "evaluations": sum(spent) / len(spent), "evaluations_range": [min(spent), max(spent)],
            "seconds_per_image": seconds / cell["samples"], "fid": scores["fid"], "kid": scores["kid"],
            "confidence": scores["confidence"], **standard}


def load_cells(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _grid(main: dict, columns: list[int], value) -> list[str]:
    rows = ["| sampler | spacing | " + " | ".join(f"{n}" for n in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for sampler, entry in SAMPLERS.items():
        cells = [main.get((sampler, n)) for n in columns]
        if not entry.adaptive and any(cells):  # samplers with no measured cell are left out
            rows.append(f"| `{sampler}` | {walk_name(*SPACING[sampler])} | "
                        + " | ".join("-" if c is None else value(c) for c in cells) + " |")
    return rows


def _adaptive_rows(cells: list[dict]) -> list[str]:
    rows = ["| rtol | evaluations (mean, range) | FID | KID x 1000 | confident > 0.9 | ms per image |",
            "|---:|---|---:|---:|---:|---:|"]
    for c in sorted(cells, key=lambda c: -c["rtol"]):
        low, high = c["evaluations_range"]
        rows.append(f"| {c['rtol']:g} | {c['evaluations']:.1f} ({low}-{high}) | {c['fid']:.2f} | {1000 * c['kid']:.2f} "
                    f"| {c['confidence']:.0%} | {1000 * c['seconds_per_image']:.1f} |")
    return rows


def table(cells: list[dict], run: str, samples: int, precision: str, guidance: float = 1.0,
          floor: dict | None = None) -> str:
    mine = [c for c in cells if c["run"] == run and c["samples"] == samples and c["precision"] == precision
            and c.get("guidance", 1.0) == guidance]
    main = {(c["sampler"], c["nfe"]): c for c in mine
            if is_main(c) and c["nfe"] is not None and not repeats_a_column(c["sampler"], c["nfe"])}
    columns = sorted({n for _, n in main} | set(NFES))
    lines = ["FID (classifier features; lower is better), by network evaluations (a count a sampler cannot "
             "use is left out):", ""]
    if floor is not None:
        lines[1:1] = ["", f"The floor, {samples:,} real training images against the same reference: FID {floor['fid']:.2f}, "
                      f"KID x 1000 {1000 * floor['kid']:.2f}, {floor['confidence']:.0%} confident."]
    lines += _grid(main, columns, lambda c: f"{c['fid']:.2f}")
    if any("inception_fid" in c for c in main.values()):
        lines += ["", "The standard FID (TF-Inception pool features, docs/metrics.md)"
                  + (f"; {samples:,} real training images: {floor['inception_fid']:.2f}:" if floor and "inception_fid" in floor
                     else ":"), ""]
        lines += _grid(main, columns, lambda c: f"{c['inception_fid']:.2f}" if "inception_fid" in c else "-")
    lines += ["", "KID x 1000:", ""] + _grid(main, columns, lambda c: f"{1000 * c['kid']:.2f}")
    lines += ["", "Share of samples the classifier calls with confidence > 0.9:", ""]
    lines += _grid(main, columns, lambda c: f"{c['confidence']:.0%}")
    lines += ["", "Wall time per image (ms; bf16, compiled network, 2 CPU cores):", ""]
    lines += _grid(main, columns, lambda c: f"{1000 * c['seconds_per_image']:.1f}")
    adaptive = [c for c in mine if is_main(c) and c.get("rtol") is not None]
    if adaptive:
        lines += ["", "`dpm-adaptive` (order 3, atol 0.0078, from sigma 80) by its tolerance:", ""] + _adaptive_rows(adaptive)
    found = {(c["sampler"], c["spacing"], c["sigma_max"], c["clip"], c["nfe"]): c for c in mine}
    rows = []
    for variant in STUDY["variants"]:
        values = [found.get((*variant, n)) for n in STUDY["nfes"]]
        if any(values):
            sampler, spacing, sigma_max, clip = variant
            rows.append(f"| `{sampler}` | {walk_name(spacing, sigma_max)} | {'yes' if clip else 'no'} | "
                        + " | ".join("-" if v is None else f"{v['fid']:.2f}" for v in values) + " |")
    if rows:
        lines += ["", "By time spacing and clipping of the image estimate (FID):", "",
                  "| sampler | time spacing | clip | " + " | ".join(f"{n} evaluations" for n in STUDY["nfes"]) + " |",
                  "|---|---|---|" + "---:|" * len(STUDY["nfes"])] + rows
    return "\n".join(lines)


def plot(cells: list[dict], run: str, samples: int, precision: str, guidance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "os^vD<>pPX*hd"
    for k, sampler in enumerate(SAMPLERS):
        points = sorted((c["evaluations"], c["fid"]) for c in cells
                        if c["run"] == run and c["sampler"] == sampler and c["samples"] == samples
                        and c["precision"] == precision and c.get("guidance", 1.0) == guidance and is_main(c))
        if points:
            ax.plot(*zip(*points), marker=markers[k % len(markers)], markersize=4, linestyle="--" if k >= 7 else "-",
                    label=f"{sampler} ({walk_name(*SPACING[sampler])})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FID (classifier features)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cells_to_measure(args, base: dict) -> list[dict]:
    """The cells a run asks for: the study's, or each sampler at each evaluation count it can use
    (the adaptive solver at each tolerance instead)."""
    if args.study:
        return [{**base, "sampler": p, "spacing": sp, "sigma_max": m, "clip": c, "nfe": n}
                for n in STUDY["nfes"] for p, sp, m, c in STUDY["variants"]]
    todo = []
    for sampler in args.samplers:
        common = {**base, "sampler": sampler, "spacing": SPACING[sampler][0], "sigma_max": SPACING[sampler][1],
                  "clip": not args.no_clip}
        if SAMPLERS[sampler].adaptive:
            todo += [{**common, "nfe": None, "rtol": rtol} for rtol in args.rtol]
            continue
        todo += [{**common, "nfe": nfe} for nfe in sorted(args.nfe) if not repeats_a_column(sampler, nfe)]
    return todo


def trained_run(args) -> Path:
    if args.run is not None:
        return args.run
    run = ROOT / "runs" / "samplers" / "mnist"
    from pixel_diffusion import checkpoints

    if checkpoints.latest_checkpoint(run) is None:
        from pixel_diffusion.config import apply_overrides
        from pixel_diffusion.presets import preset
        from pixel_diffusion.training import train

        config = apply_overrides(preset("mnist"), {"steps": None, "minutes": args.train_minutes})
        train(config, run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train the mnist preset into runs/samplers/mnist)")
    parser.add_argument("--train-minutes", type=float, default=10.0, help="budget when training (default: 10)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFES), help="network evaluations per image")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist", help="the scoring classifier's data")
    parser.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance of a model on labels")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--no-compile", action="store_true", help="run the network eagerly")
    parser.add_argument("--no-clip", action="store_true", help="leave the image estimate unclipped (not the table's cells)")
    parser.add_argument("--study", action="store_true", help="measure the spacing x clipping cells instead")
    parser.add_argument("--rtol", nargs="+", type=float, default=list(ADAPTIVE_RTOLS), help="dpm-adaptive's tolerances")
    parser.add_argument("--results", type=Path, default=DOCS / "samplers_results.jsonl")
    parser.add_argument("--inception", action="store_true", help="also the standard FID and KID of each cell (TF-Inception)")
    parser.add_argument("--tag", default="", help="a suffix for the table and plot's names")
    args = parser.parse_args()
    run = trained_run(args)
    model = load_run(run)
    if not args.no_compile:
        model.denoiser.net.compile()
    name = str(run.resolve().relative_to(ROOT)) if run.resolve().is_relative_to(ROOT) else str(run)
    base = {"run": name, "samples": args.samples, "precision": args.precision, "guidance": args.guidance}
    todo = cells_to_measure(args, base)
    done = {cell_key(c) for c in load_cells(args.results) if "inception_fid" in c or not args.inception}
    todo = [c for c in todo if cell_key(c) not in done]

    from tqdm import tqdm

    scorer = Scorer(args.dataset)
    inception = InceptionScorer(args.dataset) if args.inception else None
    if todo:  # compile (and warm) the network outside the timed cells, on a full batch
        model.sample(args.batch_size, steps=2, batch_size=args.batch_size, precision=args.precision, progress=False)
    for cell in tqdm(todo, desc="sampler cells"):
        result = measure(model, cell, scorer, args.batch_size, inception)
        budget = f"rtol={cell['rtol']:g}" if cell["nfe"] is None else f"nfe={cell['nfe']:3d}"
        tqdm.write(f"{cell['sampler']:18s} {walk_name(cell['spacing'], cell['sigma_max']):24s} clip={cell['clip']!s:5s} "
                   f"{budget}: {result['evaluations']:.1f} evaluations, FID {result['fid']:.2f}, KID {result['kid']:.4f}, "
                   f"{1000 * result['seconds_per_image']:.1f} ms/image")
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")

    cells = load_cells(args.results)
    real = scorer.real(args.samples)
    floor = {**scorer(real, with_precision_recall=False), **(inception(real) if inception else {})}
    text = table(cells, name, args.samples, args.precision, args.guidance, floor)
    print(text)
    command = "python benchmarks/samplers.py " + " ".join(sys.argv[1:])
    # The table and the plot go beside the results (docs/ by default), named for the scoring data.
    stem = ("samplers" if args.dataset == "mnist" else f"samplers_{args.dataset}") + (f"_{args.tag}" if args.tag else "")
    (args.results.parent / f"{stem}_table.md").write_text(f"<!-- written by: {command.strip()} (run {name}) -->\n{text}\n")
    plot(cells, name, args.samples, args.precision, args.guidance, args.results.parent / f"{stem}_fid.png")


if __name__ == "__main__":
    main()
