import math

import pytest
import torch
from torch import nn

from pixel_diffusion import schedules
from pixel_diffusion.diffusion import (
    NOISE_INPUTS,
    PREDICTIONS,
    Denoiser,
    DiffusionLoss,
    Split,
    add_noise,
    forward_chain,
)
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
        else:
            alpha, sigma = torch.sigmoid(level).sqrt(), torch.sigmoid(-level).sqrt()
        a, s = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        image = self.exact.posterior_mean(x.double(), a, s)
        noise = (x.double() - a * image) / s
        out = {"noise": noise, "image": image, "velocity": a * noise - s * image}[self.prediction]
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


# ---- loss -------------------------------------------------------------------------------------


class Recorder:
    """Passes calls through to a denoiser and remembers the times and predictions it gave."""

    def __init__(self, denoiser):
        self.denoiser, self.schedule = denoiser, denoiser.schedule

    def __call__(self, x, t, labels=None):
        self.t, self.x = t, x
        return self.denoiser(x, t, labels)


def _images(n=20000, seed=0):
    return MU + STD * torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("target", ["noise", "image", "velocity"])
def test_loss_of_the_exact_denoiser_is_the_posterior_variance(target):
    # With the exact denoiser, E|target - estimate|^2 at time t is the posterior variance of the
    # target: image v = s^2 sigma^2 / (alpha^2 s^2 + sigma^2), noise v snr, velocity v / sigma^2.
    schedule = schedules.linear()
    exact = GaussianDenoiser.iid(schedule, MU, STD)
    loss = DiffusionLoss(target=target)(exact, _images(), generator=torch.Generator().manual_seed(1))
    alpha, sigma = schedule.rates((torch.arange(1000, dtype=torch.float64) + 1) / 1000)
    v = STD**2 * sigma**2 / (alpha**2 * STD**2 + sigma**2)
    expected = {"image": v, "noise": v * alpha**2 / sigma**2, "velocity": v / sigma**2}[target].mean().item()
    assert loss.shape == (20000,)
    assert loss.mean().item() == pytest.approx(expected, rel=0.03)


@pytest.mark.parametrize("weighting", ["min-snr", "p2"])
def test_a_weighting_means_the_same_for_every_target(weighting):
    schedule = schedules.cosine()
    exact = GaussianDenoiser.iid(schedule, MU, STD * 1.3)  # a slightly wrong denoiser: non-zero errors
    images = _images(512)
    losses = [
        DiffusionLoss(target=target, weighting=weighting)(exact, images, generator=torch.Generator().manual_seed(2))
        for target in ("noise", "image", "velocity")
    ]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(losses[0], losses[2], rtol=1e-3, atol=1e-7)


def test_min_snr_and_p2_weights_follow_their_papers():
    schedule = schedules.linear()
    recorder = Recorder(GaussianDenoiser.iid(schedule, MU, STD * 1.3))
    images = _images(256)

    def run(**options):
        value = DiffusionLoss(**options)(recorder, images, generator=torch.Generator().manual_seed(3))
        alpha, sigma = schedule.rates(recorder.t)
        return value, (alpha / sigma) ** 2

    plain, snr = run(target="noise")
    min_snr, _ = run(target="noise", weighting="min-snr", min_snr_gamma=5.0)
    torch.testing.assert_close(min_snr, plain * (snr.clamp(max=5.0) / snr).float())
    assert bool((snr > 5).any() and (snr < 5).any())
    plain_v, _ = run(target="velocity")
    min_snr_v, _ = run(target="velocity", weighting="min-snr", min_snr_gamma=5.0)
    torch.testing.assert_close(min_snr_v, plain_v * (snr.clamp(max=5.0) / (snr + 1)).float())
    p2, _ = run(target="noise", weighting="p2", p2_gamma=0.5, p2_k=1.0)
    torch.testing.assert_close(p2, plain * (1 / (1 + snr) ** 0.5).float())


def test_distances():
    schedule = schedules.linear()
    exact = GaussianDenoiser.iid(schedule, MU, STD * 1.3)
    images = _images(256)
    run = lambda **o: DiffusionLoss(**o)(exact, images, generator=torch.Generator().manual_seed(4))
    mse, mae = run(distance="mse"), run(distance="mae")
    assert bool((mae**2 <= mse + 1e-6).all())  # Jensen, per example
    # Huber: quadratic (0.5 d^2 / delta) for small errors, linear (|d| - delta / 2) for large ones.
    torch.testing.assert_close(run(distance="huber", huber_delta=1e3), 0.5 * mse / 1e3, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(run(distance="huber", huber_delta=1e-6), mae, rtol=1e-4, atol=1e-6)


def test_time_sampling_is_uniform():
    generator = torch.Generator().manual_seed(5)
    images = torch.zeros(100000, 1, 1, 1)
    for schedule in (schedules.linear(100), schedules.sigmoid()):
        recorder = Recorder(GaussianDenoiser.iid(schedule, 0.0, 1.0))
        DiffusionLoss()(recorder, images, generator=generator)
        t = recorder.t
        assert float(t.min()) >= schedule.t_min and float(t.max()) <= 1
        if schedule.num_steps:
            torch.testing.assert_close(t * 100, (t * 100).round())  # on the grid
        counts = torch.histc(t.float(), bins=10, min=schedule.t_min, max=1)
        assert counts.min() > 0.95 * 10000 and counts.max() < 1.05 * 10000


def test_log_normal_time_sampling_draws_the_edm_noise_levels():
    # ln(sigma / alpha) at the drawn times ~ N(P_mean, P_std^2) (Karras et al. 2022), here on the
    # discrete cosine grid, whose range (ln sigma/alpha from -5.0 to 9.9) clips 0.1% of draws.
    images = torch.zeros(50000, 1, 1, 1)
    schedule = schedules.cosine()
    for mean, std in ((-1.2, 1.2), (0.5, 0.6)):
        recorder = Recorder(GaussianDenoiser.iid(schedule, 0.0, 1.0))
        loss = DiffusionLoss(time_sampling="log-normal", log_normal_mean=mean, log_normal_std=std)
        loss(recorder, images, generator=torch.Generator().manual_seed(6))
        alpha, sigma = schedule.rates(recorder.t)
        log_sigma = (sigma / alpha).log()
        assert abs(float(log_sigma.mean()) - mean) < 0.02 and abs(float(log_sigma.std()) - std) < 0.02
        # Quartiles too, not just the first two moments.
        quartiles = torch.quantile(log_sigma.float(), torch.tensor([0.25, 0.5, 0.75]))
        torch.testing.assert_close(quartiles, mean + std * torch.tensor([-0.6745, 0.0, 0.6745]), atol=0.03, rtol=0)
    # A schedule narrower than the distribution holds every draw inside [t_min, 1].
    recorder = Recorder(GaussianDenoiser.iid(schedules.linear(100), 0.0, 1.0))
    DiffusionLoss(time_sampling="log-normal", log_normal_std=5.0)(recorder, images[:5000], generator=torch.Generator().manual_seed(7))
    assert float(recorder.t.min()) >= 0.01 and float(recorder.t.max()) <= 1 and float(recorder.t.min()) < 0.0101
    with pytest.raises(ValueError, match="log_normal_std must be positive"):
        DiffusionLoss(time_sampling="log-normal", log_normal_std=0.0)
    with pytest.raises(ValueError, match="log_normal_mean must be a finite number"):
        DiffusionLoss(time_sampling="log-normal", log_normal_mean=float("nan"))


def test_loss_trains_a_network():
    torch.manual_seed(0)
    schedule = schedules.linear(100)
    conv = nn.Sequential(nn.Conv2d(2, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 1, 3, padding=1))

    def net(x, level, labels=None):  # the noise level enters as a constant channel
        return conv(torch.cat([x, (level / 100).view(-1, 1, 1, 1).expand_as(x)], 1))

    denoiser = Denoiser(net, schedule, "noise", "timestep")
    loss_fn = DiffusionLoss()
    images = torch.linspace(-1, 1, 8).view(1, 1, 1, 8).expand(64, 1, 8, 8)  # one ramp image
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(conv.parameters(), lr=3e-3)
    first = loss_fn(denoiser, images, generator=torch.Generator().manual_seed(1)).mean().item()
    for _ in range(150):
        loss = loss_fn(denoiser, images, generator=generator).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss_fn(denoiser, images, generator=torch.Generator().manual_seed(1)).mean().item() < 0.5 * first


def test_loss_rejects_unknown_choices():
    with pytest.raises(ValueError, match="expected one of noise, image, velocity"):
        DiffusionLoss(target="score")
    with pytest.raises(ValueError, match="expected one of mse, mae, huber"):
        DiffusionLoss(distance="l3")
    with pytest.raises(ValueError, match="expected one of none, min-snr, p2"):
        DiffusionLoss(weighting="snr")
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        DiffusionLoss(weighting="min-snr", min_snr_gamma=0)


def test_split_is_a_named_pair():
    split = Split(torch.zeros(1), torch.ones(1))
    image, noise = split
    assert split.image is image and split.noise is noise
