"""The forward process and the denoiser wrapper (the training objectives are in objectives.py).

A noisy image is x_t = alpha x_0 + sigma eps (schedules.py). The network's one job is to split
x_t back into its image and noise. `Denoiser` hides which of the three equivalent quantities the
network predicts (noise eps, image x_0 or velocity v = alpha eps - sigma x_0; Salimans & Ho 2022)
and how it is told the noise level, so callers always receive both parts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from .schedules import Schedule

Tensor = torch.Tensor


class Split(NamedTuple):
    """A noisy image's two parts, as estimated by a denoiser; float32, shaped like x_t."""

    image: Tensor
    noise: Tensor


def per_example(rate: Tensor, like: Tensor) -> Tensor:
    """(B,) rates -> (B, 1, 1, ...) in like's dtype, to broadcast over an image batch."""
    return rate.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# ---- forward process --------------------------------------------------------------------------


def draw_noise(kind: str, shape, *, generator=None, device=None) -> Tensor:
    """Standard Gaussian noise, or uniform over [-1, 1] for the uniform-mixing corruption."""
    if kind == "uniform":
        return torch.rand(shape, generator=generator, device=device) * 2 - 1
    return torch.randn(shape, generator=generator, device=device)


def add_noise(schedule: Schedule, images: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Sample q(x_t | x_0) in closed form: x_t = alpha(t) x_0 + sigma(t) eps; t is (B,) or scalar."""
    t = torch.as_tensor(t, device=images.device).expand(images.shape[0])
    alpha, sigma = schedule.rates(t)
    return per_example(alpha, images) * images + per_example(sigma, images) * noise


def forward_chain(
    schedule, images: Tensor, keep: Sequence[int], *, generator: torch.Generator | None = None
) -> Tensor:
    """Run the Markov chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) eps_i (Ho et al. 2020, eq. 2)
    of a discrete schedule and return the states after the steps in `keep` (0 is the input).

    Returns (len(keep), *images.shape). The noise is drawn on `generator`'s device."""
    betas = getattr(schedule, "betas", None)
    if betas is None:
        raise ValueError("the step-by-step chain needs a discrete schedule (one with betas)")
    keep = [int(k) for k in keep]
    if any(k < 0 or k > len(betas) for k in keep):
        raise ValueError(f"chain steps must lie in 0..{len(betas)}; got {keep}")
    device = generator.device if generator is not None else images.device
    states, x = {}, images.clone()
    if 0 in keep:
        states[0] = x.clone()
    for i in range(1, max(keep, default=0) + 1):
        beta = float(betas[i - 1])
        eps = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
        x = (1 - beta) ** 0.5 * x + beta**0.5 * eps
        if i in keep:
            states[i] = x.clone()
    return torch.stack([states[k] for k in keep])


# ---- parameterisation -------------------------------------------------------------------------
# Network output -> Split, given x_t and the rates (all float32, broadcast per example).


def _from_noise(eps: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Split:
    return Split((x - sigma * eps) / alpha, eps)


def _from_image(image: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Split:
    return Split(image, (x - alpha * image) / sigma)


def _from_velocity(v: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Split:
    # v = alpha eps - sigma x_0 and x_t = alpha x_0 + sigma eps, with alpha^2 + sigma^2 = 1.
    return Split(alpha * x - sigma * v, sigma * x + alpha * v)


def _from_flow(u: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor) -> Split:
    # u = eps - x_0, the velocity of the straight path; from x_t = alpha x_0 + sigma eps:
    # x - sigma u = (alpha + sigma) x_0 and x + alpha u = (alpha + sigma) eps, on any schedule.
    total = alpha + sigma
    return Split((x - sigma * u) / total, (x + alpha * u) / total)


PREDICTIONS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Split]] = {
    "noise": _from_noise,
    "image": _from_image,
    "velocity": _from_velocity,
    "flow": _from_flow,
}
# The parts that hold only where alpha^2 + sigma^2 = 1 (schedules' `variance_preserving`).
NEEDS_VARIANCE_PRESERVING = {"velocity": "v = alpha eps - sigma x_0 splits x_t only where alpha^2 + sigma^2 = 1"}


def check_variance_preserving(what: str, name: str, schedule) -> None:
    """Refuse, in one line, a prediction or target that needs a variance-preserving schedule on one
    that is not (rectified flow, uniform mixing)."""
    if name in NEEDS_VARIANCE_PRESERVING and not getattr(schedule, "variance_preserving", True):
        raise ValueError(f"{what} {name!r} needs a variance-preserving schedule ({NEEDS_VARIANCE_PRESERVING[name]}); "
                         f"this one is straight (alpha + sigma = 1): use 'flow' (eps - x_0) or 'noise'")


# How the network is told the noise level: (schedule, t, alpha, sigma) -> (B,) float64.


def _timestep(schedule, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return schedule.timestep(t)  # 0-based index of a discrete schedule's grid, t T - 1


def _variance(schedule, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return sigma**2  # the Keras DDIM example's "noise variance"


def _log_snr(schedule, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return 2 * (alpha.log() - sigma.log())


def _time(schedule, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return 1000 * t  # the time on the 0..1000 scale of the timestep embedding (SD3's flow models)


NOISE_INPUTS = {
    "timestep": _timestep,
    "variance": _variance,
    "log-snr": _log_snr,
    "time": _time,
}


def _check_choice(kind: str, value: str, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(options)}")


class Denoiser(nn.Module):
    """Wraps `net(x, noise_level, labels=None)` and its parameterisation:
    `denoiser(x_t, t, labels) -> Split(image, noise)` in float32, whatever the network predicts.

    A consistency model (`boundary` = its smallest noise level sigma_min, in EDM's sigma/alpha)
    maps x_t to the start of its ODE path, f(x_t, t) = c x_t / alpha + (1 - c) x0_hat with
    c = min(1, (sigma_min / (sigma/alpha))^2): f is x_t / alpha exactly at sigma_min (the boundary
    condition of Song et al. 2023, eq. 3, held by construction) and the network's own estimate a
    few sigma_min above it, so a student starts as its teacher."""

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "noise", noise_input: str = "timestep",
                 boundary: float | None = None):
        super().__init__()
        _check_choice("prediction", prediction, PREDICTIONS)
        _check_choice("noise input", noise_input, NOISE_INPUTS)
        check_variance_preserving("prediction", prediction, schedule)
        if noise_input == "timestep" and schedule.num_steps is None:
            raise ValueError(
                "noise input 'timestep' needs a discrete schedule; a continuous one takes 'variance' or 'log-snr'"
            )
        if boundary is not None and not 0 < boundary < 1:
            raise ValueError(f"a consistency model's smallest noise level must lie in (0, 1); got {boundary!r}")
        self.net, self.schedule = net, schedule
        self.prediction, self.noise_input, self.boundary = prediction, noise_input, boundary

    def forward(self, x: Tensor, t, labels: Tensor | None = None) -> Split:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        alpha, sigma = self.schedule.rates(t)
        level = NOISE_INPUTS[self.noise_input](self.schedule, t, alpha, sigma).float()
        out = self.net(x, level, labels)
        x32 = x.float()
        a, s = per_example(alpha, x32), per_example(sigma, x32)
        split = PREDICTIONS[self.prediction](out.float(), x32, a, s)
        return split if self.boundary is None else _at_boundary(split, x32, a, s, self.boundary)


def _at_boundary(split: Split, x: Tensor, alpha: Tensor, sigma: Tensor, sigma_min: float) -> Split:
    # c = min(1, (sigma_min / s~)^2) with s~ = sigma / alpha; at s~ <= sigma_min f is x / alpha.
    c = (sigma_min * alpha / sigma).square().clamp(max=1)
    image = c * x / alpha + (1 - c) * split.image
    return Split(image, (x - alpha * image) / sigma)


class Guided(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022): split = u + w (c - u), where c is the split
    given the labels and u the split given the "no label" index; w = 1 is plain conditioning."""

    def __init__(self, denoiser: Denoiser, scale: float, null_label: int):
        super().__init__()
        self.denoiser, self.scale, self.null_label = denoiser, scale, null_label
        self.schedule = denoiser.schedule

    def forward(self, x: Tensor, t, labels: Tensor | None = None) -> Split:
        if labels is None or self.scale == 1:
            return self.denoiser(x, t, labels)
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        both = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, self.null_label)]))
        (c_image, u_image), (c_noise, u_noise) = both.image.chunk(2), both.noise.chunk(2)
        return Split(u_image + self.scale * (c_image - u_image), u_noise + self.scale * (c_noise - u_noise))
