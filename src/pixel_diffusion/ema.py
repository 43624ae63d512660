"""Averages of a network's weights over training: the classic EMA and EDM2's power-function EMA,
whose snapshots let any EMA length be rebuilt after training (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models", sec. 3 and appendix C).

A power-function profile averages the weights theta(tau) seen up to step t with weights
proportional to tau^gamma:

    theta_gamma(t) = (gamma + 1) / t^(gamma + 1) * integral_0^t tau^gamma theta(tau) d tau,

kept step by step as theta_hat(t) = beta(t) theta_hat(t - 1) + (1 - beta(t)) theta(t) with
beta(t) = (1 - 1/t)^(gamma + 1). Its length is said by sigma_rel, the profile's standard deviation
over its time span: sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)). Snapshots of two such
profiles taken during training span the profiles of every other length, at any snapshot time, by
least squares in L2 over tau (`posthoc_coefficients`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

Tensor = torch.Tensor


class EMA:
    """Exponential moving average of a network's parameters (buffers are copied)."""

    def __init__(self, net: torch.nn.Module, decay: float, warmup: bool):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        """After optimiser step `step` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        ema, live = list(self.net.parameters()), list(net.parameters())
        torch._foreach_lerp_(ema, live, 1 - decay)
        for ema_buffer, buffer in zip(self.net.buffers(), net.buffers()):
            ema_buffer.copy_(buffer)


# ---- power-function profiles ------------------------------------------------------------------


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of the power-function profile of relative length sigma_rel: the largest
    real root of gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) = 0 (EDM2, eq. 3 rearranged)."""
    if not (isinstance(sigma_rel, (int, float)) and not isinstance(sigma_rel, bool) and 0 < sigma_rel < 12**-0.5):
        raise ValueError(f"sigma_rel must lie in (0, {12 ** -0.5:.4f}) (the profile's length over training); got {sigma_rel!r}")
    inverse = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse])
    return float(roots.real[np.abs(roots.imag) < 1e-9].max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def power_beta(gamma: float, step: int) -> float:
    """beta(t) = (1 - 1/t)^(gamma + 1) at optimiser step t (1-based): 0 at the first step."""
    return (1 - 1 / step) ** (gamma + 1)


class PowerEMA:
    """Power-function EMA profiles of a network, one per relative length in `sigma_rels`."""

    def __init__(self, net: torch.nn.Module, sigma_rels: Sequence[float]):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.nets = [copy.deepcopy(net).eval().requires_grad_(False) for _ in self.sigma_rels]

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        """After optimiser step `step` (1-based)."""
        live = list(net.parameters())
        for gamma, average in zip(self.gammas, self.nets):
            torch._foreach_lerp_(list(average.parameters()), live, 1 - power_beta(gamma, step))
            for kept, buffer in zip(average.buffers(), net.buffers()):
                kept.copy_(buffer)

    def names(self) -> list[str]:
        """Each profile's weights name, `ema-SIGMA` (ema-0.050)."""
        return [weights_name(s) for s in self.sigma_rels]

    def sigma_rel_names(self) -> dict[str, float]:
        return dict(zip(self.names(), self.sigma_rels))


def weights_name(sigma_rel: float) -> str:
    return f"ema-{sigma_rel:.3f}"


def profile_overlap(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_a, p_b> = integral of p_a(tau) p_b(tau) d tau, for profiles p(tau) = (gamma + 1) tau^gamma
    / t^(gamma + 1) on [0, t]: (gamma_a + 1)(gamma_b + 1) / ((gamma_a + gamma_b + 1) t_max) times
    (t_min / t_max)^(gamma of the longer). Broadcasts over arrays."""
    t_a, t_b, gamma_a, gamma_b = (np.asarray(v, dtype=np.float64) for v in (t_a, t_b, gamma_a, gamma_b))
    ratio = np.minimum(t_a, t_b) / np.maximum(t_a, t_b)
    longer = np.where(t_a < t_b, gamma_b, gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * ratio**longer / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def posthoc_coefficients(snapshots: Sequence[tuple[float, float]], step: float, sigma_rel: float) -> np.ndarray:
    """The weights x of snapshots (each (step, gamma)) whose sum of profiles is closest in L2 to
    the profile of length `sigma_rel` ending at `step`: the normal equations A x = b with
    A_ij = <p_i, p_j> and b_i = <p_i, p_target> (EDM2, appendix C.3), solved by least squares."""
    if not snapshots:
        raise ValueError("post-hoc EMA needs at least one snapshot")
    t, gamma = (np.array(v, dtype=np.float64) for v in zip(*snapshots))
    target = sigma_rel_to_gamma(sigma_rel)
    a = profile_overlap(t[:, None], gamma[:, None], t[None, :], gamma[None, :])
    b = profile_overlap(t, gamma, float(step), target)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def combine(states: Iterable[dict[str, Tensor]], coefficients: Sequence[float]) -> dict[str, Tensor]:
    """sum_i x_i states_i, tensor by tensor in float64, returned in each tensor's own dtype; the
    states are read one at a time (a generator that loads each from disk keeps one in memory).
    Integer buffers (counters) are the last state's."""
    totals: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    count = 0
    for x, state in zip(coefficients, states):
        count += 1
        for name, value in state.items():
            dtypes[name] = value.dtype
            if not value.is_floating_point():
                totals[name] = value.clone()
            elif name in totals:
                totals[name] += float(x) * value.double()
            else:
                totals[name] = float(x) * value.double()
    if count != len(coefficients):
        raise ValueError(f"{len(coefficients)} coefficients for {count} states")
    return {name: total.to(dtypes[name]) for name, total in totals.items()}
