"""The first samplers: ancestral DDPM (Ho et al. 2020) and DDIM (Song et al. 2021), on any
decreasing times."""

from __future__ import annotations

import math

import torch

from .kernel import DDPM_VARIANCES, Callback, as_noise, check_eta, check_times, posterior_mean, predict, transition_variance, walk_rates

Tensor = torch.Tensor


@torch.no_grad()
def ddpm(
    denoiser,
    x: Tensor,
    times,
    *,
    labels: Tensor | None = None,
    noise=None,
    callback: Callback | None = None,
    variance: str = "posterior",
    clip=None,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) on any decreasing times.

    Step t -> s draws x_s ~ q(x_s | x_t, x_0 = predicted image), Ho et al. eq. 7 with
    beta_ts = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2 (1 - alpha_t^2 / alpha_s^2 on a
    variance-preserving schedule) so respaced walks work (Nichol & Dhariwal 2021, sec. 4):
        mean = alpha_s beta_ts / sigma_t^2 x_0 + (alpha_t / alpha_s) sigma_s^2 / sigma_t^2 x_t
        var  = beta_ts sigma_s^2 / sigma_t^2 ("posterior", beta-tilde) or beta_ts ("beta").
    No noise is added on a step to t = 0."""
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; expected one of {', '.join(DDPM_VARIANCES)}")
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    x = x.float()
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        image, _ = predict(denoiser, x, float(times[i]), a_t, s_t, labels, clip)
        if callback is not None:
            callback(i, x, image)
        mean, beta = posterior_mean(image, x, a_t, s_t, a_s, s_s)
        if s_s == 0:
            x = mean
        else:
            var = DDPM_VARIANCES[variance](beta, s_t, s_s)
            x = mean + math.sqrt(var) * draw(x)
    return x


@torch.no_grad()
def ddim(
    denoiser,
    x: Tensor,
    times,
    *,
    labels: Tensor | None = None,
    noise=None,
    callback: Callback | None = None,
    eta: float = 0.0,
    clip=None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_s = alpha_s x_0 + sqrt(sigma_s^2 - c^2) eps + c z, with
    c = eta sqrt(sigma_s^2 / sigma_t^2 beta_ts) (eq. 16; beta_ts as in `ddpm`). eta = 0 is the
    deterministic sampler; eta = 1 is DDPM ancestral sampling with the posterior variance."""
    check_eta(eta)
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    x = x.float()
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        image, eps = predict(denoiser, x, float(times[i]), a_t, s_t, labels, clip)
        if callback is not None:
            callback(i, x, image)
        c = 0.0 if eta == 0 else eta * math.sqrt(s_s**2 / s_t**2 * transition_variance(a_t, s_t, a_s, s_s))
        x = a_s * image + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
        if c > 0:
            x = x + c * draw(x)
    return x
