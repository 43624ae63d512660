"""Samplers: plain functions that walk from noise to an image.

    sampler(denoiser, x, times, *, labels=None, noise=None, callback=None, **options) -> x_0

`times` holds n + 1 strictly decreasing times ending at 0 (`schedules.sampling_times`); step i
evaluates the denoiser once at times[i] and moves x to times[i + 1]. The walk ends at clean data:
the final time 0 counts as alpha = 1, sigma = 0, so the last step returns the denoiser's image
estimate (for a schedule whose t = 0 is not fully clean, such as the Keras example's, that is what
it returns too). Coefficients are computed in float64 from the schedule; x stays float32.

Randomness comes in explicitly through `noise`: an `ImageNoise` (one stream per image, so a seed
gives the same image in any batch), a torch.Generator, an int seed, or None for torch's global
generator.

The kernel every sampler is written with (public, so a new sampler needs nothing private):
`check_times` validates a walk, `walk_rates` gives its (alpha, sigma) per time, `predict` makes
one network evaluation (optionally clipped), `posterior_mean` is q(x_s | x_t, x_0), and
`as_noise` turns the `noise` argument into a draw function. To add a sampler, write the function
and add one `SamplerEntry` to `SAMPLERS` (its evaluations per step; its options are read from its
keyword arguments); tests/test_samplers.py runs every entry against the closed-form Gaussian.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .diffusion import draw_noise
from .schedules import Schedule, sampling_times

Tensor = torch.Tensor
Callback = Callable[[int, Tensor, Tensor], None]  # (step, x_t, predicted image)


class ImageNoise:
    """Independent Gaussian streams, one per image: image k's draws depend only on `seeds[k]`.

    Draws are made on the CPU and moved, so a seed gives the same noise on every device."""

    def __init__(self, seeds: Sequence[int], kind: str = "gaussian"):
        self.generators = [torch.Generator().manual_seed(_stream_seed(s)) for s in seeds]
        self.kind = kind

    @classmethod
    def from_seed(cls, seed: int, indices: Sequence[int], kind: str = "gaussian") -> ImageNoise:
        """Streams for images `indices` of a run seeded with `seed`."""
        return cls([combine_seeds(seed, i) for i in indices], kind)

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"noise for {len(self.generators)} images asked for a batch of {like.shape[0]}")
        draws = [draw_noise(self.kind, like.shape[1:], generator=g) for g in self.generators]
        return torch.stack(draws).to(device=like.device, dtype=like.dtype)


def combine_seeds(seed: int, index: int) -> int:
    """A 63-bit seed derived from (seed, index): independent streams for images, steps, processes."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


def _stream_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seeds must be non-negative integers; got {seed!r}")
    return int(seed)


def as_noise(noise) -> Callable[[Tensor], Tensor]:
    """Normalise the `noise` argument to a function `like -> standard normal tensor like it`."""
    if noise is None:
        return torch.randn_like
    if isinstance(noise, torch.Generator):
        return lambda like: torch.randn(like.shape, generator=noise, device=noise.device).to(like)
    if isinstance(noise, (int, np.integer)) and not isinstance(noise, bool):
        return as_noise(torch.Generator().manual_seed(_stream_seed(noise)))
    if callable(noise):
        return noise
    raise ValueError(f"noise must be an ImageNoise, a torch.Generator, an int seed or None; got {type(noise).__name__}")


def check_times(times) -> Tensor:
    """Validate a walk: 1-D, at least two entries, strictly decreasing, within [0, 1], ending at 0."""
    times = torch.as_tensor(times, dtype=torch.float64).cpu()
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must be a 1-D tensor of at least 2 entries; got shape {tuple(times.shape)}")
    if bool((times[1:] >= times[:-1]).any()):
        raise ValueError("times must be strictly decreasing")
    if float(times[0]) > 1 or float(times[-1]) != 0:
        raise ValueError(f"times must start at most at 1 and end at 0; got {float(times[0])} ... {float(times[-1])}")
    return times


def walk_rates(schedule: Schedule, times: Tensor) -> tuple[list[float], list[float]]:
    """The rates (alpha, sigma) at each time of a walk, as floats; the last is (1, 0), clean data."""
    alpha, sigma = schedule.rates(times)
    alpha, sigma = alpha.tolist(), sigma.tolist()
    alpha[-1], sigma[-1] = 1.0, 0.0  # the walk ends at clean data
    return alpha, sigma


def predict(denoiser, x: Tensor, t: float, alpha: float, sigma: float, labels, clip) -> tuple[Tensor, Tensor]:
    """One network evaluation of a walk: the denoiser's (image, noise) for x at time t (rates
    alpha, sigma), the time broadcast over the batch; with `clip`, the image is clamped to the data range
    and the noise re-derived from it so the two stay consistent with x (as in Nichol & Dhariwal's
    code; diffusers' DDIM keeps the unclipped noise unless use_clipped_model_output=True)."""
    image, noise = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float64), labels)
    if clip is not None:
        low, high = (torch.as_tensor(c, device=x.device, dtype=image.dtype) for c in clip)
        image = torch.maximum(torch.minimum(image, high), low)
        noise = (x - alpha * image) / sigma
    return image, noise


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
    beta_ts = 1 - alpha_t^2 / alpha_s^2 so respaced walks work (Nichol & Dhariwal 2021, sec. 4):
        mean = alpha_s beta_ts / sigma_t^2 x_0 + (alpha_t / alpha_s) sigma_s^2 / sigma_t^2 x_t
        var  = beta_ts sigma_s^2 / sigma_t^2 ("posterior", beta-tilde) or beta_ts ("beta").
    No noise is added on the last step."""
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
        if i == len(times) - 2:
            x = mean
        else:
            var = DDPM_VARIANCES[variance](beta, s_t, s_s)
            x = mean + math.sqrt(var) * draw(x)
    return x


def posterior_mean(image: Tensor, x: Tensor, a_t: float, s_t: float, a_s: float, s_s: float) -> tuple[Tensor, float]:
    """Mean of q(x_s | x_t, x_0 = image) and beta_ts = 1 - alpha_t^2 / alpha_s^2 (Ho et al. eq. 7)."""
    beta = -math.expm1(2 * (math.log(a_t) - math.log(a_s)))
    return (a_s * beta / s_t**2) * image + (a_t / a_s * s_s**2 / s_t**2) * x, beta


DDPM_VARIANCES = {
    "posterior": lambda beta, s_t, s_s: beta * s_s**2 / s_t**2,
    "beta": lambda beta, s_t, s_s: beta,
}


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
    c = eta sqrt(sigma_s^2 / sigma_t^2 (1 - alpha_t^2 / alpha_s^2)) (eq. 16). eta = 0 is the
    deterministic sampler; eta = 1 is DDPM ancestral sampling with the posterior variance."""
    if not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
        raise ValueError(f"eta must lie in [0, 1]; got {eta!r}")
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    x = x.float()
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        image, eps = predict(denoiser, x, float(times[i]), a_t, s_t, labels, clip)
        if callback is not None:
            callback(i, x, image)
        c = 0.0 if eta == 0 else eta * math.sqrt(s_s**2 / s_t**2 * -math.expm1(2 * (math.log(a_t) - math.log(a_s))))
        x = a_s * image + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
        if c > 0:
            x = x + c * draw(x)
    return x


# ---- ODE and SDE solvers (Karras et al. 2022; Lu et al. 2022) ----------------------------------
# In the EDM variables x~ = x / alpha and s~ = sigma / alpha the probability-flow ODE is
# dx~/ds~ = (x~ - D(x)) / s~, with D the denoiser's image estimate; the walk ends at s~ = 0.


def _scaled(alphas: list[float], sigmas: list[float]) -> list[float]:
    return [s / a for a, s in zip(alphas, sigmas)]


@torch.no_grad()
def euler(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None, clip=None) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, eq. 3 with Algorithm 1's
    first stage only). In these variables it is the same walk as DDIM with eta = 0."""
    times = check_times(times)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    edm = _scaled(alphas, sigmas)
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
    if not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
        raise ValueError(f"eta must lie in [0, 1]; got {eta!r}")
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    edm = _scaled(alphas, sigmas)
    y = x.float() / alphas[0]
    for i in range(len(times) - 1):
        image, _ = predict(denoiser, y * alphas[i], float(times[i]), alphas[i], sigmas[i], labels, clip)
        if callback is not None:
            callback(i, y * alphas[i], image)
        up = min(edm[i + 1], eta * math.sqrt(edm[i + 1] ** 2 * (edm[i] ** 2 - edm[i + 1] ** 2) / edm[i] ** 2))
        down = math.sqrt(edm[i + 1] ** 2 - up**2)
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
    edm = _scaled(alphas, sigmas)
    n = len(times) - 1
    y = x.float() / alphas[0]

    def estimate(y_, t_):
        # The image estimate D at time t_, from x~ scaled back to x.
        a_, s_ = schedule.rates(torch.tensor(float(t_), dtype=torch.float64))
        return predict(denoiser, y_ * float(a_), float(t_), float(a_), float(s_), labels, clip)[0]

    for i in range(n):
        s_cur, t_cur = edm[i], float(times[i])
        gamma = min(churn / n, math.sqrt(2) - 1) if churn > 0 and churn_range[0] <= s_cur <= churn_range[1] else 0.0
        if gamma > 0:  # Algorithm 2, lines 5-6: raise the noise level, add the matching noise
            s_hat = s_cur * (1 + gamma)
            t_cur = float(time_at_edm_sigma(schedule, s_hat))
            y = y + math.sqrt(s_hat**2 - s_cur**2) * churn_noise * draw(y)
            s_cur = s_hat
        image = estimate(y, t_cur)
        if callback is not None:
            a_cur = float(schedule.rates(torch.tensor(t_cur, dtype=torch.float64))[0])
            callback(i, y * a_cur, image)
        slope = (y - image) / s_cur
        y_next = y + (edm[i + 1] - s_cur) * slope
        if edm[i + 1] > 0:  # second-order correction
            slope_next = (y_next - estimate(y_next, float(times[i + 1]))) / edm[i + 1]
            y_next = y + (edm[i + 1] - s_cur) * (slope + slope_next) / 2
        y = y_next
    return y * alphas[-1]


def time_at_edm_sigma(schedule, edm_sigma: float) -> Tensor:
    from .schedules import time_at_log_snr

    return time_at_log_snr(schedule, torch.tensor(-2 * math.log(edm_sigma), dtype=torch.float64))


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
    if not (isinstance(eta, (int, float)) and 0 <= eta <= 1):
        raise ValueError(f"eta must lie in [0, 1]; got {eta!r}")
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


@dataclass(frozen=True)
class SamplerEntry:
    """A sampler in the registry: its walk, the network evaluations `steps` steps cost, and a
    one-line description. Calling the entry calls the walk."""

    walk: Callable[..., Tensor]
    evaluations: Callable[[int], int] = lambda steps: steps
    description: str = ""

    @property
    def options(self) -> dict[str, object]:
        """The walk's own keyword options (beyond labels, noise, callback) and their defaults."""
        return {name: p.default for name, p in inspect.signature(self.walk).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in CONTRACT}

    def __call__(self, denoiser, x: Tensor, times, **kwargs) -> Tensor:
        return self.walk(denoiser, x, times, **kwargs)


CONTRACT = ("labels", "noise", "callback")  # keyword arguments every sampler takes

# The sampler registry: the CLI's choices, `evaluations` and the tests all read it. A new
# sampler is one function of the contract above plus one entry here.
SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry(ddpm, description="ancestral sampling (Ho et al. 2020)"),
    "ddim": SamplerEntry(ddim, description="DDIM, deterministic at eta 0 (Song et al. 2021)"),
    "euler": SamplerEntry(euler, description="Euler on the probability-flow ODE"),
    "euler-ancestral": SamplerEntry(euler_ancestral, description="Euler with fresh noise per step (k-diffusion)"),
    "heun": SamplerEntry(heun, lambda steps: 2 * steps - 1, "Heun's second-order method (Karras et al. 2022)"),
    "dpmpp-2m": SamplerEntry(dpmpp_2m, description="DPM-Solver++(2M) (Lu et al. 2022)"),
    "dpmpp-2m-sde": SamplerEntry(dpmpp_2m_sde, description="SDE-DPM-Solver++(2M)"),
}


def get_sampler(name: str) -> SamplerEntry:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations a sampler makes in `steps` steps (its registry entry says)."""
    return get_sampler(sampler).evaluations(steps)


def samplers_with_option(option: str) -> list[str]:
    """The samplers that take a keyword option, such as eta."""
    return [name for name, entry in SAMPLERS.items() if option in entry.options]


def sample(
    denoiser,
    shape: Sequence[int],
    n: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    spacing: str = "uniform",
    sigma_max: float | None = None,
    seed: int = 0,
    labels: Tensor | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
    callback: Callback | None = None,
    **options,
) -> Tensor:
    """Draw n images of `shape` (C, H, W) from pure noise, in batches; float32 (n, C, H, W) on the CPU.

    Image k starts from and draws only the noise of stream (seed, k), so it is the same image
    whatever the batch size. `spacing` and `sigma_max` choose the times (`sampling_times`)."""
    from tqdm.auto import tqdm

    walk = get_sampler(sampler)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of images must be a positive integer; got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer; got {batch_size!r}")
    times = sampling_times(denoiser.schedule, steps, spacing, sigma_max)
    batches = range(0, n, batch_size)
    out = []
    with tqdm(total=len(batches) * steps, desc=f"sampling ({sampler}, {steps} steps)", disable=not progress) as bar:

        def step_callback(i, x_t, image):
            bar.update(1)
            if callback is not None:
                callback(i, x_t, image)

        for start in batches:
            indices = range(start, min(start + batch_size, n))
            noise = ImageNoise.from_seed(seed, indices, getattr(denoiser.schedule, "noise", "gaussian"))
            x = noise(torch.empty(len(indices), *shape, device=device))
            batch_labels = None if labels is None else labels[start : start + len(indices)].to(device)
            x = walk(denoiser, x, times, labels=batch_labels, noise=noise, callback=step_callback, **options)
            out.append(x.cpu())
    return torch.cat(out)
