"""Training objectives: what one step asks of the model, as a registry (`OBJECTIVES`).

An objective is a frozen dataclass with a `kind`. Called as
`objective(denoiser, images, labels, generator, **parts) -> (B,)` per-example losses (the caller
reduces), it draws its own times and noise, then `objective.loss(denoiser, images, labels, t,
noise)` builds x_t and compares the denoiser's split with its target: the draw (a generator,
which torch.compile cannot trace) stays outside the graph, and the loss is one graph
(tests/test_graphs.py). `needs` names the parts of the model bundle it takes besides the denoiser (none for
diffusion and flow matching; consistency distillation takes its frozen teacher), and `check(schedule, prediction)`
refuses, in one line, a model description it cannot train.

- `Diffusion`: x_t = alpha x_0 + sigma eps on any schedule; a noise, image or velocity target,
  MSE/MAE/Huber, min-SNR or P2 weighting, uniform or log-normal noise levels.
- `Consistency`: a consistency model distilled from a frozen teacher's ODE, or tuned on data
  (Song et al. 2023; Geng et al. 2024), its student a Denoiser with a boundary.
- `FlowMatching`: the straight path x_t = (1 - t) x_0 + t eps (the `rectified-flow` schedule) and
  its velocity u = eps - x_0 (Lipman et al. 2023; Liu et al. 2023), with logit-normal or uniform
  times (Esser et al. 2024, sec. 3.1). The samplers walk such a model through the same split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from .diffusion import Denoiser, Split, check_variance_preserving, draw_noise, per_example
from .schedules import Schedule, time_at_log_snr
from .typed import read

Tensor = torch.Tensor


def _check_choice(kind: str, value: str, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {', '.join(options)}")


# ---- times ------------------------------------------------------------------------------------
# Where training draws its noise levels: (schedule, n, generator, device, objective) -> (B,) float64 times.


def _uniform_times(schedule: Schedule, n: int, generator, device, objective) -> Tensor:
    # Discrete: a grid step uniformly; continuous: t ~ U(t_min, 1].
    if schedule.num_steps is not None:
        index = torch.randint(schedule.num_steps, (n,), generator=generator, device=device)
        return (index.double() + 1) / schedule.num_steps
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    return 1 - u * (1 - schedule.t_min)


def _log_normal_times(schedule: Schedule, n: int, generator, device, objective) -> Tensor:
    # Karras et al. 2022, table 1: ln(sigma / alpha) ~ N(P_mean, P_std^2), i.e. the log-SNR
    # lambda = -2 ln(sigma / alpha) ~ N(-2 P_mean, (2 P_std)^2); mapped to the time where the
    # schedule reaches it, and held inside its [t_min, 1] (a discrete schedule's times between
    # grid points are its interpolated rates).
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    lam = -2 * (objective.log_normal_mean + objective.log_normal_std * z)
    return time_at_log_snr(schedule, lam.cpu()).to(device).clamp(schedule.t_min, 1.0)


def _logit_normal_times(schedule: Schedule, n: int, generator, device, objective) -> Tensor:
    # Esser et al. 2024, eq. 19: t = sigmoid(u), u ~ N(m, s^2); held inside [t_min, 1].
    z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
    return torch.sigmoid(objective.logit_normal_mean + objective.logit_normal_std * z).clamp(schedule.t_min, 1.0)


TIME_SAMPLERS = {"uniform": _uniform_times, "log-normal": _log_normal_times, "logit-normal": _logit_normal_times}


# ---- what is compared, and how ----------------------------------------------------------------

# A Split's coordinate the diffusion objective compares, given the rates.
TARGETS: dict[str, Callable[[Split, Tensor, Tensor], Tensor]] = {
    "noise": lambda split, alpha, sigma: split.noise,
    "image": lambda split, alpha, sigma: split.image,
    "velocity": lambda split, alpha, sigma: alpha * split.noise - sigma * split.image,
}

# Squared error of each target relative to the image's: |d eps|^2 = snr |d x_0|^2 and
# |d v|^2 = (snr + 1) |d x_0|^2 (from x_t = alpha x_0 + sigma eps being fixed; v on a
# variance-preserving schedule).
_IMAGE_ERROR_SCALE = {
    "noise": lambda snr: snr,
    "image": lambda snr: torch.ones_like(snr),
    "velocity": lambda snr: snr + 1,
}


def _distance_mse(a: Tensor, b: Tensor, objective) -> Tensor:
    return (a - b).square()


def _distance_mae(a: Tensor, b: Tensor, objective) -> Tensor:
    return (a - b).abs()


def _distance_huber(a: Tensor, b: Tensor, objective) -> Tensor:
    # Smooth L1 at delta 1 (MindSpore's SmoothL1Loss): 0.5 d^2 / delta inside, |d| - delta / 2 outside.
    return F.smooth_l1_loss(a, b, reduction="none", beta=objective.huber_delta)


DISTANCES = {"mse": _distance_mse, "mae": _distance_mae, "huber": _distance_huber}


# Weightings, each stated as a weight on the image's squared error and divided by
# _IMAGE_ERROR_SCALE[target] so one setting means the same thing for every target.


def _min_snr(snr: Tensor, objective) -> Tensor:
    # Hang et al. 2023, eq. 10: w = min(snr, gamma) on the image error.
    return snr.clamp(max=objective.min_snr_gamma)


def _p2(snr: Tensor, objective) -> Tensor:
    # Choi et al. 2022, eq. 8: w = 1 / (k + snr)^gamma on the noise error.
    return snr / (objective.p2_k + snr) ** objective.p2_gamma


WEIGHTINGS = {"none": None, "min-snr": _min_snr, "p2": _p2}


def _draw(objective, denoiser: Denoiser, images: Tensor, generator) -> tuple[Tensor, Tensor]:
    """An objective's times and noise for a batch: (t, (B,) float64; eps like the images). Drawn
    where the generator lives (a CPU generator serves a GPU batch too), then moved."""
    schedule, n = denoiser.schedule, images.shape[0]
    where = generator.device if generator is not None else images.device
    t = TIME_SAMPLERS[objective.time_sampling](schedule, n, generator, where, objective).to(images.device)
    noise = draw_noise(getattr(schedule, "noise", "gaussian"), images.shape, generator=generator, device=where)
    return t, noise.to(images.device)


def _check_positive(objective, names) -> None:
    for name in names:
        if not getattr(objective, name) > 0:
            raise ValueError(f"{name} must be positive; got {getattr(objective, name)}")


# ---- the objectives ---------------------------------------------------------------------------


class _Drawn:
    """What every objective does when called: draw the batch's times and noise, then `loss`."""

    def __call__(self, denoiser: Denoiser, images: Tensor, labels: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        return self.loss(denoiser, images, labels, *self.draw(denoiser, images, generator))

    def draw(self, denoiser: Denoiser, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t, noise) for a batch: its times ((B,) float64) and noise like the images."""
        return _draw(self, denoiser, images, generator)


@dataclass(frozen=True)
class Diffusion(_Drawn):
    """Denoising diffusion: each example draws a time and noise, is noised in closed form, split by
    the denoiser, and compared with the truth in the space of `target` by `distance` (mean over
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
    kind: str = field(default="diffusion", init=False)
    needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        _check_choice("loss target", self.target, TARGETS)
        _check_choice("loss distance", self.distance, DISTANCES)
        _check_choice("loss weighting", self.weighting, WEIGHTINGS)
        _check_choice("time sampling", self.time_sampling, ("uniform", "log-normal"))
        _check_positive(self, ("min_snr_gamma", "p2_k", "huber_delta", "log_normal_std"))
        if not math.isfinite(self.log_normal_mean):
            raise ValueError(f"log_normal_mean must be a finite number; got {self.log_normal_mean}")
        if not self.p2_gamma >= 0:
            raise ValueError(f"p2_gamma must be >= 0; got {self.p2_gamma}")

    def check(self, schedule: Schedule, prediction: str) -> None:
        check_variance_preserving("loss target", self.target, schedule)

    def loss(self, denoiser: Denoiser, images: Tensor, labels: Tensor | None, t: Tensor, noise: Tensor) -> Tensor:
        """(B,) losses at the drawn times and noise: no randomness, one graph for torch.compile."""
        alpha, sigma = denoiser.schedule.rates(t)
        images = images.float()
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


@dataclass(frozen=True)
class FlowMatching(_Drawn):
    """Conditional flow matching on the straight path: x_t = (1 - t) x_0 + t eps, and the loss
    |u_theta(x_t, t) - (eps - x_0)|^2 (mean over pixels), where u_theta = eps_hat - x0_hat is read
    from the denoiser's split whatever the network predicts (`flow` predicts u itself). Times are
    logit-normal (Esser et al. 2024: mean 0, std 1 was their best) or uniform; the schedule's
    `shift` moves them for the resolution."""

    time_sampling: str = "logit-normal"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    distance: str = "mse"
    huber_delta: float = 1.0
    kind: str = field(default="flow-matching", init=False)
    needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        _check_choice("time sampling", self.time_sampling, ("logit-normal", "uniform"))
        _check_choice("loss distance", self.distance, DISTANCES)
        _check_positive(self, ("logit_normal_std", "huber_delta"))
        if not math.isfinite(self.logit_normal_mean):
            raise ValueError(f"logit_normal_mean must be a finite number; got {self.logit_normal_mean}")

    def check(self, schedule: Schedule, prediction: str) -> None:
        if getattr(schedule, "variance_preserving", True) or getattr(schedule, "noise", "gaussian") != "gaussian":
            raise ValueError("flow matching trains on the straight path x_t = (1 - t) x_0 + t eps: "
                             "use schedule rectified-flow (schedule_options.shift for the resolution)")

    def loss(self, denoiser: Denoiser, images: Tensor, labels: Tensor | None, t: Tensor, noise: Tensor) -> Tensor:
        """(B,) losses at the drawn times and noise: no randomness, one graph for torch.compile."""
        alpha, sigma = denoiser.schedule.rates(t)
        images = images.float()
        predicted = denoiser(per_example(alpha, images) * images + per_example(sigma, images) * noise, t, labels)
        error = DISTANCES[self.distance](predicted.noise - predicted.image, noise - images, self)
        return error.flatten(1).mean(1)  # (B,)


def consistency_levels(schedule: Schedule, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The n times, increasing, where the EDM noise level sigma/alpha takes n Karras-spaced values
    from sigma_min to sigma_max (Karras et al. 2022, eq. 5; held below the schedule's own t = 1)."""
    alpha, sigma = schedule.rates(torch.tensor(1.0, dtype=torch.float64))
    sigma_max = min(sigma_max, float(sigma / alpha))
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_min ** (1 / rho) + ramp * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho
    return time_at_log_snr(schedule, -2 * sigmas.log()).clamp(max=1.0)


@dataclass(frozen=True)
class Consistency:
    """Consistency distillation and tuning (Song et al. 2023; Song & Dhariwal 2024; Geng et al.
    2024): a student f_theta (a Denoiser with `boundary` sigma_min, so f is the identity there)
    learns to map every point of an ODE path to the path's start. A step draws a level n + 1 of
    `levels` Karras-spaced noise levels between sigma_min and sigma_max and x_{n+1} = alpha x_0 +
    sigma eps, finds the neighbouring point x_n one level lower, and pulls f_theta(x_{n+1}) toward
    the stopped-gradient f_theta(x_n) (the target network is the student itself: Song & Dhariwal's
    EMA rate 0):
    - `target` teacher (consistency distillation): x_n is one DDIM step of the frozen teacher's
      probability-flow ODE, with its classifier-free guidance at `guidance` folded into the student
      (guided distillation, Luo et al. 2023: the student then needs one evaluation per step);
    - `target` data (consistency training, as ECT tunes a trained model): x_n = alpha_n x_0 +
      sigma_n eps with the same eps; no teacher.
    Distance: pseudo-Huber sqrt(|d|^2 / D + c^2) - c over the D pixels (Song & Dhariwal 2024,
    c = 0.00054) or MSE, weighted by 1 / (sigma_{n+1} - sigma_n) (their lambda)."""

    target: str = "teacher"
    teacher: str = ""  # the teacher run's folder (or checkpoint folder), for target teacher
    guidance: float = 1.0  # the teacher's classifier-free guidance scale folded into the student
    levels: int = 18  # N, the noise levels of the discretisation (Song et al. 2023 took 18 for CIFAR-10)
    sigma_min: float = 0.002  # sigma/alpha at the boundary, where f is the identity
    sigma_max: float = 80.0
    rho: float = 7.0
    distance: str = "pseudo-huber"
    huber_c: float = 0.00054
    kind: str = field(default="consistency", init=False)

    def __post_init__(self):
        _check_choice("consistency target", self.target, ("teacher", "data"))
        _check_choice("loss distance", self.distance, ("pseudo-huber", "mse"))
        _check_positive(self, ("sigma_min", "sigma_max", "rho", "huber_c"))
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(f"levels must be an integer of at least 2; got {self.levels!r}")
        if not self.sigma_min < min(self.sigma_max, 1.0):
            raise ValueError(f"sigma_min must lie below sigma_max and 1; got {self.sigma_min} and {self.sigma_max}")
        if not 0 <= self.guidance <= 20:
            raise ValueError(f"guidance must lie in [0, 20] (1: none); got {self.guidance}")

    @property
    def needs(self) -> tuple[str, ...]:
        return ("teacher",) if self.target == "teacher" else ()

    def check(self, schedule: Schedule, prediction: str) -> None:
        if self.target == "teacher" and not self.teacher:
            raise ValueError("consistency distillation needs loss.teacher, the teacher run's folder "
                             "(`pixel-diffusion distill --run TEACHER` sets it), or loss.target=data to tune without one")
        if getattr(schedule, "noise", "gaussian") != "gaussian":
            raise ValueError("consistency models follow the probability-flow ODE of Gaussian noise; this schedule mixes in uniform noise")

    def __call__(self, denoiser: Denoiser, images: Tensor, labels: Tensor | None = None,
                 generator: torch.Generator | None = None, teacher=None) -> Tensor:
        return self.loss(denoiser, images, labels, *self.draw(denoiser, images, generator), teacher=teacher)

    def draw(self, denoiser: Denoiser, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t, noise): each example's upper level n + 1 (uniform over 1..N-1) as a time, and its noise."""
        where = generator.device if generator is not None else images.device
        upper = torch.randint(1, self.levels, (images.shape[0],), generator=generator, device=where)
        times = consistency_levels(denoiser.schedule, self.levels, self.sigma_min, self.sigma_max, self.rho)
        noise = torch.randn(images.shape, generator=generator, device=where)
        return times.to(where)[upper].to(images.device), noise.to(images.device)

    def loss(self, denoiser: Denoiser, images: Tensor, labels: Tensor | None, t: Tensor, noise: Tensor,
             teacher=None) -> Tensor:
        """(B,) losses at the drawn upper levels and noise."""
        schedule = denoiser.schedule
        times = consistency_levels(schedule, self.levels, self.sigma_min, self.sigma_max, self.rho).to(t.device)
        s = times[torch.searchsorted(times, t.contiguous()) - 1]  # (B,) the level below each
        (alpha_t, sigma_t), (alpha_s, sigma_s) = schedule.rates(t), schedule.rates(s)
        images = images.float()
        a_t, s_t, a_s, s_s = (per_example(r, images) for r in (alpha_t, sigma_t, alpha_s, sigma_s))
        x_t = a_t * images + s_t * noise
        with torch.no_grad():
            if self.target == "teacher":
                if teacher is None:
                    raise ValueError("consistency distillation needs the teacher's denoiser")
                split = teacher(x_t, t, labels)
                x_s = a_s * split.image.float() + s_s * split.noise.float()  # DDIM: the ODE's exact step for a fixed split
            else:
                x_s = a_s * images + s_s * noise
            wanted = denoiser(x_s, s, labels).image
        difference = (denoiser(x_t, t, labels).image - wanted).flatten(1)
        if self.distance == "mse":
            error = difference.square().mean(1)
        else:
            error = (difference.square().mean(1) + self.huber_c**2).sqrt() - self.huber_c
        return error / (sigma_t / alpha_t - sigma_s / alpha_s).float()  # (B,)


OBJECTIVES = {"diffusion": Diffusion, "flow-matching": FlowMatching, "consistency": Consistency}
Objective = Diffusion | FlowMatching | Consistency


def objective_from_dict(data, where: str = "loss") -> Objective:
    """An objective from its saved fields (`typed.read`); `kind` picks it (a run saved before
    objectives had kinds is `diffusion`)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table of an objective's fields; got {type(data).__name__}")
    data = dict(data)
    kind = data.pop("kind", "diffusion")
    if not isinstance(kind, str) or kind not in OBJECTIVES:
        raise ValueError(f"{where}.kind: unknown objective {kind!r}; expected one of {', '.join(OBJECTIVES)}")
    return read(OBJECTIVES[kind], data, where)
