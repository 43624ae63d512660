"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1)."""

from __future__ import annotations

import torch

from .kernel import Callback, as_noise, check_times, predict, walk_rates

Tensor = torch.Tensor


@torch.no_grad()
def consistency(
    denoiser,
    x: Tensor,
    times,
    *,
    labels: Tensor | None = None,
    noise=None,
    callback: Callback | None = None,
    clip=None,
) -> Tensor:
    """Each step maps x at times[i] to the start of its ODE path in one evaluation (a consistency
    model's image estimate, f(x_t, t)) and noises that image afresh to the next time:
        x_s = alpha_s f(x_t, t) + sigma_s z,   z ~ N(0, I).
    One step from pure noise is one-step generation; the later steps spend evaluations to correct
    it, at the intermediate noise levels the walk names (`Walk.sigmas`). Ending at 0 returns the
    last image estimate; on a model that is not a consistency model it returns blurred images."""
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    x = x.float()
    for i in range(len(times) - 1):
        image, _ = predict(denoiser, x, float(times[i]), alphas[i], sigmas[i], labels, clip)
        if callback is not None:
            callback(i, x, image)
        x = alphas[i + 1] * image
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * draw(x)
    return x
