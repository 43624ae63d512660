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

An attempt's evaluations come one after another, so each image walks as a small machine: stage 0
wants eps at its point (y, lambda), stage 1 at u1, stage 2 at u2. Every round evaluates each
unfinished image at its stage's point in one network call, whatever stage each is at, so the
network sees the whole batch until images finish, and the final estimate rides in the same calls.
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


def _column(values: Tensor, like: Tensor) -> Tensor:
    """Per-image float64 coefficients -> (B, 1, 1, 1) in `like`'s dtype and device."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def _fractions(order: int) -> tuple[float, float | None]:
    return (0.5, None) if order == 2 else (1 / 3, 2 / 3)


def first_point(y: Tensor, lam: Tensor, h: Tensor, eps: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """u1 = y - s~(s1) phi(r1 h) eps at s1 = lambda + r1 h: (u1, s1)."""
    r1 = _fractions(order)[0]
    s1 = lam + r1 * h
    return y - _column(torch.exp(-s1) * torch.expm1(r1 * h), y) * eps, s1


def second_point(y: Tensor, lam: Tensor, h: Tensor, eps: Tensor, d1: Tensor) -> tuple[Tensor, Tensor]:
    """u2 = y - s~(s2) phi(r2 h) eps - s~(s2) (r2 / r1) (phi(r2 h) / (r2 h) - 1) d1 at s2 = lambda + r2 h
    (order 3 only; d1 = eps(u1) - eps): (u2, s2)."""
    r1, r2 = _fractions(3)
    s2, phi2 = lam + r2 * h, torch.expm1(r2 * h)
    return (y - _column(torch.exp(-s2) * phi2, y) * eps
            - _column(torch.exp(-s2) * (r2 / r1) * (phi2 / (r2 * h) - 1), y) * d1), s2


def answers(y: Tensor, lam: Tensor, h: Tensor, eps: Tensor, d1: Tensor, d2: Tensor | None,
            order: int) -> tuple[Tensor, Tensor]:
    """The embedded pair at lambda + h, (y_low, y_high): DPM-Solver-1 and -2 for order 2, DPM-Solver-2
    and -3 for order 3 (d2 = eps(u2) - eps)."""
    r1, r2 = _fractions(order)
    s = lam + h
    one = y - _column(torch.exp(-s) * torch.expm1(h), y) * eps
    two = one - _column(torch.exp(-s) / (2 * r1) * torch.expm1(h), y) * d1
    if order == 2:
        return one, two
    return two, one - _column(torch.exp(-s) / r2 * (torch.expm1(h) / h - 1), y) * d2


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
    with r1 = 1/2 for the pair (1, 2) and r1, r2 = 1/3, 2/3 for the pair (2, 3). The sampler takes
    the same three pieces (first_point, second_point, answers) one evaluation at a time."""
    if eps is None:
        eps = eps_at(y, lam)
    d1 = eps_at(*first_point(y, lam, h, eps, order)) - eps
    d2 = eps_at(*second_point(y, lam, h, eps, d1)) - eps if order == 3 else None
    return (*answers(y, lam, h, eps, d1, d2, order), eps)


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


class _Walk:
    """Every image's place in the adaptive walk, one row each: the accepted point (y, lambda) with
    its eps, the step size h, the attempt under way (stage, step, d1) and the point its next
    evaluation is at (query at lambda q). Indices are (k,) CPU tensors of image rows."""

    def __init__(self, y: Tensor, start: float, end: float, h_init: float, order: int, cap: int,
                 rtol: float, atol: float):
        n = y.shape[0]
        self.order, self.end, self.cap, self.rtol, self.atol = order, end, cap, rtol, atol
        self.y, self.y_prev, self.query = y, y.clone(), y.clone()
        self.eps, self.d1, self.image = torch.zeros_like(y), torch.zeros_like(y), torch.zeros_like(y)
        self.lam = torch.full((n,), start, dtype=torch.float64)
        self.q, self.h = self.lam.clone(), torch.full((n,), float(h_init), dtype=torch.float64)
        self.step = torch.zeros(n, dtype=torch.float64)
        self.finish = torch.zeros(n, dtype=torch.float64)  # the equal first-order step of a capped image, else 0
        self.stage, self.done = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
        self.spent, self.accepted, self.rejected = (torch.zeros(n, dtype=torch.long) for _ in range(3))

    def take(self, rows: Tensor, got: Tensor) -> None:
        """Move every image of `rows` on, given eps at its query point (`got`, rows of all n)."""
        stage0, stage1, stage2 = (rows[self.stage[rows] == k] for k in range(3))
        self.spent[rows] += 1
        if len(stage0):  # eps at the accepted point: the final estimate there, or the next attempt
            self.eps[stage0] = got[stage0]
            there = self.lam[stage0] >= self.end - 1e-5
            last = stage0[there]
            self.image[last] = self.y[last] - _sigma(self.lam[last]).to(self.y) * self.eps[last]
            self.done[last] = True
            self._begin(stage0[~there])
        if len(stage1):
            g = stage1
            self.d1[g] = got[g] - self.eps[g]
            if self.order == 2:
                self._judge(g, *answers(self.y[g], self.lam[g], self.step[g], self.eps[g], self.d1[g], None, 2))
            else:
                self.query[g], self.q[g] = second_point(self.y[g], self.lam[g], self.step[g], self.eps[g], self.d1[g])
                self.stage[g] = 2
        if len(stage2):
            g = stage2
            d2 = got[g] - self.eps[g]
            self._judge(g, *answers(self.y[g], self.lam[g], self.step[g], self.eps[g], self.d1[g], d2, 3))

    def _at_point(self, g: Tensor) -> None:
        self.query[g], self.q[g], self.stage[g] = self.y[g], self.lam[g], 0

    def _begin(self, g: Tensor) -> None:
        # An attempt costs order - 1 evaluations more (its start's eps is known); before one that
        # could leave no room for a last step and the final estimate, go first-order on what is left.
        short = g[(self.finish[g] == 0) & (self.spent[g] + 2 * self.order > self.cap)]
        self.finish[short] = (self.end - self.lam[short]) / (self.cap - self.spent[short]).double()
        capped, free = g[self.finish[g] > 0], g[self.finish[g] == 0]
        if len(capped):  # DPM-Solver-1: y_s = y - s~(s) (e^h - 1) eps, then eps at the new point
            step = torch.minimum(self.finish[capped], self.end - self.lam[capped])
            self.y[capped] = self.y[capped] - _column(torch.exp(-self.lam[capped] - step) * torch.expm1(step),
                                                      self.y) * self.eps[capped]
            self.lam[capped] += step
            self.accepted[capped] += 1
            self._at_point(capped)
        if len(free):
            self.step[free] = torch.minimum(self.h[free], self.end - self.lam[free])
            self.query[free], self.q[free] = first_point(self.y[free], self.lam[free], self.step[free],
                                                         self.eps[free], self.order)
            self.stage[free] = 1

    def _judge(self, g: Tensor, low: Tensor, high: Tensor) -> None:
        # The integral controller: factor E^(-1/order) through the limiter 1 + atan(f - 1).
        error = _error(low, high, self.y_prev[g], self.rtol, self.atol)
        factor = 1 + torch.atan((error + 1e-8) ** (-1 / self.order) - 1)
        keep = factor >= ACCEPT_SAFETY
        self.h[g] = self.h[g] * factor
        kept, refused = g[keep], g[~keep]
        keep = keep.to(low.device)
        self.y_prev[kept], self.y[kept] = low[keep], high[keep]
        self.lam[kept] += self.step[kept]
        self.accepted[kept] += 1
        self.rejected[refused] += 1
        self._at_point(kept)
        self._begin(refused)  # its start's eps is kept


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
    each round of evaluations, with every image at its own accepted point."""
    times = check_times(times)
    if float(times[-1]) != 0:
        raise ValueError("dpm-adaptive solves down to t = 0; a walk that stops earlier takes a fixed-step sampler")
    _check(len(times), order, rtol, atol, h_init, max_evaluations)
    schedule, device = denoiser.schedule, x.device

    def eps_at(z: Tensor, lam: Tensor, rows: Tensor) -> Tensor:
        # The noise prediction for the EDM variables z at per-image lambda: x = alpha z at the time
        # whose log-SNR is 2 lambda.
        t = time_at_log_snr(schedule, 2 * lam).to(device)
        alpha = schedule.rates(t)[0].float().view(-1, 1, 1, 1)
        image = denoiser(z * alpha, t, None if labels is None else labels[rows.to(labels.device)]).image.float()
        if clip is not None:
            image = clip_image(image, clip)
        return (z - image) / _sigma(lam).to(z)

    start, end = (0.5 * float(log_snr(schedule, times[k])) for k in (0, -2))  # lambda = log(alpha / sigma)
    walk = _Walk(x.float() / float(schedule.rates(times[0])[0]), start, end, h_init, order, max_evaluations,
                 rtol, atol)
    got, rounds = torch.zeros_like(walk.y), 0
    while not bool(walk.done.all()):
        rows = (~walk.done).nonzero().squeeze(1)
        got[rows] = eps_at(walk.query[rows], walk.q[rows], rows)  # one call, whatever stage each image is at
        walk.take(rows, got)
        if callback is not None:
            alpha = schedule.rates(time_at_log_snr(schedule, 2 * walk.lam).to(device))[0].float().view(-1, 1, 1, 1)
            estimate = torch.where(walk.done.to(device).view(-1, 1, 1, 1), walk.image,
                                   walk.y - _sigma(walk.lam).to(walk.y) * walk.eps)
            callback(rounds, walk.y * alpha, estimate)
        rounds += 1
    if report is not None:
        for key, values in (("evaluations", walk.spent), ("accepted", walk.accepted), ("rejected", walk.rejected)):
            report.setdefault(key, []).extend(values.tolist())
        report["capped"] = report.get("capped", 0) + int((walk.finish > 0).sum())
    return walk.image
