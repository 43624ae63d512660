import math

import numpy as np
import pytest
import torch

from pixel_diffusion import schedules
from pixel_diffusion.schedules import SCHEDULES, log_snr, make_schedule, sampling_times, time_at_log_snr

ALL = {name: factory() for name, factory in SCHEDULES.items() if name not in ("uniform-mixing", "betas")}
ALL["betas"] = schedules.betas(torch.linspace(1e-4, 0.05, 300).tolist())  # a table needs its values
ALL["linear-200"] = schedules.linear(200, 1e-4, 0.02)
ALL["linear-100"] = schedules.linear(100, 1e-4, 0.04)
ALL["cosine-shift-2"] = make_schedule("cosine", shift=2)
ALL["sigmoid-shift-4"] = make_schedule("sigmoid", shift=4)
ALL["rectified-flow-shift-3"] = make_schedule("rectified-flow", shift=3)
FINE = torch.linspace(0, 1, 20001, dtype=torch.float64)


@pytest.mark.parametrize("name", ALL)
def test_rates_are_variance_preserving_or_straight_as_said_and_monotone(name):
    alpha, sigma = ALL[name].rates(FINE)
    assert alpha.dtype == torch.float64
    total = alpha**2 + sigma**2 if ALL[name].variance_preserving else alpha + sigma
    torch.testing.assert_close(total, torch.ones_like(alpha), rtol=0, atol=1e-12)
    assert bool((alpha[1:] < alpha[:-1]).all()), "alpha must decrease strictly in t"
    assert bool((sigma[1:] > sigma[:-1]).all())
    lam = log_snr(ALL[name], FINE[1:])
    assert bool((lam[1:] < lam[:-1]).all())


def test_linear_matches_ddpm_table():
    s = schedules.linear()
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1 - betas)
    assert s.num_steps == 1000 and s.betas[0] == 1e-4 and s.betas[-1] == 0.02
    grid = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    alpha, sigma = s.rates(grid)
    np.testing.assert_allclose(alpha.numpy() ** 2, alphas_cumprod, rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy() ** 2, 1 - alphas_cumprod, rtol=1e-10)
    assert s.rates(torch.tensor(0.0)) == (1.0, 0.0)
    # The well-known end point of the DDPM schedule: sqrt(alpha-bar_T) = 0.00635.
    assert float(alpha[-1]) == pytest.approx(0.006353, abs=1e-6)


def test_discrete_rates_interpolate_log_alpha_sq_between_grid_points():
    s = schedules.linear(10, 0.1, 0.2)
    a_lo, _ = s.rates(torch.tensor(0.3, dtype=torch.float64))
    a_hi, _ = s.rates(torch.tensor(0.4, dtype=torch.float64))
    a_mid, _ = s.rates(torch.tensor(0.35, dtype=torch.float64))
    assert float(a_mid.log()) == pytest.approx(0.5 * float(a_lo.log() + a_hi.log()), rel=1e-12)


def test_cosine_matches_diffusers_squaredcos_cap_v2():
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    ours = schedules.cosine()
    torch.testing.assert_close(ours.betas.float(), reference.betas, rtol=1e-6, atol=1e-7)
    # Away from the clipped end, alpha^2 is f(t) / f(0) exactly.
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    f = lambda t: torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    torch.testing.assert_close(ours.rates(t)[0] ** 2, f(t) / f(torch.zeros(1, dtype=torch.float64)), rtol=1e-10, atol=0)


def test_continuous_cosine_end_points_are_the_keras_signal_rates():
    s = schedules.continuous_cosine()
    alpha, sigma = s.rates(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(alpha, torch.tensor([0.95, 0.02], dtype=torch.float64))
    torch.testing.assert_close(sigma, torch.tensor([math.sqrt(1 - 0.95**2), math.sqrt(1 - 0.02**2)], dtype=torch.float64))


def test_sigmoid_end_points():
    s = schedules.sigmoid()
    alpha, sigma = s.rates(torch.tensor([0.0, 1.0]))
    assert float(alpha[0]) == pytest.approx(1.0) and float(sigma[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(alpha[1]) ** 2 == pytest.approx(1e-9)


def test_sampling_times_equal_diffusers_timesteps():
    diffusers = pytest.importorskip("diffusers")
    s = schedules.linear()
    for spacing, theirs in [("uniform", "linspace"), ("leading", "leading"), ("trailing", "trailing")]:
        for steps in (2, 7, 10, 50, 333, 1000):
            reference = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=theirs)
            reference.set_timesteps(steps)
            times = sampling_times(s, steps, spacing)
            assert len(times) == steps + 1 and times[-1] == 0
            ours = (times[:-1] * 1000 - 1).round().long()
            assert torch.equal(ours, reference.timesteps), (spacing, steps)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("spacing", list(schedules.SPACINGS))
def test_sampling_times_decrease_to_zero(name, spacing):
    s = ALL[name]
    if s.num_steps is None and spacing in ("leading", "trailing"):
        with pytest.raises(ValueError, match="discrete schedule"):
            sampling_times(s, 10, spacing)
        return
    for steps in (1, 3, 10, 100):
        times = sampling_times(s, steps, spacing)
        assert times.shape == (steps + 1,) and times.dtype == torch.float64
        assert bool((times[1:] < times[:-1]).all()) and times[-1] == 0 and times[0] <= 1
        assert float(times[-2]) >= s.t_min - 1e-9
    if spacing in ("uniform", "trailing"):
        assert float(sampling_times(s, 1, spacing)[0]) == 1.0  # one step starts from pure noise
    if spacing in ("karras", "log-snr") and s.variance_preserving:
        assert float(sampling_times(s, 1, spacing, sigma_max=math.inf)[0]) == 1.0
    elif spacing in ("karras", "log-snr"):  # alpha(1) = 0: no finite noise level to start from at t = 1
        with pytest.raises(ValueError, match="pure noise at t = 1"):
            sampling_times(s, 1, spacing, sigma_max=math.inf)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("spacing", ["karras", "log-snr"])
def test_noise_level_spacings_start_at_sigma_max_or_at_t_one(name, spacing):
    s = ALL[name]
    top = float((-log_snr(s, torch.tensor(1.0, dtype=torch.float64)) / 2).exp())  # the schedule's own
    for sigma_max in (None, 10.0, 80.0):
        times = sampling_times(s, 12, spacing, sigma_max=sigma_max)
        start = float((-log_snr(s, times[:1]) / 2).exp())
        cap = schedules.SIGMA_MAX if sigma_max is None else sigma_max
        if top <= cap:
            assert float(times[0]) == 1.0
        else:
            assert float(times[0]) < 1 and start == pytest.approx(cap, rel=1e-6)
        # the rest of the walk is unchanged: same end, strictly decreasing
        uncapped = math.inf if math.isfinite(top) else 1e9
        assert float(times[-2]) == pytest.approx(float(sampling_times(s, 12, spacing, sigma_max=uncapped)[-2]), rel=1e-9)


def test_grid_spacings_refuse_sigma_max():
    for spacing in ("uniform", "leading", "trailing"):
        with pytest.raises(ValueError, match="always starts at t = 1"):
            sampling_times(schedules.cosine(), 10, spacing, sigma_max=80.0)
    for bad in (0.0, -1.0, float("nan"), "80"):
        with pytest.raises(ValueError, match="sigma_max must be a positive number"):
            sampling_times(schedules.cosine(), 10, "karras", sigma_max=bad)


def test_karras_times_follow_rho_spacing_of_the_edm_noise_level():
    s = schedules.cosine()
    times = sampling_times(s, 8, "karras")[:-1]
    edm_sigma = (-log_snr(s, times) / 2).exp()
    ramp = edm_sigma ** (1 / 7)
    torch.testing.assert_close(ramp.diff(), ramp.diff()[:1].expand(7), rtol=1e-6, atol=0)


def test_time_at_log_snr_inverts_log_snr():
    for s in ALL.values():
        t = torch.linspace(max(s.t_min, 1e-3), 1, 50, dtype=torch.float64)
        torch.testing.assert_close(time_at_log_snr(s, log_snr(s, t)), t, rtol=0, atol=1e-8)


def test_discrete_inverse_matches_bisection_everywhere():
    # The discrete schedules invert their table exactly; any other schedule bisects. Both answers
    # agree on and off the grid, and both clamp targets beyond the schedule's range to [0, 1].
    class Bisected:  # the same rates, not a DiscreteSchedule, so time_at_log_snr bisects
        def __init__(self, schedule):
            self.rates, self.num_steps, self.t_min, self.noise = schedule.rates, None, schedule.t_min, "gaussian"

    for s in (schedules.linear(), schedules.cosine(), schedules.linear(num_steps=100, beta_end=0.04)):
        t = torch.rand(200, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        targets = torch.cat([log_snr(s, t), torch.tensor([60.0, -60.0], dtype=torch.float64)])
        exact, bisected = time_at_log_snr(s, targets), time_at_log_snr(Bisected(s), targets)
        torch.testing.assert_close(exact, bisected, rtol=0, atol=1e-12)
        assert exact[-1] == 1 and exact[-2] < s.t_min


def test_bad_arguments_say_what_is_allowed():
    s = schedules.linear()
    with pytest.raises(ValueError, match="positive integer"):
        sampling_times(s, 0)
    with pytest.raises(ValueError, match="positive integer"):
        sampling_times(s, -5)
    with pytest.raises(ValueError, match="expected 1 to 1000"):
        sampling_times(s, 1001)
    with pytest.raises(ValueError, match="expected one of uniform, leading"):
        sampling_times(s, 10, "quadratic")
    with pytest.raises(ValueError, match="expected one of linear, cosine"):
        make_schedule("exponential")
    with pytest.raises(ValueError, match="betas must lie in"):
        schedules.DiscreteSchedule(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="min_signal_rate < max_signal_rate"):
        schedules.continuous_cosine(0.9, 0.5)
    with pytest.raises(ValueError, match="rectified flow needs shift > 0"):
        make_schedule("rectified-flow", t_min=1.0)


def test_uniform_mixing_ddim_is_the_tutorials_sampler():
    # The MNIST tutorial: x <- x (1 - f) + prediction f with f = 1 / (steps - i), from uniform noise.
    from pixel_diffusion.diffusion import Denoiser
    from pixel_diffusion.samplers import ddim

    schedule = schedules.uniform_mixing()
    net = lambda x, level, labels=None: torch.tanh(2 * x) * 0.9  # stands in for the BasicUNet
    denoiser = Denoiser(net, schedule, prediction="image", noise_input="variance")
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    steps = 7
    expected = x.clone()
    for i in range(steps):
        f = 1 / (steps - i)
        expected = expected * (1 - f) + net(expected, None) * f
    torch.testing.assert_close(ddim(denoiser, x, sampling_times(schedule, steps)), expected, rtol=1e-5, atol=1e-5)
    alpha, sigma = schedule.rates(torch.tensor([0.0, 0.25, 1.0]))
    assert alpha.tolist() == [1.0, 0.75, 0.0] and sigma.tolist() == [0.0, 0.25, 1.0]


@pytest.mark.parametrize("name", ["cosine", "linear", "continuous-cosine", "sigmoid", "rectified-flow"])
def test_a_shift_lowers_the_log_snr_by_twice_its_log_at_every_time(name):
    base, moved = make_schedule(name), make_schedule(name, shift=2.0)
    # A table is moved at its grid points (between them it interpolates log alpha-bar, as any table).
    t = FINE[1:-1] if base.num_steps is None else torch.arange(1, base.num_steps + 1, dtype=torch.float64) / base.num_steps
    torch.testing.assert_close(log_snr(moved, t), log_snr(base, t) - 2 * math.log(2), rtol=0, atol=1e-9)
    assert moved.num_steps == base.num_steps and moved.t_min == base.t_min
    torch.testing.assert_close(make_schedule(name, shift=1).rates(FINE)[1], base.rates(FINE)[1], rtol=0, atol=0)


def test_the_shifted_cosine_is_simple_diffusions_closed_form():
    # Hoogeboom et al. 2023, eq. 4 with their base 64 and resolution 128: lambda(t) = -2 log tan(pi t / 2) + 2 log(64 / 128).
    moved = make_schedule("continuous-cosine", min_signal_rate=0.0, max_signal_rate=1.0, shift=2)
    t = FINE[1:-1]
    torch.testing.assert_close(log_snr(moved, t), -2 * torch.log(torch.tan(math.pi * t / 2)) + 2 * math.log(64 / 128),
                               rtol=0, atol=1e-8)


def test_a_shift_is_sd3s_time_shift_of_rectified_flow_and_keeps_it_straight():
    # SD3 (Esser et al. 2024, eq. 23) samples x_t = (1 - t') x_0 + t' eps at t' = s t / (1 + (s - 1) t);
    # the variance-preserving twin of that path, shifted as `Shifted` moves a schedule, agrees in log-SNR.
    s, t = 3.0, FINE[1:-1]
    moved = make_schedule("rectified-flow", shift=s)
    alpha, sigma = moved.rates(t)
    torch.testing.assert_close(sigma, s * t / (1 + (s - 1) * t), rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha + sigma, torch.ones_like(t), rtol=0, atol=1e-12)

    class VarianceRectifiedFlow:
        num_steps, t_min, noise, variance_preserving = None, 0.0, "gaussian", True

        def rates(self, t):
            t = torch.as_tensor(t, dtype=torch.float64)
            norm = torch.sqrt((1 - t) ** 2 + t**2)
            return (1 - t) / norm, t / norm

    twin = schedules.shifted(VarianceRectifiedFlow(), s)
    torch.testing.assert_close(log_snr(twin, t), log_snr(moved, t), rtol=0, atol=1e-8)
    assert make_schedule("rectified-flow", shift=2.0, t_min=0.01).t_min == 0.01
    assert schedules.shifted(make_schedule("rectified-flow", shift=2.0), 1.5).shift == 3.0


def test_a_shift_that_cannot_be_made_says_why():
    with pytest.raises(ValueError, match="shift must be a positive number"):
        make_schedule("cosine", shift=0)
    with pytest.raises(ValueError, match="uniform-mixing has none"):
        make_schedule("uniform-mixing", shift=2)
