import math

import pytest
import torch
from torch import nn

from pixel_diffusion import schedules
from pixel_diffusion.diffusion import NOISE_INPUTS, PREDICTIONS, Denoiser, Split, add_noise, forward_chain
from pixel_diffusion.exact import GaussianDenoiser

MU, STD = 0.3, 0.5


class OracleNet(nn.Module):
    """A 'network' that outputs the exact answer in a given parameterisation, reading the noise
    level in a given form: it recovers (alpha, sigma) from the level alone."""

    def __init__(self, exact, prediction, noise_input):
        super().__init__()
        self.exact, self.prediction, self.noise_input = exact, prediction, noise_input

    def forward(self, x, level, labels=None):
        level = level.double()
        if self.noise_input == "timestep":
            alpha, sigma = self.exact.schedule.rates((level + 1) / self.exact.schedule.num_steps)
        elif self.noise_input == "variance":
            alpha, sigma = (1 - level).sqrt(), level.sqrt()
        elif self.noise_input == "time":
            alpha, sigma = self.exact.schedule.rates(level / 1000)
        else:
            alpha, sigma = torch.sigmoid(level).sqrt(), torch.sigmoid(-level).sqrt()
        a, s = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        image = self.exact.posterior_mean(x.double(), a, s)
        noise = (x.double() - a * image) / s
        out = {"noise": noise, "image": image, "velocity": a * noise - s * image, "flow": noise - image}[self.prediction]
        return out.to(self.dtype)

    dtype = torch.float32


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("noise_input", NOISE_INPUTS)
def test_denoiser_returns_the_same_split_for_every_parameterisation(prediction, noise_input):
    schedule = schedules.cosine()
    exact = GaussianDenoiser.iid(schedule, MU, STD)
    denoiser = Denoiser(OracleNet(exact, prediction, noise_input), schedule, prediction, noise_input)
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.05, 0.95, 64, dtype=torch.float64)
    t = ((t * 1000).round() / 1000) if noise_input == "timestep" else t
    got, want = denoiser(x, t), exact(x, t)
    torch.testing.assert_close(got.image, want.image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.noise, want.noise, rtol=1e-4, atol=1e-4)


def test_denoiser_returns_float32_from_a_low_precision_network():
    schedule = schedules.linear()
    net = OracleNet(GaussianDenoiser.iid(schedule, MU, STD), "velocity", "log-snr")
    net.dtype = torch.bfloat16
    split = Denoiser(net, schedule, "velocity", "log-snr")(torch.randn(2, 1, 4, 4), 0.5)
    assert split.image.dtype == split.noise.dtype == torch.float32


def test_denoiser_split_recombines_into_x_t():
    schedule = schedules.linear()
    net = nn.Conv2d(1, 1, 3, padding=1)
    for prediction in PREDICTIONS:
        denoiser = Denoiser(lambda x, level, labels=None: net(x), schedule, prediction, "log-snr")
        x = torch.randn(8, 1, 5, 5)
        t = torch.rand(8, dtype=torch.float64) * 0.9 + 0.05
        image, noise = denoiser(x, t)
        alpha, sigma = schedule.rates(t)
        recombined = alpha.view(-1, 1, 1, 1).float() * image + sigma.view(-1, 1, 1, 1).float() * noise
        torch.testing.assert_close(recombined, x, rtol=1e-4, atol=1e-4)


def test_denoiser_rejects_unknown_choices():
    s = schedules.linear()
    with pytest.raises(ValueError, match="expected one of noise, image, velocity"):
        Denoiser(nn.Identity(), s, prediction="score")
    with pytest.raises(ValueError, match="expected one of timestep, variance, log-snr"):
        Denoiser(nn.Identity(), s, noise_input="sigma")
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        Denoiser(nn.Identity(), schedules.continuous_cosine(), noise_input="timestep")


def test_markov_chain_reaches_the_closed_form_moments():
    schedule = schedules.linear()
    generator = torch.Generator().manual_seed(0)
    x0 = MU + STD * torch.randn(4000, 16, generator=generator, dtype=torch.float64)
    keep = [0, 10, 100, 500, 1000]
    states = forward_chain(schedule, x0, keep, generator=generator)
    n = x0.numel()
    for k, x in zip(keep, states):
        alpha, sigma = (float(r) for r in schedule.rates(torch.tensor(k / 1000, dtype=torch.float64)))
        var = alpha**2 * STD**2 + sigma**2
        assert abs(x.mean().item() - alpha * MU) < 5 * math.sqrt(var / n)
        assert x.var().item() == pytest.approx(var, rel=5 * math.sqrt(2 / n))
        covariance = ((x - x.mean()) * (x0 - x0.mean())).mean().item()
        assert covariance == pytest.approx(alpha * STD**2, abs=5 * math.sqrt(var * STD**2 / n))
        closed = add_noise(schedule, x0, torch.tensor(k / 1000, dtype=torch.float64), torch.randn_like(x0))
        assert closed.var().item() == pytest.approx(var, rel=5 * math.sqrt(2 / n))


def test_forward_chain_needs_a_discrete_schedule_and_valid_steps():
    with pytest.raises(ValueError, match="discrete schedule"):
        forward_chain(schedules.continuous_cosine(), torch.zeros(1, 1, 2, 2), [1])
    with pytest.raises(ValueError, match=r"0\.\.1000"):
        forward_chain(schedules.linear(), torch.zeros(1, 1, 2, 2), [1001])


def test_split_is_a_named_pair():
    split = Split(torch.zeros(1), torch.ones(1))
    image, noise = split
    assert split.image is image and split.noise is noise
