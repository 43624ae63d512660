"""ODE and SDE solvers in the EDM and log-SNR variables (Karras et al. 2022; Lu et al. 2022).

In the EDM variables x~ = x / alpha and s~ = sigma / alpha the probability-flow ODE is
dx~/ds~ = (x~ - D(x)) / s~, with D the denoiser's image estimate; the walk ends at s~ = 0."""

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
def euler(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None, clip=None) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 3 with Algorithm 1's
    first stage only). In these variables it is the same walk as DDIM with eta = 0."""
    times = check_times(times)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    edm = edm_sigmas(alphas, sigmas)
    y = x.float() / alphas[0]  # x~
    for i in range(len(times) - 1):
        image, _ = predict(denoiser, y * alphas[i], float(times[i]), alphas[i], sigmas[i], labels, clip)
        if callback is not None:
            callback(i, y * alphas[i], image)
        y = y + (edm[i + 1] - edm[i]) * (y - image) / edm[i]
    return y * alphas[-1]


@torch.no_grad()
def euler_ancestral(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
                    eta: float = 1.0, clip=None) -> Tensor:
    """Euler steps down to s_down, then fresh noise up to s_next (k-diffusion's ancestral
    sampler): s_up = eta sqrt(s_next^2 (s^2 - s_next^2) / s^2), s_down = sqrt(s_next^2 - s_up^2).
    With eta = 1 this is DDPM's posterior step written in these variables: the same walk as `ddpm`."""
    check_eta(eta)
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    edm = edm_sigmas(alphas, sigmas)
    y = x.float() / alphas[0]
    for i in range(len(times) - 1):
        image, _ = predict(denoiser, y * alphas[i], float(times[i]), alphas[i], sigmas[i], labels, clip)
        if callback is not None:
            callback(i, y * alphas[i], image)
        down, up = ancestral_step(edm[i], edm[i + 1], eta)
        y = y + (down - edm[i]) * (y - image) / edm[i]
        if up > 0:
            y = y + up * draw(y)
    return y * alphas[-1]


@torch.no_grad()
def heun(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
         churn: float = 0.0, churn_range: tuple[float, float] = (0.0, float("inf")), churn_noise: float = 1.0,
         clip=None) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2; Algorithm 1 with churn = 0):
    an Euler step, then a correction with the slope at its end, except on the last step to s~ = 0.
    With churn > 0, noise raises s~ by gamma = min(churn / n, sqrt(2) - 1) inside churn_range.
    Network evaluations: 2 per step, 1 on the last."""
    times = check_times(times)
    draw = as_noise(noise)
    schedule = denoiser.schedule
    alphas, sigmas = walk_rates(schedule, times)
    edm = edm_sigmas(alphas, sigmas)
    n = len(times) - 1
    y = x.float() / alphas[0]

    for i in range(n):
        s_cur, t_cur = edm[i], float(times[i])
        gamma = min(churn / n, math.sqrt(2) - 1) if churn > 0 and churn_range[0] <= s_cur <= churn_range[1] else 0.0
        if gamma > 0:  # Algorithm 2, lines 5-6: raise the noise level, add the matching noise
            s_hat = s_cur * (1 + gamma)
            t_cur = float(time_at_edm_sigma(schedule, s_hat))
            y = y + math.sqrt(s_hat**2 - s_cur**2) * churn_noise * draw(y)
            s_cur = s_hat
        image = predict_scaled(denoiser, y, t_cur, labels, clip)
        if callback is not None:
            a_cur = float(schedule.rates(torch.tensor(t_cur, dtype=torch.float64))[0])
            callback(i, y * a_cur, image)
        slope = (y - image) / s_cur
        y_next = y + (edm[i + 1] - s_cur) * slope
        if edm[i + 1] > 0:  # second-order correction
            slope_next = (y_next - predict_scaled(denoiser, y_next, float(times[i + 1]), labels, clip)) / edm[i + 1]
            y_next = y + (edm[i + 1] - s_cur) * (slope + slope_next) / 2
        y = y_next
    return y * alphas[-1]


@torch.no_grad()
def dpmpp_2m(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
             eta: float = 0.0, clip=None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), data prediction in lambda = log(alpha/sigma),
    h = lambda_s - lambda_t. The step t -> s with image estimate D is
        x_s = (sigma_s / sigma_t) e^(-eta h) x_t + alpha_s (1 - e^(-(1 + eta) h)) D
              + sigma_s sqrt(1 - e^(-2 eta h)) z,
    where after the first step D = (1 + 1/(2r)) D_t - 1/(2r) D_prev, r = h_prev / h (the
    multistep's linear extrapolation); the step to sigma = 0 takes D_t itself. eta = 0 is the
    probability-flow ODE solver; eta = 1 is SDE-DPM-Solver++(2M), the same authors' solver of the
    reverse SDE (diffusers' `sde-dpmsolver++`, midpoint form); eta between them interpolates as
    k-diffusion's dpmpp_2m_sde does."""
    check_eta(eta)
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    x = x.float()
    previous, h_previous = None, None
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        image, _ = predict(denoiser, x, float(times[i]), a_t, s_t, labels, clip)
        if callback is not None:
            callback(i, x, image)
        if s_s == 0:
            x = image
            break
        h = math.log(a_s / s_s) - math.log(a_t / s_t)
        estimate = image
        if previous is not None:
            r = h_previous / h
            estimate = (1 + 1 / (2 * r)) * image - (1 / (2 * r)) * previous
        x = (s_s / s_t * math.exp(-eta * h)) * x - a_s * math.expm1(-(1 + eta) * h) * estimate
        if eta > 0:
            x = x + s_s * math.sqrt(-math.expm1(-2 * eta * h)) * draw(x)
        previous, h_previous = image, h
    return x


@torch.no_grad()
def dpmpp_2m_sde(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
                 eta: float = 1.0, clip=None) -> Tensor:
    """SDE-DPM-Solver++(2M): `dpmpp_2m` with eta = 1, fresh noise on every step but the last."""
    return dpmpp_2m(denoiser, x, times, labels=labels, noise=noise, callback=callback, eta=eta, clip=clip)
