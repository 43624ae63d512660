"""Noise schedules: the signal rate alpha(t) and noise rate sigma(t) for t in [0, 1].

    x_t = alpha(t) x_0 + sigma(t) eps,

variance preserving (alpha^2 + sigma^2 = 1) for every diffusion schedule, straight (alpha + sigma
= 1) for rectified flow and the uniform-mixing corruption; `variance_preserving` says which.

A schedule is data: `rates(t)` for any tensor of times, `num_steps` (T for a discrete schedule,
None for a continuous one) and `t_min`, the smallest time a network is trained at. Respacing a
1000-step schedule to 20 sampling steps is passing a different tensor of times
(`sampling_times`), never a different schedule.

Discrete schedules (DDPM, Ho et al. 2020) are a table of T betas. Step i (0-based) of T is time
(i + 1) / T, where alpha^2 = prod_{j <= i} (1 - beta_j); t = 0 is the clean image. Between grid
points log alpha^2 is linear in t, so any time in [0, 1] has rates and the grid values are exact.
Tables are built in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

Tensor = torch.Tensor


class Schedule(Protocol):
    num_steps: int | None
    t_min: float
    noise: str  # "gaussian" (every diffusion schedule) or "uniform" (UniformMixing)
    variance_preserving: bool  # alpha^2 + sigma^2 = 1 (the others here are straight: alpha + sigma = 1)

    def rates(self, t: Tensor) -> tuple[Tensor, Tensor]: ...


def _times(t) -> Tensor:
    """Times as a float64 tensor (float32 on devices without float64)."""
    t = torch.as_tensor(t)
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    return t.to(dtype)


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """A table of T betas; rates at any time interpolate log alpha^2 linearly between grid points."""

    betas: Tensor
    noise = "gaussian"
    variance_preserving = True
    num_steps: int = field(init=False)
    t_min: float = field(init=False)
    log_alpha_sq: Tensor = field(init=False, repr=False)  # (T + 1,): times 0, 1/T, ..., 1

    def __post_init__(self):
        betas = torch.as_tensor(self.betas, dtype=torch.float64).flatten().cpu()
        if betas.numel() == 0:
            raise ValueError("a discrete schedule needs at least one beta")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1); got min {betas.min():.3g}, max {betas.max():.3g}")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "num_steps", betas.numel())
        object.__setattr__(self, "t_min", 1.0 / betas.numel())
        log_alpha_sq = torch.cat([betas.new_zeros(1), torch.log1p(-betas).cumsum(0)])
        object.__setattr__(self, "log_alpha_sq", log_alpha_sq)

    @property
    def alphas_cumprod(self) -> Tensor:
        """alpha^2 at the T grid times (DDPM's alpha-bar), float64."""
        return self.log_alpha_sq[1:].exp()

    def timestep(self, t: Tensor) -> Tensor:
        """Time -> 0-based step index t T - 1 (fractional between grid points)."""
        return _times(t) * self.num_steps - 1

    def rates(self, t) -> tuple[Tensor, Tensor]:
        t = _times(t)
        table = self.log_alpha_sq.to(device=t.device, dtype=t.dtype)
        position = t.clamp(0, 1) * self.num_steps
        lower = position.floor().clamp(max=self.num_steps - 1)
        frac = position - lower
        lower = lower.long()
        log_alpha_sq = table[lower] * (1 - frac) + table[lower + 1] * frac
        return (0.5 * log_alpha_sq).exp(), (-torch.expm1(log_alpha_sq)).sqrt()


def linear(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    """Betas evenly spaced from beta_start to beta_end (Ho et al. 2020: 1000 steps, 1e-4 to 0.02).

    The tutorials' short variants: 200 steps, 1e-4 to 0.02 (Fashion-MNIST); 100 steps, 1e-4 to
    0.04 (CIFAR-10)."""
    _check_steps(num_steps)
    return DiscreteSchedule(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))


def cosine(num_steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    """Nichol & Dhariwal 2021, eq. 17: alpha^2(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t + s) / (1 + s)),
    turned into betas clipped at max_beta so the last steps stay finite."""
    _check_steps(num_steps)
    grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((grid + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return DiscreteSchedule(betas)


def scaled_linear(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteSchedule:
    """sqrt(beta) evenly spaced from sqrt(beta_start) to sqrt(beta_end) (Rombach et al. 2022's latent
    diffusion schedule; diffusers' "scaled_linear")."""
    _check_steps(num_steps)
    root = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64)
    return DiscreteSchedule(root**2)


def betas(values) -> DiscreteSchedule:
    """A table of betas given one by one (diffusers' trained_betas, or any schedule stored as its table)."""
    return DiscreteSchedule(torch.as_tensor(values, dtype=torch.float64))


@dataclass(frozen=True)
class ContinuousCosine:
    """The Keras DDIM example's schedule: the angle of (alpha, sigma) moves linearly in t from
    acos(max_signal_rate) to acos(min_signal_rate). Defaults 0.95 / 0.02, so t = 0 is not fully
    clean; sampling ends on the network's image estimate, as that example does."""

    min_signal_rate: float = 0.02
    max_signal_rate: float = 0.95
    noise = "gaussian"
    variance_preserving = True
    num_steps: None = field(default=None, init=False)
    t_min: float = field(default=0.0, init=False)

    def __post_init__(self):
        if not 0 <= self.min_signal_rate < self.max_signal_rate <= 1:
            raise ValueError(
                "continuous cosine needs 0 <= min_signal_rate < max_signal_rate <= 1; "
                f"got {self.min_signal_rate}, {self.max_signal_rate}"
            )

    def rates(self, t) -> tuple[Tensor, Tensor]:
        t = _times(t)
        start, end = math.acos(self.max_signal_rate), math.acos(self.min_signal_rate)
        angle = start + t * (end - start)
        return torch.cos(angle), torch.sin(angle)


@dataclass(frozen=True)
class Sigmoid:
    """Sigmoid schedule (Jabri et al. 2023; Chen 2023, "On the importance of noise scheduling",
    Algorithm 1): alpha^2(t) = (v(end) - v(t)) / (v(end) - v(start)), v(t) = sigmoid((t (end - start)
    + start) / tau), clamped below at `min_alpha_sq` so t = 1 keeps a finite log-SNR."""

    start: float = -3.0
    end: float = 3.0
    tau: float = 1.0
    min_alpha_sq: float = 1e-9
    t_min: float = 1e-3
    noise = "gaussian"
    variance_preserving = True
    num_steps: None = field(default=None, init=False)

    def __post_init__(self):
        if not (self.start < self.end and self.tau > 0 and 0 < self.min_alpha_sq < 1 and 0 <= self.t_min < 1):
            raise ValueError(
                "sigmoid schedule needs start < end, tau > 0, 0 < min_alpha_sq < 1, 0 <= t_min < 1; "
                f"got start={self.start}, end={self.end}, tau={self.tau}, "
                f"min_alpha_sq={self.min_alpha_sq}, t_min={self.t_min}"
            )

    def rates(self, t) -> tuple[Tensor, Tensor]:
        t = _times(t)
        v_start = math.exp(-math.log1p(math.exp(-self.start / self.tau)))  # sigmoid(start / tau)
        v_end = math.exp(-math.log1p(math.exp(-self.end / self.tau)))
        v = torch.sigmoid((t * (self.end - self.start) + self.start) / self.tau)
        alpha_sq = ((v_end - v) / (v_end - v_start)).clamp(self.min_alpha_sq, 1.0)
        return alpha_sq.sqrt(), (1 - alpha_sq).sqrt()


@dataclass(frozen=True)
class UniformMixing:
    """The MNIST tutorial's first corruption: x_t = (1 - t) x_0 + t u with u uniform over the data
    range [-1, 1] and t the "amount". Not variance preserving, and its noise is not Gaussian; DDIM
    with eta = 0 on uniform times is exactly that tutorial's sampler (x <- (1 - f) x + f x_0,
    f = 1 / (steps left))."""

    t_min: float = 0.0
    noise = "uniform"
    variance_preserving = False
    num_steps: None = field(default=None, init=False)

    def rates(self, t) -> tuple[Tensor, Tensor]:
        t = _times(t)
        return 1 - t, t


@dataclass(frozen=True)
class RectifiedFlow:
    """The straight path of flow matching (Lipman et al. 2023; Liu et al. 2023, rectified flow):
    x_t = (1 - t') x_0 + t' eps with Gaussian eps, where t' = s t / (1 + (s - 1) t) is SD3's
    resolution shift (Esser et al. 2024, eq. 23; s = `shift`, 1 for none). The shift lowers the
    log-SNR by 2 log s at every time, as `Shifted` does to a variance-preserving schedule, and keeps
    the path straight."""

    shift: float = 1.0
    t_min: float = 1e-5
    noise = "gaussian"
    variance_preserving = False
    num_steps: None = field(default=None, init=False)

    def __post_init__(self):
        if not (self.shift > 0 and 0 <= self.t_min < 1):
            raise ValueError(f"rectified flow needs shift > 0 and 0 <= t_min < 1; got shift={self.shift}, t_min={self.t_min}")

    def rates(self, t) -> tuple[Tensor, Tensor]:
        t = _times(t)
        moved = self.shift * t / (1 + (self.shift - 1) * t)
        return 1 - moved, moved


@dataclass(frozen=True)
class Shifted:
    """A continuous schedule moved to a higher resolution (Hoogeboom et al. 2023, "simple
    diffusion", sec. 3.1): log-SNR'(t) = log-SNR(t) - 2 log(shift), so that an image with `shift`
    times the pixels per side is as destroyed at t as the base resolution's. SD3's time shift of
    rectified flow, t' = s t / (1 + (s - 1) t), is the same move."""

    base: object
    shift: float
    noise = "gaussian"
    variance_preserving = True
    num_steps: None = field(default=None, init=False)

    @property
    def t_min(self) -> float:
        return self.base.t_min

    def rates(self, t) -> tuple[Tensor, Tensor]:
        moved = log_snr(self.base, t) - 2 * math.log(self.shift)
        return torch.sigmoid(moved).sqrt(), torch.sigmoid(-moved).sqrt()


def shifted(schedule: Schedule, shift: float) -> Schedule:
    """`schedule` with its log-SNR lowered by 2 log(shift) at every time (`Shifted`); a discrete
    schedule stays a table of betas, its alpha-bar moved at every grid point."""
    if not (isinstance(shift, (int, float)) and not isinstance(shift, bool) and shift > 0):
        raise ValueError(f"shift must be a positive number (the resolution over the base one); got {shift!r}")
    if shift == 1:
        return schedule
    if isinstance(schedule, RectifiedFlow):
        return RectifiedFlow(schedule.shift * shift, schedule.t_min)
    if schedule.noise != "gaussian":
        raise ValueError("shift moves the log-SNR of a Gaussian schedule; uniform-mixing has none")
    if not isinstance(schedule, DiscreteSchedule):
        return Shifted(schedule, float(shift))
    log_alpha_sq = schedule.log_alpha_sq[1:]  # (T,) at the grid times
    moved = log_alpha_sq - torch.log(-torch.expm1(log_alpha_sq)) - 2 * math.log(shift)  # lambda - 2 log(shift)
    log_moved = -torch.nn.functional.softplus(-moved)  # log sigmoid: log alpha-bar'
    steps = torch.diff(log_moved, prepend=log_moved.new_zeros(1))
    return DiscreteSchedule(-torch.expm1(steps))  # beta_i = 1 - alpha-bar'_i / alpha-bar'_{i-1}


def uniform_mixing(t_min: float = 0.0) -> UniformMixing:
    return UniformMixing(t_min)


def rectified_flow(shift: float = 1.0, t_min: float = 1e-5) -> RectifiedFlow:
    return RectifiedFlow(shift, t_min)


def continuous_cosine(min_signal_rate: float = 0.02, max_signal_rate: float = 0.95) -> ContinuousCosine:
    return ContinuousCosine(min_signal_rate, max_signal_rate)


def sigmoid(
    start: float = -3.0, end: float = 3.0, tau: float = 1.0, min_alpha_sq: float = 1e-9, t_min: float = 1e-3
) -> Sigmoid:
    return Sigmoid(start, end, tau, min_alpha_sq, t_min)


# Name -> factory; keyword arguments select variants (e.g. linear(num_steps=100, beta_end=0.04)).
SCHEDULES = {
    "linear": linear,
    "cosine": cosine,
    "scaled-linear": scaled_linear,
    "betas": betas,
    "continuous-cosine": continuous_cosine,
    "sigmoid": sigmoid,
    "uniform-mixing": uniform_mixing,
    "rectified-flow": rectified_flow,
}


def make_schedule(name: str, shift: float = 1.0, **kwargs) -> Schedule:
    """Build a schedule from its registry name and keyword arguments; `shift` (any schedule but
    uniform-mixing) moves it to `shift` times the resolution it was made for (`shifted`)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    return shifted(SCHEDULES[name](**kwargs), shift)


def log_snr(schedule: Schedule, t) -> Tensor:
    """lambda(t) = log(alpha^2 / sigma^2), decreasing in t."""
    alpha, sigma = schedule.rates(t)
    return 2 * (alpha.log() - sigma.log())


def time_at_log_snr(schedule: Schedule, target: Tensor, iterations: int = 60) -> Tensor:
    """Invert lambda(t) on [0, 1]: exactly on a discrete schedule's table, else by bisection (every
    schedule here has lambda decreasing in t)."""
    target = _times(target)
    if isinstance(schedule, DiscreteSchedule):
        return _discrete_time_at_log_snr(schedule, target)
    lo, hi = torch.zeros_like(target), torch.ones_like(target)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = log_snr(schedule, mid) > target  # still too clean: the answer lies later
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


def _discrete_time_at_log_snr(schedule: DiscreteSchedule, target: Tensor) -> Tensor:
    # alpha^2 = sigmoid(lambda), so -log alpha^2 = softplus(-lambda); rates() interpolates
    # log alpha^2 linearly in t, and the table is strictly decreasing (every beta > 0).
    rising = -schedule.log_alpha_sq.to(device=target.device, dtype=target.dtype)  # (T + 1,) increasing
    wanted = torch.nn.functional.softplus(-target)
    lower = (torch.searchsorted(rising, wanted.contiguous()) - 1).clamp(0, schedule.num_steps - 1)
    frac = (wanted - rising[lower]) / (rising[lower + 1] - rising[lower])
    return ((lower + frac.clamp(0, 1)) / schedule.num_steps).clamp(0, 1)


# ---- sampling times ---------------------------------------------------------------------------
# Each spacing returns the n times a walk evaluates the network at, strictly decreasing, from
# `start` down to its own smallest (`low` None, the walk then ends at 0) or down to `low` itself.


# Karras et al. 2022 (table 1) start every sampler at the EDM noise level sigma/alpha = 80. A VP
# schedule's own t = 1 can lie far above it (the discrete cosine's 20,000; the last 1% of its
# grid spans 64 to 20,000), where a few evenly spaced sigma or lambda steps are all wasted.
SIGMA_MAX = 80.0


def _grid_times(schedule: Schedule, indices: Tensor) -> Tensor:
    return (indices.to(torch.float64) + 1) / schedule.num_steps


def _uniform(schedule: Schedule, n: int, sigma_max: float | None = None, start: float = 1.0,
             low: float | None = None) -> Tensor:
    # Discrete: evenly spaced over the grid, both ends included (diffusers' "linspace").
    # Continuous: 1, 1 - 1/n, ..., t_min + (1 - t_min)/n (the Keras DDIM example's times);
    # down to `low`: n times from start to low, both included.
    _from_t_one("uniform", sigma_max)
    if schedule.num_steps is None:
        if low is None:
            return start - torch.arange(n, dtype=torch.float64) * (start - schedule.t_min) / n
        return torch.linspace(start, low, n, dtype=torch.float64)
    top = round(start * schedule.num_steps) - 1  # the grid index whose time is start (or nearest it)
    bottom = 0 if low is None else round(low * schedule.num_steps) - 1
    if n == 1:
        return _grid_times(schedule, torch.tensor([top]))
    indices = torch.linspace(bottom, top, n, dtype=torch.float64).round()
    return _grid_times(schedule, indices.flip(0))


def _leading(schedule: Schedule, n: int, sigma_max: float | None = None, start: float = 1.0,
             low: float | None = None) -> Tensor:
    # Every (T // n)-th grid step counted from the clean end: 0, k, 2k, ... (DDIM's original choice).
    _need_grid(schedule, "leading")
    _from_t_one("leading", sigma_max)
    _whole_grid("leading", start, low)
    indices = torch.arange(n) * (schedule.num_steps // n)
    return _grid_times(schedule, indices.flip(0))


def _trailing(schedule: Schedule, n: int, sigma_max: float | None = None, start: float = 1.0,
              low: float | None = None) -> Tensor:
    # Grid steps counted from the noisy end, so sampling starts at t = 1 (Lin et al. 2024, table 2).
    _need_grid(schedule, "trailing")
    _from_t_one("trailing", sigma_max)
    _whole_grid("trailing", start, low)
    k = torch.arange(n, dtype=torch.float64)
    indices = (schedule.num_steps - k * schedule.num_steps / n).round() - 1
    return _grid_times(schedule, indices)


def _log_snr_range(schedule: Schedule, sigma_max: float | None, start: float,
                   low: float | None) -> tuple[Tensor, Tensor, bool]:
    """(lambda at the walk's clean end, lambda where it starts, whether sigma_max moved that start
    later than `start`)."""
    ends = torch.tensor([schedule.t_min if low is None else low, start], dtype=torch.float64)
    lam_max, lam_min = log_snr(schedule, ends)
    sigma_max = SIGMA_MAX if sigma_max is None else sigma_max
    if not (math.isfinite(sigma_max) or math.isfinite(float(lam_min))):
        raise ValueError("this schedule is pure noise at t = 1 (its sigma/alpha is infinite there): a karras or "
                         f"log-snr walk starts at a finite sigma_max (default {SIGMA_MAX:g})")
    floor = -2 * math.log(sigma_max) if math.isfinite(sigma_max) else -math.inf
    if floor <= lam_min:
        return lam_max, lam_min, False
    return lam_max, torch.tensor(floor, dtype=torch.float64), True


def _ends(times: Tensor, capped: bool, start: float, low: float | None) -> Tensor:
    if not capped:
        times[0] = start  # exactly the walk's start, not the bisection's estimate of it
    if low is not None:
        times[-1] = low
    return times


def _ramp(n: int) -> Tensor:
    return torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)


def _karras(schedule: Schedule, n: int, sigma_max: float | None = None, start: float = 1.0,
            low: float | None = None, rho: float = 7.0) -> Tensor:
    # Karras et al. 2022, eq. 5, over the EDM noise level sigma/alpha = exp(-lambda/2).
    lam_max, lam_min, capped = _log_snr_range(schedule, sigma_max, start, low)
    s_max, s_min = (-lam_min / 2).exp(), (-lam_max / 2).exp()
    edm_sigma = (s_max ** (1 / rho) + _ramp(n) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _ends(time_at_log_snr(schedule, -2 * edm_sigma.log()), capped, start, low)


def _log_snr_uniform(schedule: Schedule, n: int, sigma_max: float | None = None, start: float = 1.0,
                     low: float | None = None) -> Tensor:
    # Evenly spaced in lambda from the start to t_min (the DPM-Solver papers' choice).
    lam_max, lam_min, capped = _log_snr_range(schedule, sigma_max, start, low)
    return _ends(time_at_log_snr(schedule, lam_min + _ramp(n) * (lam_max - lam_min)), capped, start, low)


def _need_grid(schedule: Schedule, spacing: str) -> None:
    if schedule.num_steps is None:
        raise ValueError(
            f"spacing {spacing!r} needs a discrete schedule; continuous schedules take "
            "'uniform', 'karras' or 'log-snr'"
        )


def _from_t_one(spacing: str, sigma_max: float | None) -> None:
    if sigma_max is not None:
        raise ValueError(f"spacing {spacing!r} always starts at t = 1; sigma_max applies to 'karras' and 'log-snr'")


def _whole_grid(spacing: str, start: float, low: float | None) -> None:
    if start != 1 or low is not None:
        raise ValueError(f"spacing {spacing!r} walks the whole grid from t = 1 to 0; a walk over part of [0, 1] "
                         "takes 'uniform', 'karras' or 'log-snr'")


SPACINGS = {
    "uniform": _uniform,
    "leading": _leading,
    "trailing": _trailing,
    "karras": _karras,
    "log-snr": _log_snr_uniform,
}


def sampling_times(schedule: Schedule, steps: int, spacing: str = "uniform", sigma_max: float | None = None,
                   start: float = 1.0, stop: float = 0.0) -> Tensor:
    """The steps + 1 times a sampler walks in `steps` steps, from `start` (1: pure noise) down to
    `stop` (0: the clean image).

    The grid spacings (uniform, leading, trailing) start at t = 1. The karras and log-snr spacings
    start where the EDM noise level sigma/alpha is `sigma_max` (default SIGMA_MAX = 80), or at
    t = 1 if the schedule never gets that noisy; sigma_max = inf starts them at t = 1 always.
    A walk over part of [0, 1] (SDEdit from t = 0.5; a walk that stops at t = 0.3 for another to
    go on) starts at `start` (or at sigma_max, if that is later) and spaces its times by the
    spacing's own rule: evenly in t (uniform; a discrete schedule's times stay on its grid), in
    sigma^(1/rho) (karras), in lambda (log-snr). Ending at 0, the last step goes from the
    spacing's smallest time (the schedule's t_min) to 0; ending at `stop` > 0, the last time is
    `stop`. leading and trailing walk only the whole grid."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    _check_steps(steps, "sampling steps")
    if sigma_max is not None and (isinstance(sigma_max, bool) or not isinstance(sigma_max, (int, float))
                                  or not sigma_max > 0):
        raise ValueError(f"sigma_max must be a positive number (inf for no limit); got {sigma_max!r}")
    check_walk_ends(start, stop, schedule.t_min)
    if schedule.num_steps is not None and steps > schedule.num_steps:
        raise ValueError(
            f"{steps} sampling steps asked of a schedule with {schedule.num_steps} steps; "
            f"expected 1 to {schedule.num_steps}"
        )
    if stop == 0:
        times = SPACINGS[spacing](schedule, steps, sigma_max, float(start))
    else:
        times = SPACINGS[spacing](schedule, steps + 1, sigma_max, float(start), float(stop))
    if bool((times[1:] >= times[:-1]).any()):
        within = f" between t = {start:g} and {stop:g}" if (start, stop) != (1, 0) else ""
        raise ValueError(f"{steps} steps with spacing {spacing!r}{within} repeat a time; use fewer steps or another spacing")
    return times if stop > 0 else torch.cat([times, times.new_zeros(1)])


def check_walk_ends(start, stop, t_min: float = 0.0) -> None:
    """A walk runs from `start` down to `stop`: 0 <= stop < start <= 1, and a walk that stops
    before 0 stops no earlier than the schedule's smallest time t_min."""
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"a walk's {name} must be a time in [0, 1]; got {value!r}")
    if not stop < start:
        raise ValueError(f"a walk runs from start down to stop; got start {start:g}, stop {stop:g}")
    if start < t_min or 0 < stop < t_min:
        raise ValueError(f"this schedule's times begin at t_min = {t_min:g}; a walk's start and a stop above 0 "
                         f"lie at or above it (got start {start:g}, stop {stop:g})")


def _check_steps(steps, what: str = "num_steps") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{what} must be a positive integer; got {steps!r}")
