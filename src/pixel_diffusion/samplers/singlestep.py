"""Single-step solvers with an intermediate evaluation: DPM-Solver++(2S), here in its ancestral
form (Lu et al. 2022, Algorithm 1; k-diffusion's dpmpp_2s_ancestral)."""

from __future__ import annotations

import math

import torch

from .kernel import (
    Callback,
    ancestral_step,
    as_noise,
    check_eta,
    check_times,
    edm_sigmas,
    predict,
    predict_scaled,
    time_at_edm_sigma,
    walk_rates,
)

Tensor = torch.Tensor


@torch.no_grad()
def dpmpp_2s_ancestral(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
                       eta: float = 1.0, clip=None) -> Tensor:
    """DPM-Solver++(2S) with ancestral noise. In the EDM variables (x~ = x / alpha, s~ = sigma / alpha,
    lambda = -log s~) each step s~ -> s~_next first splits into s~_down and fresh noise s~_up
    (`ancestral_step`), then takes the second-order singlestep from s~ to s~_down with its
    intermediate point at the lambda midpoint s~_mid = sqrt(s~ s~_down), h = log(s~ / s~_down):
        u     = (s~_mid / s~) x~ - (e^(-h/2) - 1) D(x~, s~)
        x~_down = (s~_down / s~) x~ - (e^(-h) - 1) D(u, s~_mid),
    and adds s~_up z. The step to s~ = 0 returns D. eta = 0 is the ODE solver DPM-Solver++(2S).
    Network evaluations: 2 per step, 1 on the last."""
    check_eta(eta)
    times = check_times(times)
    draw = as_noise(noise)
    schedule = denoiser.schedule
    alphas, sigmas = walk_rates(schedule, times)
    edm = edm_sigmas(alphas, sigmas)
    y = x.float() / alphas[0]
    for i in range(len(times) - 1):
        image, _ = predict(denoiser, y * alphas[i], float(times[i]), alphas[i], sigmas[i], labels, clip)
        if callback is not None:
            callback(i, y * alphas[i], image)
        if edm[i + 1] == 0:
            return image * alphas[-1]
        down, up = ancestral_step(edm[i], edm[i + 1], eta)
        h = math.log(edm[i] / down)
        middle = math.sqrt(edm[i] * down)
        u = (middle / edm[i]) * y - math.expm1(-h / 2) * image
        image_middle = predict_scaled(denoiser, u, float(time_at_edm_sigma(schedule, middle)), labels, clip)
        y = (down / edm[i]) * y - math.expm1(-h) * image_middle
        if up > 0:
            y = y + up * draw(y)
    return y * alphas[-1]
