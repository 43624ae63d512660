"""Samplers: plain functions that walk from noise to an image.

    sampler(denoiser, x, times, *, labels=None, noise=None, callback=None, **options) -> x_0

`times` holds n + 1 strictly decreasing times in [0, 1] (`schedules.sampling_times`), x is at
times[0]; step i evaluates the denoiser once at times[i] and moves x to times[i + 1]. A walk that
ends at 0 ends at clean data: the final time 0 counts as alpha = 1, sigma = 0, so the last step
returns the denoiser's image estimate (for a schedule whose t = 0 is not fully clean, such as the
Keras example's, that is what it returns too). A walk may start later than t = 1 (SDEdit) and
stop before 0, returning x at its last time for another walk to go on from (RePaint's steps, a
multistep consistency sampler). Coefficients are computed in float64 from the schedule; x stays
float32.

Randomness comes in explicitly through `noise`: an `ImageNoise` (one stream per image, so a seed
gives the same image in any batch), a torch.Generator, an int seed, or None for torch's global
generator.

The kernel every sampler is written with (`kernel.py`, public, so a new sampler needs nothing
private): `check_times` validates a walk, `walk_rates` gives its (alpha, sigma) per time,
`predict` makes one network evaluation (optionally clipped), `posterior_mean` is
q(x_s | x_t, x_0), and `as_noise` turns the `noise` argument into a draw function. The samplers
live by family: `classic.py` (DDPM, DDIM), `ode.py` (Euler, Heun,
DPM-Solver++(2M)), `multistep.py` (DPM-Solver++(3M), iPNDM, UniPC), `singlestep.py`
(DPM-Solver++(2S) ancestral), `adaptive.py` (DPM-Solver with error-controlled steps). To add a
sampler, write the function and add one `SamplerEntry` to `SAMPLERS` (its evaluations per step;
its options are read from its keyword arguments); tests/test_samplers.py runs every entry against
the closed-form Gaussian.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..diffusion import add_noise
from ..schedules import SPACINGS, check_walk_ends, sampling_times
from ..typed import read
from .adaptive import dpm_adaptive
from .classic import ddim, ddpm
from .consistency import consistency
from .kernel import (
    DDPM_VARIANCES,
    Callback,
    ImageNoise,
    as_noise,
    check_times,
    combine_seeds,
    edm_sigmas,
    log_snrs,
    posterior_mean,
    predict,
    start_scale,
    time_at_edm_sigma,
    transition_variance,
    walk_rates,
)
from .multistep import dpmpp_3m, dpmpp_3m_sde, ipndm, unipc
from .ode import dpmpp_2m, dpmpp_2m_sde, euler, euler_ancestral, heun
from .singlestep import dpmpp_2s_ancestral

Tensor = torch.Tensor

__all__ = [
    "CONTRACT", "DDPM_VARIANCES", "SAMPLERS", "Callback", "ImageNoise", "SamplerEntry", "as_noise",
    "check_times", "combine_seeds", "consistency", "ddim", "ddpm", "dpm_adaptive", "dpmpp_2m", "dpmpp_2m_sde",
    "dpmpp_2s_ancestral", "dpmpp_3m", "dpmpp_3m_sde", "edm_sigmas", "euler", "euler_ancestral", "evaluations",
    "get_sampler", "heun", "ipndm", "log_snrs", "posterior_mean", "predict", "sample", "samplers_with_option",
    "start_scale", "time_at_edm_sigma", "transition_variance", "unipc", "Walk", "walk_rates",
]


@dataclass(frozen=True)
class SamplerEntry:
    """A sampler in the registry: its walk, the network evaluations `steps` steps cost (None for
    an adaptive walk, which spends what its tolerance needs and tells it through its `report`
    dict), and a one-line description. Calling the entry calls the walk."""

    walk: Callable[..., Tensor]
    evaluations: Callable[[int], int] | None = lambda steps: steps
    description: str = ""
    spacing: str = "karras"  # the time spacing `sample` walks unless told (docs/samplers.md measures them)

    @property
    def adaptive(self) -> bool:
        return self.evaluations is None

    @property
    def options(self) -> dict[str, object]:
        """The walk's own keyword options (beyond labels, noise, callback, report) and their defaults."""
        return {name: p.default for name, p in inspect.signature(self.walk).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name not in CONTRACT and name != "report"}

    def __call__(self, denoiser, x: Tensor, times, **kwargs) -> Tensor:
        return self.walk(denoiser, x, times, **kwargs)


CONTRACT = ("labels", "noise", "callback")  # keyword arguments every sampler takes

# The sampler registry: the CLI's choices, `evaluations` and the tests all read it. A new
# sampler is one function of the contract above plus one entry here.
SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry(ddpm, description="ancestral sampling (Ho et al. 2020)", spacing="uniform"),
    "ddim": SamplerEntry(ddim, description="DDIM, deterministic at eta 0 (Song et al. 2021)", spacing="uniform"),
    "euler": SamplerEntry(euler, description="Euler on the probability-flow ODE"),
    "euler-ancestral": SamplerEntry(euler_ancestral, description="Euler with fresh noise per step (k-diffusion)"),
    "heun": SamplerEntry(heun, lambda steps: 2 * steps - 1, "Heun's second-order method (Karras et al. 2022)"),
    "dpmpp-2m": SamplerEntry(dpmpp_2m, description="DPM-Solver++(2M) (Lu et al. 2022)"),
    "dpmpp-2m-sde": SamplerEntry(dpmpp_2m_sde, description="SDE-DPM-Solver++(2M)"),
    "dpmpp-3m": SamplerEntry(dpmpp_3m, description="DPM-Solver++(3M) (Lu et al. 2022)"),
    "dpmpp-3m-sde": SamplerEntry(dpmpp_3m_sde, description="SDE-DPM-Solver++(3M)"),
    "dpmpp-2s-ancestral": SamplerEntry(dpmpp_2s_ancestral, lambda steps: 2 * steps - 1,
                                       "DPM-Solver++(2S) with ancestral noise (k-diffusion)"),
    "ipndm": SamplerEntry(ipndm, description="iPNDM, 4th-order pseudo-linear multistep (Zhang & Chen 2023)"),
    "unipc": SamplerEntry(unipc, description="UniPC, bh2 predictor-corrector up to 3rd order (Zhao et al. 2023)"),
    "dpm-adaptive": SamplerEntry(dpm_adaptive, None, "DPM-Solver-23 with error-controlled steps (Lu et al. 2022; "
                                 "k-diffusion's dpm_adaptive)"),
    "consistency": SamplerEntry(consistency, description="multistep consistency sampling, for a distilled run "
                                "(Song et al. 2023)"),
}

# What `sample` (library and CLI) walks unless told (`Walk()`): docs/samplers.md ranks every
# sampler by quality per network evaluation on the shipped models.
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpmpp-2m", 10


def get_sampler(name: str) -> SamplerEntry:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations a sampler makes in `steps` steps (its registry entry says); an adaptive
    sampler's are known only once it has run (`sample(..., report=)`)."""
    entry = get_sampler(sampler)
    if entry.adaptive:
        raise ValueError(f"{sampler} spends the evaluations its tolerance needs; sample(..., report={{}}) counts them")
    return entry.evaluations(steps)


def samplers_with_option(option: str) -> list[str]:
    """The samplers that take a keyword option, such as eta."""
    return [name for name, entry in SAMPLERS.items() if option in entry.options]


@dataclass(frozen=True)
class Walk:
    """How to sample: a sampler of the registry, its steps, the time spacing and noise range,
    whether the image estimate is clipped to the data range, the sampler's own options (eta,
    s_churn, ...), the guidance scale (None: the model's own), and the times it walks between:
    from `start` (1: pure noise) down to `stop` (0: an image). `sigmas` names the noise levels
    (EDM's sigma/alpha) of every step instead of a spacing, as k-diffusion's samplers take them:
    a consistency model's intermediate levels. Checked once, where it is built (the CLI, the
    web API, a run's stored default), and passed down whole."""

    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    spacing: str | None = None  # None: the sampler's own (its registry entry's)
    sigma_max: float | None = None  # karras and log-snr: the EDM noise level sigma/alpha to start at (None: 80)
    clip: bool = True
    options: dict = field(default_factory=dict)
    guidance: float | None = None
    start: float = 1.0  # below 1: from images noised to that time (SDEdit), not from pure noise
    stop: float = 0.0  # above 0: x at that time, for another walk to go on from
    sigmas: tuple[float, ...] | None = None  # the noise level of each step, decreasing (steps of them)

    def __post_init__(self):
        entry = get_sampler(self.sampler)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"sampling steps must be a positive integer; got {self.steps!r}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; expected one of {', '.join(SPACINGS)}")
        if self.sigma_max is not None:
            if isinstance(self.sigma_max, bool) or not isinstance(self.sigma_max, (int, float)) or not self.sigma_max > 0:
                raise ValueError(f"sigma_max must be a positive number (inf for t = 1); got {self.sigma_max!r}")
            if self.spacing_used not in ("karras", "log-snr"):
                raise ValueError(f"spacing {self.spacing_used!r} always starts at t = 1; sigma_max applies to 'karras' and 'log-snr'")
        check_walk_ends(self.start, self.stop)
        if (self.start != 1 or self.stop != 0) and self.spacing_used in ("leading", "trailing"):
            raise ValueError(f"spacing {self.spacing_used!r} walks the whole grid from t = 1 to 0; a walk over part "
                             "of [0, 1] takes 'uniform', 'karras' or 'log-snr'")
        if self.stop > 0 and entry.adaptive:
            raise ValueError(f"{self.sampler} solves down to t = 0; a walk that stops at {self.stop:g} takes a fixed-step sampler")
        if not isinstance(self.clip, bool):
            raise ValueError(f"clip must be true or false; got {self.clip!r}")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float))
                                          or not 0 <= self.guidance <= 20):
            raise ValueError(f"guidance must be a scale in [0, 20] (1: none); got {self.guidance!r}")
        self._check_options(entry)
        object.__setattr__(self, "options", dict(self.options))
        if self.sigmas is not None:
            self._check_sigmas()

    def _check_sigmas(self) -> None:
        sigmas = tuple(self.sigmas)
        if not sigmas or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < math.inf for s in sigmas) \
                or any(b >= a for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"sigmas must be positive noise levels sigma/alpha, strictly decreasing; got {list(sigmas)}")
        if len(sigmas) != self.steps:
            raise ValueError(f"sigmas name the noise level of each step: {self.steps} steps take {self.steps} of them; "
                             f"got {len(sigmas)}")
        if self.start != 1 or self.sigma_max is not None or self.spacing is not None:
            raise ValueError("sigmas name every noise level of the walk; drop start, sigma_max and spacing beside them")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in sigmas))

    def _check_options(self, entry: SamplerEntry) -> None:
        own = {k: v for k, v in entry.options.items() if k != "clip"}
        for name, value in dict(self.options).items():
            if name not in own:
                takers = samplers_with_option(name)
                raise ValueError(f"{name} is an option of the {', '.join(takers)} samplers, not of {self.sampler}" if takers
                                 else f"{self.sampler} has no option {name!r}; it takes {', '.join(own) or 'none'}")
            kind = type(own[name])
            if kind is bool and not isinstance(value, bool) or kind is not bool and (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"{self.sampler}'s {name} must be {'true or false' if kind is bool else 'a number'}; got {value!r}")
        if "eta" in self.options and not 0 <= self.options["eta"] <= 1:
            raise ValueError(f"eta must lie in [0, 1] (0: deterministic, 1: the full posterior noise); got {self.options['eta']:g}")

    @property
    def entry(self) -> SamplerEntry:
        return SAMPLERS[self.sampler]

    @property
    def spacing_used(self) -> str:
        return self.spacing or self.entry.spacing

    @property
    def evaluations(self) -> int | None:
        """Network evaluations per image (twice that under guidance); None for an adaptive walk."""
        return None if self.entry.adaptive else self.entry.evaluations(self.steps)

    def times(self, schedule) -> Tensor:
        """The steps + 1 times walked, from `start` (or sigma_max, if later) down to `stop`; with
        `sigmas`, the times where the schedule reaches them (held within [t_min, 1]), then `stop`."""
        if self.sigmas is None:
            return sampling_times(schedule, self.steps, self.spacing_used, self.sigma_max, self.start, self.stop)
        times = torch.stack([time_at_edm_sigma(schedule, s) for s in self.sigmas]).clamp(schedule.t_min, 1.0)
        times = torch.cat([times, times.new_full((1,), self.stop)])
        if bool((times[1:] >= times[:-1]).any()):
            raise ValueError(f"sigmas {list(self.sigmas)} repeat a time of this schedule or reach below its stop "
                             f"t = {self.stop:g} (its noise levels run from t_min = {schedule.t_min:g} to t = 1)")
        return times

    def from_noise(self, schedule, noise: Tensor) -> Tensor:
        """x at the walk's first time from standard-normal noise: the noise itself, scaled to the
        variance of x there on a straight schedule (`start_scale`). Only a walk from t = 1 starts
        from noise alone."""
        if self.start != 1:
            raise ValueError(f"a walk that starts at t = {self.start:g} starts from images noised to it "
                             "(Walk.from_images), not from pure noise")
        scale = start_scale(schedule, float(self.times(schedule)[0]))
        return noise * scale if scale != 1 else noise

    def from_images(self, schedule, images: Tensor, noise: Tensor) -> Tensor:
        """x at the walk's first time from clean images: alpha x_0 + sigma eps (SDEdit's start)."""
        t = self.times(schedule)[0].to(images.device)
        return add_noise(schedule, images, t.expand(len(images)), noise)

    def __call__(self, denoiser, x: Tensor, times: Tensor | None = None, *, labels=None, noise=None, data_range=None,
                 callback: Callback | None = None, report: dict | None = None) -> Tensor:
        """Walk x, at the walk's first time (`from_noise`, `from_images`), to its last: an image
        when it stops at 0. `times` walks those instead of the walk's own (one step of them:
        RePaint). `data_range` is what the image estimate is clipped to, when the walk clips."""
        times = self.times(denoiser.schedule) if times is None else times
        options = {**self.options, "clip": data_range if self.clip else None}
        if self.entry.adaptive:
            options["report"] = {} if report is None else report
        return self.entry(denoiser, x, times, labels=labels, noise=noise, callback=callback, **options)

    def replace(self, **changes) -> Walk:
        """This walk with the fields given (None: left as it is); a new sampler drops the old one's options."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "sampler" in changes and changes["sampler"] != self.sampler and "options" not in changes:
            changes["options"] = {}
        if self.sigmas is not None and "sigmas" not in changes and (
                changes.get("steps", self.steps) != self.steps or {"spacing", "sigma_max", "start"} & set(changes)):
            changes["sigmas"] = None  # another number of steps or spacing: the spacing's own levels
        if changes.get("sigmas") is not None:  # named levels replace the spacing
            changes = {"spacing": None, "sigma_max": None, **changes}
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        ends = f", t = {self.start:g} to {self.stop:g}" if (self.start, self.stop) != (1, 0) else ""
        if self.entry.adaptive:
            return f"{self.sampler}, adaptive{ends}"
        if self.sigmas is not None:
            return f"{self.sampler}, {self.steps} steps at sigma {', '.join(f'{s:g}' for s in self.sigmas)}{ends}"
        return f"{self.sampler}, {self.steps} steps, {self.spacing_used} spacing{ends}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data, where: str = "walk") -> Walk:
        """The JSON form back (`typed.read`); an unknown field or a bad value is a one-line ValueError naming `where`."""
        return read(cls, data, where)


def sample(
    denoiser,
    shape: Sequence[int],
    n: int,
    walk: Walk | None = None,
    *,
    seed: int = 0,
    labels: Tensor | None = None,
    data_range=None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
    callback: Callback | None = None,
    report: dict | None = None,
) -> Tensor:
    """Draw n images of `shape` (C, H, W) from pure noise along `walk` (default: `Walk()`), in
    batches; float32 (n, C, H, W) on the CPU.

    Image k starts from and draws only the noise of stream (seed, k), so it is the same image
    whatever the batch size. `data_range` (low, high) is what the walk clips the image estimate to,
    when it clips. Guidance is the caller's: wrap the denoiser (`diffusion.Guided`).
    `report`, when given, receives "evaluations": the network evaluations each image took (and an
    adaptive walk's own counts)."""
    from tqdm.auto import tqdm

    walk = Walk() if walk is None else walk
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of images must be a positive integer; got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer; got {batch_size!r}")
    steps, entry = walk.steps, walk.entry
    batches = range(0, n, batch_size)
    out = []
    report = {} if report is None else report
    # An adaptive walk's steps are not known ahead: its bar counts images and the evaluations spent.
    total, unit = (n, "images") if entry.adaptive else (len(batches) * steps, "steps")
    desc = f"sampling ({walk.sampler})" if entry.adaptive else f"sampling ({walk.sampler}, {steps} steps)"
    with tqdm(total=total, unit=unit, desc=desc, disable=not progress) as bar:

        def step_callback(i, x_t, image):
            bar.update(1)
            if callback is not None:
                callback(i, x_t, image)

        for start in batches:
            indices = range(start, min(start + batch_size, n))
            noise = ImageNoise.from_seed(seed, indices, getattr(denoiser.schedule, "noise", "gaussian"), device)
            x = walk.from_noise(denoiser.schedule, noise(torch.empty(len(indices), *shape, device=device)))
            batch_labels = None if labels is None else labels[start : start + len(indices)].to(device)
            if entry.adaptive:  # its bar moves by images; the walk forms its estimates only for a caller's callback
                x = walk(denoiser, x, labels=batch_labels, noise=noise, data_range=data_range, callback=callback, report=report)
                bar.update(len(indices))
                bar.set_postfix(evaluations=f"{sum(report['evaluations']) / len(report['evaluations']):.1f}")
            else:
                x = walk(denoiser, x, labels=batch_labels, noise=noise, data_range=data_range, callback=step_callback)
                report.setdefault("evaluations", []).extend([walk.evaluations] * len(indices))
            out.append(x.cpu())
    return torch.cat(out)
