"""Convergence order of the deterministic samplers on Gaussian data, against the exact flow.

    python benchmarks/solver_order.py

For pixels i.i.d. N(mu, s^2) the probability-flow ODE keeps each point's standardised position
in the marginal N(alpha mu, alpha^2 s^2 + sigma^2), so the exact denoiser (`exact.GaussianDenoiser`)
and the closed-form end point give each sampler's error alone. Prints, per sampler and spacing,
the mean absolute error at 16 to 256 steps from the same start, and the slope of log error
against log steps fitted over 16 to 128 (the range tests/test_solvers.py checks).
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
COUNTS = (16, 32, 64, 128, 256)
ROWS = (("ddim", "log-snr"), ("heun", "log-snr"), ("dpmpp-2m", "log-snr"), ("dpmpp-2m", "karras"), ("heun", "karras"))


def error(sampler: str, spacing: str, steps: int, schedule, x: torch.Tensor) -> float:
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    times = sampling_times(schedule, steps, spacing)
    exact = denoiser.flow_to_data(x, float(times[0]))
    return (SAMPLERS[sampler](denoiser, x, times).double() - exact).abs().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", default="linear", choices=list(schedules.SCHEDULES))
    args = parser.parse_args()
    schedule = schedules.make_schedule(args.schedule)
    x = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    print(f"| sampler | spacing | {' | '.join(map(str, COUNTS))} steps | slope |")
    print("|---|---|" + "---:|" * (len(COUNTS) + 1))
    for sampler, spacing in ROWS:
        errors = [error(sampler, spacing, n, schedule, x) for n in COUNTS]
        slope = np.polyfit(np.log(COUNTS[:4]), np.log(errors[:4]), 1)[0]
        print(f"| {sampler} | {spacing} | " + " | ".join(f"{e:.1e}" for e in errors) + f" | {slope:.2f} |")


if __name__ == "__main__":
    main()
