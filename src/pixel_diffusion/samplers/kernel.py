"""The kernel every sampler is written with: the noise streams, the checks of a walk, its rates,
one network evaluation, and the DDPM posterior. Public, so that a new sampler needs nothing private."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..diffusion import draw_noise
from ..schedules import Schedule, time_at_log_snr

Tensor = torch.Tensor
Callback = Callable[[int, Tensor, Tensor], None]  # (step, x_t, predicted image)


class ImageNoise:
    """Independent Gaussian streams, one per image: image k's draws depend only on `seeds[k]`.

    Draws are made where the generators live (`device`, the CPU unless told), so a seed gives the
    same noise in any batch and on any machine with that kind of device; the CPU's and a GPU's
    generators make different streams of the same seed. On a GPU, drawing there spares every
    step a copy from the host."""

    def __init__(self, seeds: Sequence[int], kind: str = "gaussian", device: str | torch.device = "cpu"):
        self.generators = [torch.Generator(device).manual_seed(_stream_seed(s)) for s in seeds]
        self.kind, self.device = kind, torch.device(device)

    @classmethod
    def from_seed(cls, seed: int, indices: Sequence[int], kind: str = "gaussian",
                  device: str | torch.device = "cpu") -> ImageNoise:
        """Streams for images `indices` of a run seeded with `seed`."""
        return cls([combine_seeds(seed, i) for i in indices], kind, device)

    def __call__(self, like: Tensor) -> Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"noise for {len(self.generators)} images asked for a batch of {like.shape[0]}")
        draws = [draw_noise(self.kind, like.shape[1:], generator=g, device=self.device) for g in self.generators]
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
    """Validate a walk: 1-D, at least two entries, strictly decreasing, within [0, 1]. It ends at
    0 (an image) or earlier (x at that time, for another walk to go on from)."""
    times = torch.as_tensor(times, dtype=torch.float64).cpu()
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"times must be a 1-D tensor of at least 2 entries; got shape {tuple(times.shape)}")
    if bool((times[1:] >= times[:-1]).any()):
        raise ValueError("times must be strictly decreasing")
    if float(times[0]) > 1 or float(times[-1]) < 0:
        raise ValueError(f"times must lie in [0, 1]; got {float(times[0])} ... {float(times[-1])}")
    return times


def walk_rates(schedule: Schedule, times: Tensor) -> tuple[list[float], list[float]]:
    """The rates (alpha, sigma) at each time of a walk, as floats; a walk that ends at t = 0 ends at
    (1, 0), clean data, whatever the schedule's own t = 0."""
    alpha, sigma = schedule.rates(times)
    alpha, sigma = alpha.tolist(), sigma.tolist()
    if float(times[-1]) == 0:
        alpha[-1], sigma[-1] = 1.0, 0.0
    return alpha, sigma


def start_scale(schedule: Schedule, t: float) -> float:
    """The standard deviation of x_t at a walk's first time for data of unit variance,
    sqrt(alpha^2 + sigma^2), that pure noise is scaled by: 1 on a variance-preserving schedule, under
    1 on a straight one (alpha + sigma = 1) wherever a walk starts before t = 1 (the karras and log-snr
    spacings start at EDM sigma 80: t = 0.988 on rectified flow, where it is 0.988)."""
    if getattr(schedule, "variance_preserving", True):
        return 1.0
    alpha, sigma = (float(r) for r in schedule.rates(torch.tensor(float(t), dtype=torch.float64)))
    return math.sqrt(alpha**2 + sigma**2)


def predict(denoiser, x: Tensor, t: float, alpha: float, sigma: float, labels, clip) -> tuple[Tensor, Tensor]:
    """One network evaluation of a walk: the denoiser's (image, noise) for x at time t (rates
    alpha, sigma), the time broadcast over the batch; with `clip`, the image is clamped to the data range
    and the noise re-derived from it so the two stay consistent with x (as in Nichol & Dhariwal's
    code; diffusers' DDIM keeps the unclipped noise unless use_clipped_model_output=True)."""
    image, noise = denoiser(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.float64), labels)
    if clip is not None:
        image = clip_image(image, clip)
        noise = (x - alpha * image) / sigma
    return image, noise


def clip_image(image: Tensor, clip) -> Tensor:
    """The image clamped to the data range `clip` = (low, high): numbers, or tensors that broadcast
    against the image (per-channel bounds of standardised colour data)."""
    low, high = (torch.as_tensor(c, device=image.device, dtype=image.dtype) for c in clip)
    return torch.maximum(torch.minimum(image, high), low)



def predict_scaled(denoiser, y: Tensor, t: float, labels, clip) -> Tensor:
    """The image estimate D at time t for the EDM variable y = x / alpha (t anywhere in [0, 1],
    not only on the walk's grid)."""
    alpha, sigma = (float(r) for r in denoiser.schedule.rates(torch.tensor(float(t), dtype=torch.float64)))
    return predict(denoiser, y * alpha, float(t), alpha, sigma, labels, clip)[0]


def transition_variance(a_t: float, s_t: float, a_s: float, s_s: float) -> float:
    """beta_ts, the variance of x_t given x_s (s < t): x_t = (alpha_t / alpha_s) x_s + N(0, beta_ts)
    with beta_ts = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2 on any schedule; 1 - alpha_t^2 / alpha_s^2
    where alpha^2 + sigma^2 = 1 (Ho et al. 2020's beta over a respaced step)."""
    ratio = a_t / a_s
    return max(s_t**2 - (ratio * s_s) ** 2, 0.0)


def posterior_mean(image: Tensor, x: Tensor, a_t: float, s_t: float, a_s: float, s_s: float) -> tuple[Tensor, float]:
    """Mean of q(x_s | x_t, x_0 = image) and beta_ts (`transition_variance`; Ho et al. eq. 7 on any schedule)."""
    beta = transition_variance(a_t, s_t, a_s, s_s)
    return (a_s * beta / s_t**2) * image + (a_t / a_s * s_s**2 / s_t**2) * x, beta


DDPM_VARIANCES = {
    "posterior": lambda beta, s_t, s_s: beta * s_s**2 / s_t**2,
    "beta": lambda beta, s_t, s_s: beta,
}



def edm_sigmas(alphas: list[float], sigmas: list[float]) -> list[float]:
    """The EDM noise levels s~ = sigma / alpha of a walk's rates (Karras et al. 2022)."""
    return [s / a for a, s in zip(alphas, sigmas)]


def log_snrs(alphas: list[float], sigmas: list[float]) -> list[float]:
    """lambda = log(alpha / sigma) at each time of a walk (DPM-Solver's lambda: half the log-SNR
    log(alpha^2 / sigma^2) that `schedules.time_at_log_snr` takes); +inf at clean data."""
    return [math.log(a / s) if s > 0 else math.inf for a, s in zip(alphas, sigmas)]


def ancestral_step(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """k-diffusion's split of an EDM step s -> s_next into a deterministic step down to s_down and
    fresh noise of size s_up: s_up = eta sqrt(s_next^2 (s^2 - s_next^2) / s^2), s_down^2 + s_up^2 = s_next^2."""
    up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    return math.sqrt(s_next**2 - up**2), up


def check_eta(eta) -> None:
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and 0 <= eta <= 1):
        raise ValueError(f"eta must lie in [0, 1]; got {eta!r}")


def time_at_edm_sigma(schedule, edm_sigma: float) -> Tensor:
    """The time at which the schedule's sigma / alpha equals edm_sigma."""
    return time_at_log_snr(schedule, torch.tensor(-2 * math.log(edm_sigma), dtype=torch.float64))
