"""Convergence order of the deterministic samplers on Gaussian data, against the exact flow.

    python benchmarks/solver_order.py

For pixels i.i.d. N(mu, s^2) the probability-flow ODE keeps each point's standardised position
in the marginal N(alpha mu, alpha^2 s^2 + sigma^2), so the exact denoiser (`exact.GaussianDenoiser`)
and the closed-form end point give each sampler's error alone. Prints, per sampler and spacing,
the mean absolute error at 16 to 512 steps from the same start, and the slope of log error
against log steps fitted over 16 to 128 (the range tests/test_solvers.py checks). The walk's last
step returns the denoiser's estimate at the last grid time rather than following the flow to
sigma = 0; the second table measures against that step's exact target, which removes the
O(sigma_min^2) floor of the first. The third table gives the adaptive DPM-Solver's error against
that same target and the evaluations it spent (mean and range over the images) at each tolerance.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from pixel_diffusion import schedules
from pixel_diffusion.exact import GaussianDenoiser
from pixel_diffusion.samplers import SAMPLERS
from pixel_diffusion.schedules import sampling_times

MU, STD = 0.3, 0.5
COUNTS = (16, 32, 64, 128, 256, 512)
ROWS = (("ddim", "log-snr"), ("heun", "log-snr"), ("dpmpp-2m", "log-snr"), ("dpmpp-2m", "karras"), ("heun", "karras"),
        ("dpmpp-3m", "log-snr"), ("ipndm", "log-snr"), ("ipndm", "karras"), ("unipc", "log-snr"), ("unipc", "karras"))


def errors(sampler: str, spacing: str, steps: int, schedule, x: torch.Tensor) -> tuple[float, float]:
    """Mean absolute error against the exact flow to sigma = 0, and against the denoiser's estimate
    at the last grid time of the exact flow there (what the walk's final step returns, exactly)."""
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    times = sampling_times(schedule, steps, spacing)
    out = SAMPLERS[sampler](denoiser, x, times).double()
    last = float(times[-2])
    denoised = denoiser.denoise(denoiser.flow(x, float(times[0]), last), last)
    return (out - denoiser.flow(x, float(times[0]))).abs().mean().item(), (out - denoised).abs().mean().item()


RTOLS = (0.2, 0.05, 0.01, 0.002)


def adaptive_rows(schedule, x: torch.Tensor) -> None:
    """dpm-adaptive at each rtol (atol 1e-4, below the data's scale), Karras walk from sigma 80."""
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    times = sampling_times(schedule, 10, "karras")
    last = float(times[-2])
    target = denoiser.denoise(denoiser.flow(x, float(times[0]), last), last)
    print("| order | rtol | error | evaluations (mean, range) | rejected steps (mean) |")
    print("|---:|---:|---:|---|---:|")
    for order in (2, 3):
        for rtol in RTOLS:
            report: dict = {}
            out = SAMPLERS["dpm-adaptive"](denoiser, x, times, order=order, rtol=rtol, atol=1e-4, report=report)
            spent = np.asarray(report["evaluations"])
            print(f"| {order} | {rtol:g} | {(out.double() - target).abs().mean().item():.1e} | {spent.mean():.1f} "
                  f"({spent.min()}-{spent.max()}) | {np.mean(report['rejected']):.1f} |")


def print_table(rows: dict, column: int) -> None:
    print(f"| sampler | spacing | {' | '.join(map(str, COUNTS))} steps | slope |")
    print("|---|---|" + "---:|" * (len(COUNTS) + 1))
    for (sampler, spacing), values in rows.items():
        errors_ = [v[column] for v in values]
        slope = np.polyfit(np.log(COUNTS[:4]), np.log(errors_[:4]), 1)[0]
        print(f"| {sampler} | {spacing} | " + " | ".join(f"{e:.1e}" for e in errors_) + f" | {slope:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="linear", choices=list(schedules.SCHEDULES))
    args = parser.parse_args()
    schedule = schedules.make_schedule(args.schedule)
    x = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    rows = {(sampler, spacing): [errors(sampler, spacing, n, schedule, x) for n in COUNTS] for sampler, spacing in ROWS}
    print("Against the exact flow to sigma = 0:\n")
    print_table(rows, 0)
    print("\nAgainst the denoiser's estimate on the exact flow at the last grid time (the final step's target):\n")
    print_table(rows, 1)
    print("\nThe adaptive DPM-Solver against the same target, by tolerance:\n")
    adaptive_rows(schedule, x)


if __name__ == "__main__":
    main()
