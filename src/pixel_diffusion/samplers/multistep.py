"""Multistep solvers of third and fourth order: one network evaluation a step, the earlier steps'
estimates reused (Lu et al. 2022; Zhang & Chen 2023; Zhao et al. 2023)."""

from __future__ import annotations

import math

import torch

from .kernel import Callback, as_noise, check_eta, check_times, edm_sigmas, log_snrs, predict, walk_rates

Tensor = torch.Tensor

# Adams-Bashforth coefficients on equal steps, newest slope first (iPNDM, Zhang & Chen 2023, eq. 9).
ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@torch.no_grad()
def ipndm(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
          order: int = 4, clip=None) -> Tensor:
    """iPNDM (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator",
    sec. 4 and app. B): the probability-flow ODE dx~/ds~ = d = (x~ - D) / s~ in the EDM variables,
    stepped by Adams-Bashforth of the given order with its equal-step coefficients, the first
    steps at orders 1, 2, 3 while the history fills ("improved" PNDM: no Runge-Kutta warm-up,
    so one evaluation a step)."""
    if order not in ADAMS_BASHFORTH:
        raise ValueError(f"iPNDM order must be one of {', '.join(map(str, ADAMS_BASHFORTH))}; got {order!r}")
    times = check_times(times)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    edm = edm_sigmas(alphas, sigmas)
    y = x.float() / alphas[0]  # x~
    slopes: list[Tensor] = []  # d at the latest steps, newest first
    for i in range(len(times) - 1):
        image, _ = predict(denoiser, y * alphas[i], float(times[i]), alphas[i], sigmas[i], labels, clip)
        if callback is not None:
            callback(i, y * alphas[i], image)
        slopes = [(y - image) / edm[i]] + slopes[: order - 1]
        coefficients = ADAMS_BASHFORTH[len(slopes)]
        y = y + (edm[i + 1] - edm[i]) * sum(c * d for c, d in zip(coefficients, slopes))
    return y * alphas[-1]


@torch.no_grad()
def dpmpp_3m(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
             eta: float = 0.0, clip=None) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, "DPM-Solver++", sec. 4 and app. B, data prediction in
    lambda = log(alpha / sigma)). With h = lambda_s - lambda_t, g = (1 + eta) h, the step t -> s is
        x_s = (sigma_s / sigma_t) e^(-eta h) x_t + alpha_s (1 - e^(-g)) D_0
              + alpha_s phi_2(g) D_1 - alpha_s phi_3(g) D_2 + sigma_s sqrt(1 - e^(-2 eta h)) z,
    phi_2(g) = (e^(-g) - 1) / g + 1, phi_3(g) = phi_2(g) / g - 1/2, where D_1 and D_2 are the first
    and second divided differences of the last three image estimates, scaled by h and h^2
    (r_0 = h_1 / h, r_1 = h_2 / h for the previous steps h_1, h_2):
        d_0 = (D - D') / r_0,  d_1 = (D' - D'') / r_1,
        D_1 = d_0 + (d_0 - d_1) r_0 / (r_0 + r_1),  D_2 = (d_0 - d_1) / (r_0 + r_1).
    The second step is second order (D_2 = 0), the first and the step to sigma = 0 first order.
    eta = 0 is the ODE solver (diffusers' DPMSolverMultistep, solver_order 3); eta = 1 the
    third-order SDE solver, as k-diffusion's dpmpp_3m_sde."""
    check_eta(eta)
    times = check_times(times)
    draw = as_noise(noise)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    lam = log_snrs(alphas, sigmas)
    x = x.float()
    images: list[Tensor] = []  # D, D', D'' (newest first)
    steps: list[float] = []  # h_1, h_2: the previous steps' h
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        image, _ = predict(denoiser, x, float(times[i]), a_t, s_t, labels, clip)
        if callback is not None:
            callback(i, x, image)
        if s_s == 0:
            return image
        h = lam[i + 1] - lam[i]
        g = (1 + eta) * h
        images = [image] + images[:2]
        x = (s_s / s_t * math.exp(-eta * h)) * x - a_s * math.expm1(-g) * image
        phi_2 = math.expm1(-g) / g + 1
        if len(images) >= 2:
            r_0 = steps[0] / h
            d_0 = (images[0] - images[1]) / r_0
            if len(images) == 3:
                r_1 = steps[1] / h
                d_1 = (images[1] - images[2]) / r_1
                first = d_0 + (d_0 - d_1) * (r_0 / (r_0 + r_1))
                second = (d_0 - d_1) / (r_0 + r_1)
                x = x + (a_s * phi_2) * first - (a_s * (phi_2 / g - 0.5)) * second
            else:
                x = x + (a_s * phi_2) * d_0
        if eta > 0:
            x = x + s_s * math.sqrt(-math.expm1(-2 * eta * h)) * draw(x)
        steps = [h] + steps[:1]
    return x


@torch.no_grad()
def dpmpp_3m_sde(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
                 eta: float = 1.0, clip=None) -> Tensor:
    """SDE-DPM-Solver++(3M): `dpmpp_3m` with eta = 1, fresh noise on every step but the last."""
    return dpmpp_3m(denoiser, x, times, labels=labels, noise=noise, callback=callback, eta=eta, clip=clip)


def unipc_weights(ratios: list[float], h: float, corrector: bool) -> list[float]:
    """The weights rho of UniPC's bh2 update (Zhao et al. 2023, eq. 8 and Algorithms 1-2, in data
    prediction with B(h) = e^(-h) - 1, h > 0), from the ratios r_k = (lambda_k - lambda_t) / h of
    the earlier estimates used (newest first; for the corrector the new estimate's r = 1 last):
    rho solves sum_k rho_k r_k^(i-1) = i! g_i / B(h), i = 1 .. size, with
    g_1 = (e^(-h) - 1) / (-h) - 1 and g_(i+1) = g_i / (-h) - 1 / (i+1)!. The predictor of order 2
    and the corrector of order 1 take rho = 1/2 (the paper's choice for them)."""
    order = len(ratios) + (0 if corrector else 1)
    if (corrector and order == 1) or (not corrector and order == 2):
        return [0.5]
    hh = -h
    b_h = math.expm1(hh)
    phi = math.expm1(hh) / hh - 1  # g_1
    factorial, b = 1, []
    for i in range(1, order + 1):
        b.append(phi * factorial / b_h)
        factorial *= i + 1
        phi = phi / hh - 1 / factorial
    rows = ratios + ([] if corrector else [1.0])
    size = len(ratios) if not corrector else order
    matrix = torch.tensor([[r ** (i - 1) for r in rows[:size]] for i in range(1, size + 1)], dtype=torch.float64)
    return torch.linalg.solve(matrix, torch.tensor(b[:size], dtype=torch.float64)).tolist()


def unipc_step(x: Tensor, a_s: float, s_t: float, s_s: float, h: float, image: Tensor,
               earlier: list[tuple[float, Tensor]], new: Tensor | None = None) -> Tensor:
    """One UniP step (new is None) or UniC correction (new: the estimate at the step's end) from x at
    (lambda_t, estimate `image`) to lambda_t + h, with the earlier (lambda_k - lambda_t, estimate_k)."""
    ratios = [d / h for d, _ in earlier]
    differences = [(m - image) / r for r, (_, m) in zip(ratios, earlier)]  # D1_k
    b_h = math.expm1(-h)
    out = (s_s / s_t) * x - (a_s * b_h) * image
    if new is None and not differences:
        return out
    rho = unipc_weights(ratios + ([1.0] if new is not None else []), h, corrector=new is not None)
    terms = differences + ([new - image] if new is not None else [])
    return out - (a_s * b_h) * sum(w * d for w, d in zip(rho, terms))


@torch.no_grad()
def unipc(denoiser, x: Tensor, times, *, labels=None, noise=None, callback: Callback | None = None,
          order: int = 3, corrector: bool = True, clip=None) -> Tensor:
    """UniPC (Zhao et al. 2023), data prediction, B(h) = e^(-h) - 1 ("bh2"). Each step predicts
    x at the next time with UniP of order p from the last p image estimates, and once the network has
    seen that prediction, UniC corrects it with the new estimate before the next step (no extra
    evaluation: the estimate is reused by the next predictor). The order warms up (1, 2, ...) and
    comes down on the last steps, p = min(order, i + 1, n - i), as diffusers' UniPCMultistep
    (lower_order_final); the step to sigma = 0 returns the image estimate."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3; got {order!r}")
    times = check_times(times)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    lam = log_snrs(alphas, sigmas)
    n = len(times) - 1
    x = x.float()
    history: list[tuple[float, Tensor]] = []  # (lambda, image estimate), newest first
    previous = None  # (x, order) of the last predictor step, for the corrector
    for i in range(n):
        image, _ = predict(denoiser, x, float(times[i]), alphas[i], sigmas[i], labels, clip)
        if callback is not None:
            callback(i, x, image)
        if corrector and previous is not None:  # UniC at time i with the estimate just made
            x_last, p = previous
            earlier = [(lam_k - lam[i - 1], m) for lam_k, m in history[1:p]]
            x = unipc_step(x_last, alphas[i], sigmas[i - 1], sigmas[i], lam[i] - lam[i - 1], history[0][1], earlier,
                           new=image)
        history = [(lam[i], image)] + history[: order - 1]
        if sigmas[i + 1] == 0:
            return image
        p = min(order, i + 1, n - i)
        earlier = [(lam_k - lam[i], m) for lam_k, m in history[1:p]]
        previous = (x, p)
        x = unipc_step(x, alphas[i + 1], sigmas[i], sigmas[i + 1], lam[i + 1] - lam[i], image, earlier)
    return x
