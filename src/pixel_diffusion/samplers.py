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
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

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
    def from_seed(cls, seed: int, indices: Sequence[int], kind: str = "gaussian") -> "ImageNoise":
        """Streams for images `indices` of a run seeded with `seed`."""
        return cls([_combine(seed, i) for i in indices], kind)

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"noise for {len(self.generators)} images asked for a batch of {like.shape[0]}")
        draws = [draw_noise(self.kind, like.shape[1:], generator=g) for g in self.generators]
        return torch.stack(draws).to(device=like.device, dtype=like.dtype)


def _combine(seed: int, index: int) -> int:
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


def _walk_rates(schedule: Schedule, times: Tensor) -> tuple[list[float], list[float]]:
    alpha, sigma = schedule.rates(times)
    alpha, sigma = alpha.tolist(), sigma.tolist()
    alpha[-1], sigma[-1] = 1.0, 0.0  # the walk ends at clean data
    return alpha, sigma


def _predict(denoiser, x: Tensor, t: float, alpha: float, sigma: float, labels, clip) -> tuple[Tensor, Tensor]:
    """The denoiser's (image, noise) at time t; with `clip`, the image is clamped to the data range
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
    alphas, sigmas = _walk_rates(denoiser.schedule, times)
    x = x.float()
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        image, _ = _predict(denoiser, x, float(times[i]), a_t, s_t, labels, clip)
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
    alphas, sigmas = _walk_rates(denoiser.schedule, times)
    x = x.float()
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        image, eps = _predict(denoiser, x, float(times[i]), a_t, s_t, labels, clip)
        if callback is not None:
            callback(i, x, image)
        c = 0.0 if eta == 0 else eta * math.sqrt(s_s**2 / s_t**2 * -math.expm1(2 * (math.log(a_t) - math.log(a_s))))
        x = a_s * image + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
        if c > 0:
            x = x + c * draw(x)
    return x


SAMPLERS = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str):
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(
    denoiser,
    shape: Sequence[int],
    n: int,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    spacing: str = "uniform",
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
    whatever the batch size."""
    from tqdm.auto import tqdm

    walk = get_sampler(sampler)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of images must be a positive integer; got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer; got {batch_size!r}")
    times = sampling_times(denoiser.schedule, steps, spacing)
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
