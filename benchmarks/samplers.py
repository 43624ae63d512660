"""Sample quality per network evaluation: every sampler at 5, 10, 20, 50, 100 and 250 evaluations.

    python benchmarks/samplers.py --run runs/quality_at_budget/ours    # a trained `mnist` run
    python benchmarks/samplers.py                                      # trains the mnist preset first
    python benchmarks/samplers.py --study                              # DPM-Solver++(2M), ODE and SDE: spacing x clipping

Every cell draws the same `--samples` images (seeds 0..n-1, so the same starting noise in every
cell) from the run's EMA weights and scores them with the digit classifier's features against all
of mnist-5k (FID, KID). Each sampler walks the time spacing in `SPACING` (its paper's, except
DPM-Solver++, ODE and SDE, measured better at 10 evaluations on Karras's than on its paper's
log-SNR spacing: `--study`); the Karras and log-SNR walks start at EDM sigma 80, the DDPM/DDIM
grid walks at t = 1. The image estimate is clipped to the data range as `pixel-diffusion sample`
does (`--no-clip` measures unclipped cells, kept out of the main table). Heun takes
(nfe + 1) // 2 steps, so its cells use 2 * steps - 1 evaluations (one less than asked for even
counts); the table states the evaluations used. Wall time per image is measured with the
network compiled and in bf16 autocast, `--batch-size` images at a time.

Cells are appended to docs/samplers_results.jsonl as they finish and a rerun skips the cells it
finds there, so the grid can be filled over several runs; docs/samplers_table.md and
docs/samplers_fid.png are rewritten from every cell measured so far.
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

from common import ROOT, Scorer

# Time discretisation per sampler, as (spacing, sigma_max): DDPM and DDIM step uniformly in t from
# t = 1 (Ho et al. 2020; Song et al. 2021), the EDM samplers in Karras et al.'s rho = 7 spacing from
# sigma 80 (Karras et al. 2022), DPM-Solver++ (ODE and SDE) likewise (its paper's log-SNR spacing is in the study).
# sigma_max None: the walk starts at t = 1.
SPACING = {"ddpm": ("uniform", None), "ddim": ("uniform", None), "euler": ("karras", 80.0),
           "euler-ancestral": ("karras", 80.0), "heun": ("karras", 80.0), "dpmpp-2m": ("karras", 80.0),
           "dpmpp-2m-sde": ("karras", 80.0)}
NFES = (5, 10, 20, 50, 100, 250)
# DPM-Solver++(2M), ODE and SDE, by discretisation and clipping, and DDPM / DDIM beside them:
# (sampler, spacing, sigma_max, clip) at 10 and 20 evaluations. First-order SDE-DPM-Solver++ is
# DDPM's posterior step, so DDPM on the Karras walk isolates the multistep correction.
STUDY = {"nfes": (10, 20), "variants": (
    ("dpmpp-2m", "uniform", None, True), ("dpmpp-2m", "uniform", None, False), ("dpmpp-2m", "log-snr", None, True),
    ("dpmpp-2m", "log-snr", 80.0, True), ("dpmpp-2m", "karras", None, True), ("dpmpp-2m", "karras", 80.0, True),
    ("dpmpp-2m", "karras", 80.0, False), ("dpmpp-2m-sde", "uniform", None, True),
    ("dpmpp-2m-sde", "log-snr", 80.0, True), ("dpmpp-2m-sde", "karras", 80.0, True),
    ("dpmpp-2m-sde", "karras", 80.0, False), ("ddpm", "uniform", None, False), ("ddim", "uniform", None, False),
    ("ddpm", "karras", 80.0, True), ("ddpm", "karras", 80.0, False))}
DOCS = ROOT / "docs"


def steps_for(sampler: str, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def cell_key(cell: dict) -> tuple:
    return (cell["run"], cell["sampler"], cell["spacing"], cell["sigma_max"], cell["clip"], cell["nfe"], cell["samples"],
            cell["precision"])


def walk_name(spacing: str, sigma_max: float | None) -> str:
    return f"{spacing} from t = 1" if sigma_max is None else f"{spacing} from sigma {sigma_max:g}"


def is_main(cell: dict) -> bool:
    return cell["clip"] and (cell["spacing"], cell["sigma_max"]) == SPACING[cell["sampler"]]


def measure(run, cell: dict, scorer: Scorer, batch_size: int) -> dict:
    steps = steps_for(cell["sampler"], cell["nfe"])
    options = {} if cell["clip"] else {"clip": None}
    if cell["spacing"] in ("karras", "log-snr"):
        options["sigma_max"] = math.inf if cell["sigma_max"] is None else cell["sigma_max"]
    start = time.perf_counter()
    images = run.sample(cell["samples"], sampler=cell["sampler"], steps=steps, spacing=cell["spacing"], seed=0,
                        batch_size=batch_size, precision=cell["precision"], progress=False, **options)
    seconds = time.perf_counter() - start
    scores = scorer(images)
    return {**cell, "steps": steps, "evaluations": evaluations(cell["sampler"], steps),
            "seconds_per_image": seconds / cell["samples"], "fid": scores["fid"], "kid": scores["kid"],
            "confidence": scores["confidence"]}


def load_cells(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(cells: list[dict], run: str, samples: int, precision: str) -> str:
    main = {(c["sampler"], c["nfe"]): c for c in cells
            if c["run"] == run and c["samples"] == samples and c["precision"] == precision and is_main(c)}
    head = "| sampler | spacing | " + " | ".join(f"{n}" for n in NFES) + " |"
    rule = "|---|---|" + "---:|" * len(NFES)

    def grid(value) -> list[str]:
        rows = [head, rule]
        for sampler in SAMPLERS:
            cells_ = [main.get((sampler, n)) for n in NFES]
            rows.append(f"| `{sampler}` | {walk_name(*SPACING[sampler])} | " + " | ".join("-" if c is None else value(c) for c in cells_) + " |")
        return rows

    lines = ["FID (classifier features; lower is better), by network evaluations asked for; "
             "Heun uses one less where the count is even:", ""]
    lines += grid(lambda c: f"{c['fid']:.2f}")
    lines += ["", "KID x 1000:", ""] + grid(lambda c: f"{1000 * c['kid']:.2f}")
    lines += ["", "Share of samples the classifier calls with confidence > 0.9:", ""] + grid(lambda c: f"{c['confidence']:.0%}")
    lines += ["", "Wall time per image (ms; bf16, compiled network, 2 CPU cores):", ""] + grid(
        lambda c: f"{1000 * c['seconds_per_image']:.1f}")
    study = [c for c in cells if c["run"] == run and c["nfe"] in STUDY["nfes"]
             and c["samples"] == samples and c["precision"] == precision]
    found = {(c["sampler"], c["spacing"], c["sigma_max"], c["clip"], c["nfe"]): c for c in study}
    rows = []
    for variant in STUDY["variants"]:
        values = [found.get((*variant, n)) for n in STUDY["nfes"]]
        if any(values):
            sampler, spacing, sigma_max, clip = variant
            rows.append(f"| `{sampler}` | {walk_name(spacing, sigma_max)} | {'yes' if clip else 'no'} | "
                        + " | ".join("-" if v is None else f"{v['fid']:.2f}" for v in values) + " |")
    if rows:
        lines += ["", "DPM-Solver++(2M), ODE and SDE, and DDPM and DDIM, by time discretisation and clipping of the image estimate (FID):", "",
                  "| sampler | time spacing | clip | " + " | ".join(f"{n} evaluations" for n in STUDY["nfes"]) + " |",
                  "|---|---|---|" + "---:|" * len(STUDY["nfes"])] + rows
    return "\n".join(lines)


def plot(cells: list[dict], run: str, samples: int, precision: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for sampler in SAMPLERS:
        points = sorted((c["evaluations"], c["fid"]) for c in cells
                        if c["run"] == run and c["sampler"] == sampler and c["samples"] == samples
                        and c["precision"] == precision and is_main(c))
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{sampler} ({walk_name(*SPACING[sampler])})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FID (classifier features)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--no-compile", action="store_true", help="run the network eagerly")
    parser.add_argument("--no-clip", action="store_true", help="leave the image estimate unclipped (not the table's cells)")
    parser.add_argument("--study", action="store_true", help="measure the DPM-Solver++ spacing x clipping cells instead")
    parser.add_argument("--results", type=Path, default=DOCS / "samplers_results.jsonl")
    args = parser.parse_args()

    run = trained_run(args)
    model = load_run(run)
    if not args.no_compile:
        model.denoiser.net.compile()
    name = str(run.resolve().relative_to(ROOT)) if run.resolve().is_relative_to(ROOT) else str(run)
    base = {"run": name, "samples": args.samples, "precision": args.precision}
    if args.study:
        todo = [{**base, "sampler": p, "spacing": s, "sigma_max": m, "clip": c, "nfe": n}
                for n in STUDY["nfes"] for p, s, m, c in STUDY["variants"]]
    else:
        todo = [{**base, "sampler": s, "spacing": SPACING[s][0], "sigma_max": SPACING[s][1], "clip": not args.no_clip, "nfe": n}
                for n in args.nfe for s in args.samplers]
    done = {cell_key(c) for c in load_cells(args.results)}
    todo = [c for c in todo if cell_key(c) not in done]

    from tqdm import tqdm

    scorer = Scorer()
    if todo:  # compile (and warm) the network outside the timed cells, on a full batch
        model.sample(args.batch_size, steps=2, batch_size=args.batch_size, precision=args.precision, progress=False)
    for cell in tqdm(todo, desc="sampler cells"):
        result = measure(model, cell, scorer, args.batch_size)
        tqdm.write(f"{cell['sampler']:16s} {walk_name(cell['spacing'], cell['sigma_max']):24s} clip={cell['clip']!s:5s} nfe={cell['nfe']:3d}: "
                   f"FID {result['fid']:.2f}, KID {result['kid']:.4f}, {1000 * result['seconds_per_image']:.1f} ms/image")
        with open(args.results, "a") as f:
            f.write(json.dumps(result) + "\n")

    cells = load_cells(args.results)
    text = table(cells, name, args.samples, args.precision)
    print(text)
    command = "python benchmarks/samplers.py " + " ".join(sys.argv[1:])
    (DOCS / "samplers_table.md").write_text(f"<!-- written by: {command.strip()} (run {name}) -->\n{text}\n")
    plot(cells, name, args.samples, args.precision, DOCS / "samplers_fid.png")


if __name__ == "__main__":
    main()
