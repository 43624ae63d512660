"""Exact denoisers for data whose distribution is known in closed form.

For Gaussian data the best possible denoiser E[x_0 | x_t] is linear in x_t, and for a mixture of
Gaussians it is a posterior-weighted sum of such; no training is involved. They follow the
Denoiser contract (`denoiser(x_t, t, labels) -> Split`), so every sampler can be checked against
the true distribution, and a Gaussian fitted to a dataset shows what sampling does before any
network is trained.
"""

from __future__ import annotations

import abc
import math

import torch

from .diffusion import Split, per_example
from .schedules import Schedule

Tensor = torch.Tensor


class _ExactDenoiser(abc.ABC):
    schedule: Schedule

    @abc.abstractmethod
    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x_0 | x_t] in float64, with alpha and sigma broadcast per example."""

    def _estimate(self, x: Tensor, t) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        alpha, sigma = self.schedule.rates(t)
        x64 = x.double()
        a, s = per_example(alpha, x64), per_example(sigma, x64)
        return self.posterior_mean(x64, a, s), a, s

    def __call__(self, x: Tensor, t, labels: Tensor | None = None) -> Split:
        image, a, s = self._estimate(x, t)
        return Split(image.float(), ((x.double() - a * image) / s).float())

    def denoise(self, x: Tensor, t) -> Tensor:
        """E[x_0 | x_t] at time t in float64 (the image part of the split, before float32)."""
        return self._estimate(x, torch.as_tensor(t, dtype=torch.float64))[0]


class GaussianDenoiser(_ExactDenoiser):
    """x_0 ~ N(mu, Sigma) over images of `shape`, with Sigma = U diag(lambda) U^T.

    E[x_0 | x_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^{-1} (x_t - alpha mu)
                 = mu + U diag(alpha lambda / (alpha^2 lambda + sigma^2)) U^T (x_t - alpha mu).
    With `basis=None` the pixels are independent with variances `variances` (shaped like an image
    or broadcastable to one)."""

    def __init__(self, schedule: Schedule, mean: Tensor, variances: Tensor, basis: Tensor | None = None):
        self.schedule = schedule
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.variances = torch.as_tensor(variances, dtype=torch.float64).clamp(min=0)
        self.basis = None if basis is None else torch.as_tensor(basis, dtype=torch.float64)

    @classmethod
    def iid(cls, schedule: Schedule, mean: float, std: float) -> GaussianDenoiser:
        """Every pixel independently N(mean, std^2)."""
        return cls(schedule, torch.tensor(mean), torch.tensor(std**2))

    @classmethod
    def fit(cls, schedule: Schedule, images: Tensor) -> GaussianDenoiser:
        """The Gaussian with the mean and full pixel covariance of `images` (N, C, H, W)."""
        flat = images.flatten(1).double()
        mean = flat.mean(0)
        centred = flat - mean
        covariance = centred.T @ centred / max(flat.shape[0] - 1, 1)
        variances, basis = torch.linalg.eigh(covariance)
        return cls(schedule, mean.reshape(images.shape[1:]), variances, basis)

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        mean = self.mean.to(x.device)
        variances = self.variances.to(x.device)
        residual = x - alpha * mean
        if self.basis is None:
            return mean + alpha * variances / (alpha**2 * variances + sigma**2) * residual
        basis = self.basis.to(x.device)
        a, s = alpha.flatten(1), sigma.flatten(1)  # (B, 1)
        coords = residual.flatten(1) @ basis  # (B, D): residual in the eigenbasis
        gain = a * variances / (a**2 * variances + s**2)
        return mean + ((gain * coords) @ basis.T).reshape(x.shape)

    def flow(self, x: Tensor, t: float, to: float = 0.0) -> Tensor:
        """Where the probability-flow ODE takes x from time t to time `to` (independent pixels;
        `to` = 0 is clean data, alpha 1 and sigma 0): each point keeps its standardised position in
        the marginal N(alpha mu, alpha^2 s^2 + sigma^2)."""
        if self.basis is not None:
            raise ValueError("the closed-form flow needs independent pixels (basis=None)")

        def marginal(time):  # mean and standard deviation of x_time
            if time == 0:
                return self.mean, self.variances.sqrt()
            a, sigma = (float(v) for v in self.schedule.rates(torch.tensor(float(time), dtype=torch.float64)))
            return a * self.mean, (a**2 * self.variances + sigma**2).sqrt()

        (m_t, sd_t), (m_to, sd_to) = marginal(t), marginal(to)
        return m_to + sd_to * (x.double() - m_t) / sd_t

    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """n exact draws of x_0 (float64), shaped (n, *shape)."""
        if self.basis is None:
            z = torch.randn((n, *shape), generator=generator, dtype=torch.float64)
            return self.mean + self.variances.sqrt() * z
        z = torch.randn((n, self.variances.numel()), generator=generator, dtype=torch.float64)
        return self.mean + ((z * self.variances.sqrt()) @ self.basis.T).reshape(n, *shape)


class MixtureDenoiser(_ExactDenoiser):
    """Every pixel independently drawn from sum_k w_k N(mu_k, s_k^2).

    Given x_t, component k has posterior weight r_k proportional to w_k N(x_t; alpha mu_k,
    alpha^2 s_k^2 + sigma^2), and E[x_0 | x_t] = sum_k r_k (mu_k + alpha s_k^2 / (alpha^2 s_k^2 +
    sigma^2) (x_t - alpha mu_k))."""

    def __init__(self, schedule: Schedule, weights, means, stds):
        self.schedule = schedule
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        if not (self.weights.shape == self.means.shape == self.stds.shape and self.weights.ndim == 1):
            raise ValueError("weights, means and stds must be 1-D and of one length")
        if not math.isclose(float(self.weights.sum()), 1.0, rel_tol=1e-9) or bool((self.weights < 0).any()):
            raise ValueError(f"mixture weights must be non-negative and sum to 1; got {self.weights.tolist()}")
        self.weights = self.weights / self.weights.sum()

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        w, mu, var = (p.to(x.device) for p in (self.weights, self.means, self.stds**2))
        x, alpha, sigma = x.unsqueeze(-1), alpha.unsqueeze(-1), sigma.unsqueeze(-1)  # component axis last
        marginal_var = alpha**2 * var + sigma**2
        log_r = w.log() - 0.5 * (x - alpha * mu) ** 2 / marginal_var - 0.5 * marginal_var.log()
        r = torch.softmax(log_r, dim=-1)
        return (r * (mu + alpha * var / marginal_var * (x - alpha * mu))).sum(-1)

    def sample(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
        """n exact draws of x_0 (float64), shaped (n, *shape)."""
        size = (n, *shape)
        component = torch.multinomial(self.weights, math.prod(size), replacement=True, generator=generator)
        z = torch.randn(math.prod(size), generator=generator, dtype=torch.float64)
        return (self.means[component] + self.stds[component] * z).reshape(size)


class GaussianConsistency:
    """The exact consistency function of Gaussian data with independent pixels: each x_t is mapped
    to where the probability-flow ODE takes it at t = 0 (`GaussianDenoiser.flow`), what a perfectly
    distilled consistency model returns. Follows the Denoiser contract, so the consistency sampler
    can be checked against the true distribution at any number of steps."""

    def __init__(self, gaussian: GaussianDenoiser):
        self.gaussian, self.schedule = gaussian, gaussian.schedule

    def __call__(self, x: Tensor, t, labels: Tensor | None = None) -> Split:
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        if not bool((t == t[0]).all()):
            raise ValueError("the closed-form consistency function takes one time per call")
        image = self.gaussian.flow(x, float(t[0]), 0.0)
        alpha, sigma = (float(r) for r in self.schedule.rates(t[:1].double()))
        return Split(image.float(), ((x.double() - alpha * image) / sigma).float())
