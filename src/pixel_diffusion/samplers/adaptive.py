"""Adaptive DPM-Solver: steps sized by an error estimate (Lu et al. 2022, DPM-Solver, section 3.3
and appendix C; the behaviour of k-diffusion's dpm_adaptive).

In the EDM variables y = x / alpha and lambda = -log s~ (s~ = sigma / alpha) the probability-flow
ODE is solved in its noise-prediction form, eps = (y - D(y)) / s~. A step lambda -> lambda + h
takes an embedded pair: DPM-Solver-3 (r1 = 1/3, r2 = 2/3) against DPM-Solver-2 (r1 = 1/3), which
shares its evaluations (order 3; 3 evaluations an attempt), or DPM-Solver-2 (r1 = 1/2) against
DPM-Solver-1 (order 2; 2 evaluations). The two answers' difference, scaled per pixel by
max(atol, rtol max(|y_low|, |y_prev|)), gives an RMS error E; an integral controller sets
h <- h (1 + atan(E^(-1/order) - 1)) and accepts the step when that factor is at least 0.81.

Each image has its own step size and position, so an image is the same in any batch. The
evaluation at a step's start is kept when a step is refused (k-diffusion spends it again).
"""

from __future__ import annotations

import torch

from ..schedules import log_snr, time_at_log_snr
from .kernel import Callback, check_times, clip_image

Tensor = torch.Tensor

ACCEPT_SAFETY = 0.81  # a step is kept when the controller would not shrink h below 0.81 h


def _sigma(lam: Tensor) -> Tensor:
    """s~ at lambda = -log s~, shaped to broadcast over images (B, 1, 1, 1)."""
    return torch.exp(-lam).view(-1, 1, 1, 1)


def solver_step(eps_at, y: Tensor, lam: Tensor, h: Tensor, order: int, eps: Tensor | None = None):
    """One embedded DPM-Solver step from lambda to lambda + h (per image, (B,) float64):
    returns (y_low, y_high, eps) with y_high of the given order and y_low one order lower;
    `eps_at(y, lam)` evaluates the noise prediction, `eps` is the one at (y, lam) when known.

    DPM-Solver-k in lambda (Lu et al. 2022, Algorithms 4 and 5; phi(h) = e^h - 1, s = lambda + h):
        u1 = y - s~(s1) phi(r1 h) eps,                                        s1 = lambda + r1 h
        DPM-Solver-1:  y_1 = y - s~(s) phi(h) eps
        DPM-Solver-2:  y_2 = y_1 - s~(s) / (2 r1) phi(h) (eps(u1) - eps)
        u2 = y - s~(s2) phi(r2 h) eps - s~(s2) (r2 / r1) (phi(r2 h) / (r2 h) - 1) (eps(u1) - eps)
        DPM-Solver-3:  y_3 = y_1 - s~(s) / r2 (phi(h) / h - 1) (eps(u2) - eps)
    with r1 = 1/2 for the pair (1, 2) and r1, r2 = 1/3, 2/3 for the pair (2, 3)."""

    def column(values: Tensor) -> Tensor:  # per-image float64 coefficients -> (B, 1, 1, 1) like y
        return values.to(device=y.device, dtype=y.dtype).view(-1, 1, 1, 1)

    if eps is None:
        eps = eps_at(y, lam)
    r1, r2 = (0.5, None) if order == 2 else (1 / 3, 2 / 3)
    s, s1 = lam + h, lam + r1 * h
    one = y - column(torch.exp(-s) * torch.expm1(h)) * eps
    d1 = eps_at(y - column(torch.exp(-s1) * torch.expm1(r1 * h)) * eps, s1) - eps
    two = one - column(torch.exp(-s) / (2 * r1) * torch.expm1(h)) * d1
    if order == 2:
        return one, two, eps
    s2, phi2 = lam + r2 * h, torch.expm1(r2 * h)
    u2 = y - column(torch.exp(-s2) * phi2) * eps - column(torch.exp(-s2) * (r2 / r1) * (phi2 / (r2 * h) - 1)) * d1
    d2 = eps_at(u2, s2) - eps
    three = one - column(torch.exp(-s) / r2 * (torch.expm1(h) / h - 1)) * d2
    return two, three, eps


def _check(walk_length, order, rtol, atol, h_init, max_evaluations) -> None:
    if walk_length < 3:  # one step's walk has no noise level below its start to solve down to
        raise ValueError("dpm-adaptive solves from a walk's first time to its last noise level; "
                         "give it at least 2 steps (--steps)")
    if order not in (2, 3):
        raise ValueError(f"order of dpm-adaptive must be 2 or 3; got {order!r}")
    for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number; got {value!r}")
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < order + 1:
        raise ValueError(f"max_evaluations must be an integer of at least {order + 1} (one step of order {order} "
                         f"and the final image); got {max_evaluations!r}")


def _error(low: Tensor, high: Tensor, previous: Tensor, rtol: float, atol: float) -> Tensor:
    """The lower-order answer's error per image: RMS over its pixels of (low - high) / delta, with
    delta = max(atol, rtol max(|low|, |previous|)) (k-diffusion's norm, taken per image); (B,) float64."""
    scale = torch.clamp(rtol * torch.maximum(low.abs(), previous.abs()), min=atol)
    return ((low - high) / scale).double().pow(2).flatten(1).mean(1).sqrt().cpu()


@torch.no_grad()
def dpm_adaptive(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
                 order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 max_evaluations: int = 500, clip=None, report: dict | None = None) -> Tensor:
    """Adaptive DPM-Solver-23 (order 3) or -12 (order 2) from times[0] down to times[-2], the
    walk's last noise level (the schedule's smallest for every spacing), then the image estimate
    there; the times between are not used.

    An image whose next attempt could leave too few of its `max_evaluations` finishes with
    first-order steps (DDIM), equal in lambda, on what its budget leaves (counted in
    report["capped"]). `report`, when given, receives per-image lists: "evaluations" (the final
    estimate included), "accepted" and "rejected" steps. `callback(round, x, image)` is called on
    each round of attempts, with every image at its own time."""
    times = check_times(times)
    _check(len(times), order, rtol, atol, h_init, max_evaluations)
    schedule, n, device = denoiser.schedule, x.shape[0], x.device
    spent = torch.zeros(n, dtype=torch.long)

    def time_of(lam: Tensor) -> Tensor:
        return time_at_log_snr(schedule, 2 * lam).to(device)

    def eps_at(y: Tensor, lam: Tensor, rows: Tensor) -> Tensor:
        # The noise prediction for the EDM variables y at per-image lambda: x = alpha y at the time
        # whose log-SNR is 2 lambda.
        t = time_of(lam)
        alpha = schedule.rates(t)[0].float().view(-1, 1, 1, 1)
        image = denoiser(y * alpha, t, None if labels is None else labels[rows.to(labels.device)]).image.float()
        if clip is not None:
            image = clip_image(image, clip)
        spent[rows] += 1
        return (y - image) / _sigma(lam).to(y)

    start, end = (0.5 * float(log_snr(schedule, times[k])) for k in (0, -2))  # lambda = log(alpha / sigma)
    y = x.float() / float(schedule.rates(times[0])[0])
    lam = torch.full((n,), start, dtype=torch.float64)
    h = torch.full((n,), float(h_init), dtype=torch.float64)
    finish = torch.zeros(n, dtype=torch.float64)  # the equal first-order step of a capped image, else 0
    accepted, rejected = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    eps, known = torch.zeros_like(y), torch.zeros(n, dtype=torch.bool)  # eps at (y, lambda) once evaluated
    y_prev, rounds = y.clone(), 0
    while bool((lam < end - 1e-5).any()):
        rows = (lam < end - 1e-5).nonzero().squeeze(1)
        # An attempt costs `order` evaluations (one fewer with the start's known); before one that
        # could leave no room for a last step and the final estimate, go first-order on what is left.
        short = (finish[rows] == 0) & (spent[rows] + order - known[rows].long() + order + 1 > max_evaluations)
        left = max_evaluations - 1 - spent[rows[short]] + known[rows[short]].long()
        finish[rows[short]] = (end - lam[rows[short]]) / left.double()
        missing = rows[~known[rows]]
        if len(missing):
            eps[missing], known[missing] = eps_at(y[missing], lam[missing], missing), True
        if callback is not None:
            alpha = schedule.rates(time_of(lam))[0].float().view(-1, 1, 1, 1)
            callback(rounds, y * alpha, y - _sigma(lam).to(y) * eps)

        capped, free = rows[finish[rows] > 0], rows[finish[rows] == 0]
        if len(capped):  # DPM-Solver-1: y_s = y - s~(s) (e^h - 1) eps
            step = torch.minimum(finish[capped], end - lam[capped])
            y[capped] = y[capped] - _sigma(lam[capped] + step).to(y) * torch.expm1(step).to(y).view(-1, 1, 1, 1) * eps[capped]
            lam[capped], known[capped] = lam[capped] + step, False
            accepted[capped] += 1
        rounds += 1
        if not len(free):
            continue
        step = torch.minimum(h[free], end - lam[free])
        low, high, _ = solver_step(lambda z, at: eps_at(z, at, free), y[free], lam[free], step, order, eps[free])
        # The integral controller: factor E^(-1/order) through the limiter 1 + atan(f - 1).
        factor = 1 + torch.atan((_error(low, high, y_prev[free], rtol, atol) + 1e-8) ** (-1 / order) - 1)
        keep = factor >= ACCEPT_SAFETY
        h[free] = h[free] * factor
        kept = free[keep]
        y_prev[kept], y[kept], lam[kept], known[kept] = low[keep], high[keep], lam[kept] + step[keep], False
        accepted[kept] += 1
        rejected[free[~keep]] += 1
    image = y - _sigma(lam).to(y) * eps_at(y, lam, torch.arange(n))  # D at the last noise level
    if report is not None:
        for key, values in (("evaluations", spent), ("accepted", accepted), ("rejected", rejected)):
            report.setdefault(key, []).extend(values.tolist())
        report["capped"] = report.get("capped", 0) + int((finish > 0).sum())
    return image
