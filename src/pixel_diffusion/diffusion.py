"""The forward process, the denoiser wrapper and the training loss.

A noisy image is x_t = alpha x_0 + sigma eps (schedules.py). The network's one job is to split
x_t back into its image and noise. `Denoiser` hides which of the three equivalent quantities the
network predicts (noise eps, image x_0 or velocity v = alpha eps - sigma x_0; Salimans & Ho 2022)
and how it is told the noise level, so callers always receive both parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .schedules import Schedule, time_at_log_snr

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


PREDICTIONS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Split]] = {
    "noise": _from_noise,
    "image": _from_image,
    "velocity": _from_velocity,
}


# How the network is told the noise level: (schedule, t, alpha, sigma) -> (B,) float64.


def _timestep(schedule, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return schedule.timestep(t)  # 0-based index of a discrete schedule's grid, t T - 1


def _variance(schedule, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return sigma**2  # the Keras DDIM example's "noise variance"


def _log_snr(schedule, t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return 2 * (alpha.log() - sigma.log())


NOISE_INPUTS = {
    "timestep": _timestep,
    "variance": _variance,
    "log-snr": _log_snr,
}


def _check_choice(kind: str, value: str, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(options)}")


class Denoiser(nn.Module):
    """Wraps `net(x, noise_level, labels=None)` and its parameterisation:
    `denoiser(x_t, t, labels) -> Split(image, noise)` in float32, whatever the network predicts."""

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str = "noise", noise_input: str = "timestep"):
        super().__init__()
        _check_choice("prediction", prediction, PREDICTIONS)
        _check_choice("noise input", noise_input, NOISE_INPUTS)
        if noise_input == "timestep" and schedule.num_steps is None:
            raise ValueError(
                "noise input 'timestep' needs a discrete schedule; a continuous one takes 'variance' or 'log-snr'"
            )
        self.net, self.schedule = net, schedule
        self.prediction, self.noise_input = prediction, noise_input

    def forward(self, x: Tensor, t, labels: Tensor | None = None) -> Split:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        alpha, sigma = self.schedule.rates(t)
        level = NOISE_INPUTS[self.noise_input](self.schedule, t, alpha, sigma).float()
        out = self.net(x, level, labels)
        x32 = x.float()
        a, s = per_example(alpha, x32), per_example(sigma, x32)
        return PREDICTIONS[self.prediction](out.float(), x32, a, s)


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


# ---- loss -------------------------------------------------------------------------------------


# Where training draws its noise levels: (schedule, n, generator, device, loss) -> (B,) float64 times.


def _uniform_times(schedule: Schedule, n: int, generator, device, loss: DiffusionLoss) -> Tensor:
    # Discrete: a grid step uniformly; continuous: t ~ U(t_min, 1].
    if schedule.num_steps is not None:
        index = torch.randint(schedule.num_steps, (n,), generator=generator, device=device)
        return (index.double() + 1) / schedule.num_steps
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return 1 - u * (1 - schedule.t_min)


def _log_normal_times(schedule: Schedule, n: int, generator, device, loss: DiffusionLoss) -> Tensor:
    # Karras et al. 2022, table 1: ln(sigma / alpha) ~ N(P_mean, P_std^2), i.e. the log-SNR
    # lambda = -2 ln(sigma / alpha) ~ N(-2 P_mean, (2 P_std)^2); mapped to the time where the
    # schedule reaches it, and held inside its [t_min, 1] (a discrete schedule's times between
    # grid points are its interpolated rates).
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    lam = -2 * (loss.log_normal_mean + loss.log_normal_std * z)
    return time_at_log_snr(schedule, lam.cpu()).to(device).clamp(schedule.t_min, 1.0)


TIME_SAMPLERS = {"uniform": _uniform_times, "log-normal": _log_normal_times}

# What the loss compares, from a Split and the rates.
TARGETS: dict[str, Callable[[Split, Tensor, Tensor], Tensor]] = {
    "noise": lambda split, alpha, sigma: split.noise,
    "image": lambda split, alpha, sigma: split.image,
    "velocity": lambda split, alpha, sigma: alpha * split.noise - sigma * split.image,
}

# Squared error of each target relative to the image's: |d eps|^2 = snr |d x_0|^2 and
# |d v|^2 = (snr + 1) |d x_0|^2 (from x_t = alpha x_0 + sigma eps being fixed).
_IMAGE_ERROR_SCALE = {
    "noise": lambda snr: snr,
    "image": lambda snr: torch.ones_like(snr),
    "velocity": lambda snr: snr + 1,
}


def _distance_mse(a: Tensor, b: Tensor, loss: DiffusionLoss) -> Tensor:
    return (a - b).square()


def _distance_mae(a: Tensor, b: Tensor, loss: DiffusionLoss) -> Tensor:
    return (a - b).abs()


def _distance_huber(a: Tensor, b: Tensor, loss: DiffusionLoss) -> Tensor:
    # Smooth L1 at delta 1 (MindSpore's SmoothL1Loss): 0.5 d^2 / delta inside, |d| - delta / 2 outside.
    return F.smooth_l1_loss(a, b, reduction="none", beta=loss.huber_delta)


DISTANCES = {"mse": _distance_mse, "mae": _distance_mae, "huber": _distance_huber}


# Weightings, each stated as a weight on the image's squared error and divided by
# _IMAGE_ERROR_SCALE[target] so one setting means the same thing for every target.


def _min_snr(snr: Tensor, loss: DiffusionLoss) -> Tensor:
    # Hang et al. 2023, eq. 10: w = min(snr, gamma) on the image error.
    return snr.clamp(max=loss.min_snr_gamma)


def _p2(snr: Tensor, loss: DiffusionLoss) -> Tensor:
    # Choi et al. 2022, eq. 8: w = 1 / (k + snr)^gamma on the noise error.
    return snr / (loss.p2_k + snr) ** loss.p2_gamma


WEIGHTINGS = {"none": None, "min-snr": _min_snr, "p2": _p2}


@dataclass(frozen=True)
class DiffusionLoss:
    """`loss(denoiser, images, labels, generator) -> (B,)` per-example losses; the caller reduces.

    Each example draws a time and Gaussian noise, is noised in closed form, split by the
    denoiser, and compared with the truth in the space of `target` by `distance` (mean over
    pixels), then weighted by its signal-to-noise ratio."""

    target: str = "noise"
    distance: str = "mse"
    weighting: str = "none"
    time_sampling: str = "uniform"
    log_normal_mean: float = -1.2  # EDM's P_mean and P_std, for time_sampling "log-normal"
    log_normal_std: float = 1.2
    min_snr_gamma: float = 5.0
    p2_gamma: float = 1.0
    p2_k: float = 1.0
    huber_delta: float = 1.0

    def __post_init__(self):
        _check_choice("loss target", self.target, TARGETS)
        _check_choice("loss distance", self.distance, DISTANCES)
        _check_choice("loss weighting", self.weighting, WEIGHTINGS)
        _check_choice("time sampling", self.time_sampling, TIME_SAMPLERS)
        for name in ("min_snr_gamma", "p2_k", "huber_delta", "log_normal_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if not math.isfinite(self.log_normal_mean):
            raise ValueError(f"log_normal_mean must be a finite number; got {self.log_normal_mean}")
        if not self.p2_gamma >= 0:
            raise ValueError(f"p2_gamma must be >= 0; got {self.p2_gamma}")

    def __call__(
        self,
        denoiser: Denoiser,
        images: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        schedule, n = denoiser.schedule, images.shape[0]
        # Draw where the generator lives (a CPU generator serves a GPU batch too), then move.
        where = generator.device if generator is not None else images.device
        t = TIME_SAMPLERS[self.time_sampling](schedule, n, generator, where, self).to(images.device)  # (B,)
        kind = getattr(schedule, "noise", "gaussian")
        noise = draw_noise(kind, images.shape, generator=generator, device=where).to(images.device)
        images = images.float()
        alpha, sigma = schedule.rates(t)
        a, s = per_example(alpha, images), per_example(sigma, images)
        predicted = denoiser(a * images + s * noise, t, labels)

        target = TARGETS[self.target]
        error = DISTANCES[self.distance](target(predicted, a, s), target(Split(images, noise), a, s), self)
        loss = error.flatten(1).mean(1)  # (B,)
        weight = WEIGHTINGS[self.weighting]
        if weight is None:
            return loss
        snr = (alpha / sigma) ** 2
        return loss * (weight(snr, self) / _IMAGE_ERROR_SCALE[self.target](snr)).float()
