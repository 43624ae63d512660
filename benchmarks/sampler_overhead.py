"""Sampling time against the network's: each sampler's wall time per image over (its network
evaluations x one forward pass).

    python benchmarks/sampler_overhead.py                              # the mnist model of samplers.py
    python benchmarks/sampler_overhead.py --run RUN --batch-sizes 64 128 256 512 --threads 1 2

First the network alone: the run's EMA denoiser under bf16 autocast (compiled unless
--no-compile, with dynamic=False: a static graph for each batch size it meets; the adaptive
walk's batch shrinks as its images finish, and the graph torch.compile makes for a dynamic batch
ran 10 to 40% slower a call than the static ones on this CPU) on a batch of noise at mid-walk times, for every batch size and thread count,
median of --repeats timings of --calls calls each; the fastest per image is kept. Then every
sampler draws one batch of that size with --steps steps (the `sample` a user calls: noise
streams, the solver's arithmetic, the callbacks) with those threads, one untimed call first,
then --repeats timings, each just after a timing of the forward alone. The ratio is the
sampler's seconds per image over (evaluations x the forward's seconds per image), per pair,
so that the machine's drift cancels; the adaptive solver's evaluations are the ones it reports.
Writes docs/performance_sampler_overhead.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from pixel_diffusion.runs import load_run
from pixel_diffusion.samplers import SAMPLERS
from samplers import SPACING

from common import ROOT

DOC = ROOT / "docs" / "performance_sampler_overhead.md"


def forward_seconds(model, batch: int, calls: int, repeats: int) -> list[float]:
    """Seconds per image of the network alone, one timing per repeat."""
    spec, denoiser = model.spec, model.denoiser
    x = torch.randn(batch, *spec.shape)
    t = torch.full((batch,), 0.5, dtype=torch.float64)
    labels = spec.drawn_clusters(batch, 0)
    timings = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        denoiser(x, t, labels)  # compile and warm
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                denoiser(x, t, labels)
            timings.append((time.perf_counter() - start) / (calls * batch))
    return timings


def sampler_seconds(model, sampler: str, batch: int, steps: int, repeats: int,
                    calls: int) -> tuple[list[float], list[float], float]:
    """Seconds per image of one batch of `sampler` and of the network alone just before it, one
    timing each per repeat (pairs, so that the machine's drift cancels in their ratio), and the
    sampler's evaluations per image."""
    spacing, sigma_max = SPACING[sampler]
    options = {} if sigma_max is None else {"sigma_max": sigma_max}
    if SAMPLERS[sampler].adaptive:
        options["rtol"] = 0.1

    def once() -> tuple[float, float]:
        report: dict = {}
        start = time.perf_counter()
        model.sample(batch, sampler=sampler, steps=steps, spacing=spacing, batch_size=batch, precision="bf16",
                     progress=False, report=report, **options)
        return time.perf_counter() - start, sum(report["evaluations"]) / batch

    once()  # compile for the batch shapes this walk makes
    timings, forwards, spent = [], [], 0.0
    for _ in range(repeats):
        forwards += forward_seconds(model, batch, calls, 1)
        seconds, spent = once()
        timings.append(seconds / batch)
    return timings, forwards, spent


def spread(values: list[float], scale: float = 1000) -> str:
    return f"{scale * min(values):.3f}-{scale * max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "samplers" / "mnist")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10, help="forward calls a timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()

    model = load_run(args.run)
    if not args.no_compile:
        model.denoiser.net.compile(dynamic=False)  # a static graph per batch size (see the docstring)
    forward = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch_sizes:
            forward[threads, batch] = forward_seconds(model, batch, args.calls, args.repeats)
            print(f"forward, {threads} threads, batch {batch}: {1000 * statistics.median(forward[threads, batch]):.3f} "
                  f"ms/image", flush=True)
    threads, batch = min(forward, key=lambda key: statistics.median(forward[key]))
    torch.set_num_threads(threads)

    rows = []
    for sampler in args.samplers:
        timings, forwards, spent = sampler_seconds(model, sampler, batch, args.steps, args.repeats, args.calls)
        ratios = [seconds / (spent * forward) for seconds, forward in zip(timings, forwards)]
        rows.append(f"| `{sampler}` | {spent:.1f} | {1000 * statistics.median(timings):.2f} ({spread(timings)}) "
                    f"| {1000 * spent * statistics.median(forwards):.2f} | {statistics.median(ratios):.3f} "
                    f"({spread(ratios, 1)}) |")
        print(rows[-1], flush=True)

    command = "python benchmarks/sampler_overhead.py " + " ".join(sys.argv[1:])
    lines = [f"<!-- written by: {command.strip()} -->",
             f"Run `{args.run.name}`; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, bf16 autocast, {'eager' if args.no_compile else 'compiled (dynamic=False)'} network.", "",
             "The network alone, ms per image (median of "
             f"{args.repeats} timings of {args.calls} calls; spread min-max):", "",
             "| threads | batch | ms per image | spread |", "|---:|---:|---:|---:|"]
    lines += [f"| {t} | {b} | {1000 * statistics.median(v):.3f} | {spread(v)} |" for (t, b), v in forward.items()]
    lines += ["", f"Every sampler at {args.steps} steps, one batch of {batch} images, {threads} threads (`dpm-adaptive` at "
              "rtol 0.1); ratio = ms per image / (evaluations x the forward's ms per image), the forward timed "
              f"just before each of the {args.repeats} sampler timings; median and spread of those paired ratios:", "",
              "| sampler | evaluations | ms per image (spread) | evaluations x forward | ratio (spread) |",
              "|---|---:|---:|---:|---:|"] + rows
    args.doc.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
