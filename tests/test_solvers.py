"""The ODE/SDE samplers against the closed-form probability-flow map of Gaussian data.

For pixels i.i.d. N(mu, s^2) the probability-flow ODE keeps each point's standardised position
in the marginal N(alpha mu, alpha^2 s^2 + sigma^2), so from x at the walk's first time T it ends at
x_0 = mu + s (x - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2). Deterministic samplers must
converge to it at their order."""


import math

import numpy as np
import pytest
import torch

from pixel_diffusion import schedules
from pixel_diffusion.exact import GaussianDenoiser
from pixel_diffusion.samplers import SAMPLERS, Walk, ddim, euler, evaluations, sample
from pixel_diffusion.schedules import sampling_times

MU, STD = 0.3, 0.5


def _setup(name="linear"):
    schedule = schedules.make_schedule(name)
    x = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    return denoiser, x, denoiser.flow(x, 1.0)


# Against the flow to the walk's last time before 0: the final step's own floor (the image
# estimate returned at sigma_min) is tested below. DPM-Solver++(3M) and iPNDM start at first order,
# whose local error O(h^2) on the first step bounds their global order at 2 (their higher-order
# coefficients are checked against diffusers in tests/test_parity_diffusers.py); UniPC's corrector
# lifts its first steps, and it shows its third order.
CONVERGENCE = [(name, order, spacing) for name, order in [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp-2m", 2),
                                                           ("ipndm", 2), ("unipc", 3)]
               for spacing in ("log-snr", "karras")] + [("dpmpp-3m", 2, "log-snr")]


def _before_last_step(sampler, denoiser, x, times, **options):
    states = []
    SAMPLERS[sampler](denoiser, x, times, callback=lambda i, x_t, image: states.append(x_t), **options)
    exact = denoiser.flow(x, float(times[0]), float(times[-2]))
    return (states[-1].double() - exact).abs().mean().item()


@pytest.mark.parametrize("sampler, order, spacing", CONVERGENCE)
def test_deterministic_samplers_converge_at_their_order(sampler, order, spacing):
    denoiser, x, _ = _setup()
    counts = [16, 32, 64, 128]  # these spacings start below t = 1, at EDM sigma 80
    errors = [_before_last_step(sampler, denoiser, x, sampling_times(denoiser.schedule, n, spacing)) for n in counts]
    slope = np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert {1: -1.25 < slope < -0.8, 2: slope < -1.8, 3: slope < -2.7}[order], (errors, slope)
    assert errors[-1] < (1e-2 if order == 1 else 1e-3)


@pytest.mark.parametrize("spacing", ["log-snr", "karras"])
def test_dpm_solver_2s_without_noise_converges_at_second_order(spacing):
    denoiser, x, _ = _setup("cosine")
    counts = [8, 16, 32, 64]
    errors = [_before_last_step("dpmpp-2s-ancestral", denoiser, x, sampling_times(denoiser.schedule, n, spacing),
                                eta=0.0) for n in counts]
    assert np.polyfit(np.log(counts), np.log(errors), 1)[0] < -1.8, errors


@pytest.mark.parametrize("spacing", ["log-snr", "karras"])
def test_dpm_solver_error_floor_is_the_final_denoising_step(spacing):
    # The walk's last step returns D at the last grid time (sigma 0.01) instead of following the
    # flow to sigma = 0: an error of about sigma^2 / (2 s^2) |x_0 - mu| that more steps cannot
    # remove. Against D applied to the exact flow at that time, the error keeps falling at order 2.
    denoiser, x, _ = _setup()
    counts, to_data, to_last = [128, 256, 512], [], []
    for n in counts:
        times = sampling_times(denoiser.schedule, n, spacing)
        out = SAMPLERS["dpmpp-2m"](denoiser, x, times).double()
        last = float(times[-2])
        denoised = denoiser.denoise(denoiser.flow(x, float(times[0]), last), last)
        end = denoiser.flow(x, float(times[0]))  # the flow's own end point
        floor = (denoised - end).abs().mean().item()
        to_data.append((out - end).abs().mean().item())
        to_last.append((out - denoised).abs().mean().item())
    sigma = denoiser.schedule.rates(torch.tensor(last, dtype=torch.float64))[1]
    assert floor == pytest.approx(float(sigma) ** 2 / (2 * STD**2) * (end - MU).abs().mean().item(), rel=0.01)
    assert np.polyfit(np.log(counts), np.log(to_last), 1)[0] < -1.8, to_last
    assert to_data[-1] > 0.5 * floor  # against the flow to sigma = 0 it stays near the floor


def test_euler_is_ddim():
    denoiser, x, _ = _setup("cosine")
    times = sampling_times(denoiser.schedule, 25, "karras")
    torch.testing.assert_close(euler(denoiser, x, times), ddim(denoiser, x, times), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spacing", ["uniform", "karras"])
def test_euler_ancestral_is_ddpm(spacing):
    # With eta = 1, s_down = s_next^2 / s and s_up = s_next sqrt(1 - s_next^2 / s^2): the step is
    # DDPM's posterior draw (and first-order SDE-DPM-Solver++), written in the EDM variables.
    denoiser, x, _ = _setup("cosine")
    times = sampling_times(denoiser.schedule, 12, spacing)
    run = lambda name: SAMPLERS[name](denoiser, x, times, noise=torch.Generator().manual_seed(4))  # noqa: E731
    # x / alpha at the cosine schedule's t = 1 (alpha about 5e-5) costs float32 digits: 1e-4.
    torch.testing.assert_close(run("euler-ancestral"), run("ddpm"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler, options, steps",
                         [("euler-ancestral", {}, 1000), ("heun", {"churn": 40.0}, 200), ("dpmpp-2m-sde", {}, 200),
                          ("dpmpp-2m", {"eta": 0.5}, 200), ("dpmpp-3m-sde", {}, 200), ("dpmpp-2s-ancestral", {}, 200)])
def test_stochastic_samplers_reach_the_data_moments(sampler, options, steps):
    # All are first order in their noise: the variance error shrinks with the step count.
    denoiser, _, _ = _setup()
    x = torch.randn(4096, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    run = lambda n, seed: SAMPLERS[sampler](denoiser, x, sampling_times(denoiser.schedule, n, "log-snr"),  # noqa: E731
                                            noise=torch.Generator().manual_seed(seed), **options)
    out = run(steps, 2)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.var().item() == pytest.approx(STD**2, rel=0.025)
    assert abs(run(steps // 10, 2).var().item() - STD**2) > abs(out.var().item() - STD**2)
    assert (out - run(steps, 3)).abs().max() > 1e-3  # the noise is really used


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_first_order_sde_dpm_solver_step_is_the_ddpm_posterior_step(schedule):
    # Before it has a previous estimate, SDE-DPM-Solver++ steps x_t -> x_s exactly as DDPM with
    # the posterior variance does (both sample q(x_s | x_t, x_0 = D) of a variance-preserving
    # schedule), so a two-step walk (one step, then the final one to D) is the same walk.
    denoiser, x, _ = _setup(schedule)
    times = torch.tensor([0.8, 0.3, 0.0], dtype=torch.float64)
    ours = SAMPLERS["dpmpp-2m-sde"](denoiser, x, times, noise=torch.Generator().manual_seed(5))
    theirs = SAMPLERS["ddpm"](denoiser, x, times, noise=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    other = SAMPLERS["dpmpp-2m-sde"](denoiser, x, times, noise=torch.Generator().manual_seed(6))
    assert (ours - other).abs().max() > 1e-3


class Counting:
    def __init__(self, denoiser):
        self.denoiser, self.schedule, self.calls = denoiser, denoiser.schedule, 0

    def __call__(self, x, t, labels=None):
        self.calls += 1
        return self.denoiser(x, t, labels)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_network_evaluations_are_as_reported(sampler):
    denoiser, x, _ = _setup()
    counting, report = Counting(denoiser), {}
    options = {"report": report} if SAMPLERS[sampler].adaptive else {}  # one image: its evaluations are the calls
    SAMPLERS[sampler](counting, x[:1], sampling_times(denoiser.schedule, 7), noise=torch.Generator().manual_seed(0),
                      **options)
    assert counting.calls == (report["evaluations"][0] if options else evaluations(sampler, 7)) > 1


def test_every_sampler_gives_one_image_per_seed_whatever_the_batch():
    denoiser, _, _ = _setup()
    for name in SAMPLERS:
        a = sample(denoiser, (1, 4, 4), 5, Walk(name, 6), seed=3, batch_size=5, progress=False)
        b = sample(denoiser, (1, 4, 4), 5, Walk(name, 6), seed=3, batch_size=2, progress=False)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_clips_to_per_channel_bounds(sampler):
    # Standardised colour data has a data range per channel, (C, 1, 1) tensors: every walk takes
    # them, and one that ends on the clipped image estimate ends inside them.
    denoiser, _, _ = _setup()
    low, high = torch.tensor([-0.2, 0.0, 0.1]).view(3, 1, 1), torch.tensor([0.5, 0.6, 0.9]).view(3, 1, 1)
    out = sample(denoiser, (3, 4, 4), 8, Walk(sampler, 6), data_range=(low, high), progress=False)
    if sampler == "ipndm":  # its last step integrates to sigma = 0 rather than returning the estimate
        return
    assert bool(((out >= low - 1e-6) & (out <= high + 1e-6)).all())
    if sampler == "consistency":  # on a posterior-mean denoiser its draws shrink toward the mean, inside the bounds
        return
    assert bool((out.amin(dim=(0, 2, 3)).view(3, 1, 1) < low + 0.05).all())  # the bounds bind, channel by channel


# ---- adaptive DPM-Solver ------------------------------------------------------------------------


def _adaptive_error(denoiser, x, times, **options):
    report = {}
    out = SAMPLERS["dpm-adaptive"](denoiser, x, times, report=report, **options).double()
    last = float(times[-2])
    exact = denoiser.denoise(denoiser.flow(x, float(times[0]), last), last)  # D at the walk's last noise level
    return (out - exact).abs().mean().item(), report


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_adaptive_dpm_solver_error_follows_its_tolerance(order, schedule):
    denoiser, x, _ = _setup(schedule)
    times = sampling_times(denoiser.schedule, 10, "karras")
    results = [_adaptive_error(denoiser, x[:64], times, order=order, rtol=rtol, atol=1e-4) for rtol in (0.05, 0.01, 0.002)]
    errors = [error for error, _ in results]
    spent = [np.mean(report["evaluations"]) for _, report in results]
    assert errors[0] < 0.05 and errors[1] < errors[0] / 2 and errors[2] < errors[1] / 2, errors
    assert spent[0] < spent[1] < spent[2] < 100, spent
    assert all(report["capped"] == 0 and len(report["accepted"]) == 64 for _, report in results)


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_dpm_solver_embedded_pair_has_its_orders(order):
    # The step pair on equal lambda steps, against the exact flow: the higher answer of the given
    # order, the lower one an order less (a wrong coefficient in either drops its slope).
    from pixel_diffusion.samplers.adaptive import solver_step

    denoiser, x, _ = _setup("cosine")
    schedule, x = denoiser.schedule, x[:32]
    times = sampling_times(schedule, 10, "karras")
    alpha_start = float(schedule.rates(times[0])[0])
    start, end = (0.5 * float(schedules.log_snr(schedule, times[k])) for k in (0, -2))

    def eps_at(y, lam):
        t = schedules.time_at_log_snr(schedule, 2 * lam)
        alpha = schedule.rates(t)[0].view(-1, 1, 1, 1)
        return (y - denoiser(y * alpha, t).image) * torch.exp(lam).view(-1, 1, 1, 1)

    exact = denoiser.flow(x, float(times[0]), float(times[-2])) / float(schedule.rates(times[-2])[0])
    counts, errors = [8, 16, 32], {"low": [], "high": []}
    for n in counts:
        low = high = x.double() / alpha_start
        h = torch.full((32,), (end - start) / n, dtype=torch.float64)
        for k in range(n):
            lam = torch.full((32,), start + k * (end - start) / n, dtype=torch.float64)
            low = solver_step(eps_at, low, lam, h, order)[0]
            high = solver_step(eps_at, high, lam, h, order)[1]
        errors["low"].append((low - exact).abs().mean().item())
        errors["high"].append((high - exact).abs().mean().item())
    slopes = {k: np.polyfit(np.log(counts), np.log(v), 1)[0] for k, v in errors.items()}
    assert slopes["high"] < -(order - 0.2) and -(order - 1 + 0.2) < slopes["low"] < -(order - 1.2), (slopes, errors)


def test_adaptive_dpm_solver_keeps_to_its_evaluation_cap():
    denoiser, x, _ = _setup()
    times = sampling_times(denoiser.schedule, 10, "karras")
    free, free_report = _adaptive_error(denoiser, x[:16], times, rtol=1e-3, atol=1e-5)
    capped, report = _adaptive_error(denoiser, x[:16], times, rtol=1e-3, atol=1e-5, max_evaluations=12)
    assert max(report["evaluations"]) <= 12 < min(free_report["evaluations"]) and report["capped"] == 16
    assert free < capped < 0.5  # the forced steps still land near the flow's end
    with pytest.raises(ValueError, match="max_evaluations must be an integer of at least 4"):
        SAMPLERS["dpm-adaptive"](denoiser, x[:2], times, max_evaluations=3)
    with pytest.raises(ValueError, match="order of dpm-adaptive must be 2 or 3"):
        SAMPLERS["dpm-adaptive"](denoiser, x[:2], times, order=4)
    with pytest.raises(ValueError, match="give it at least 2 steps"):  # one step: nothing to solve down to
        SAMPLERS["dpm-adaptive"](denoiser, x[:2], sampling_times(denoiser.schedule, 1, "karras"))
    with pytest.raises(ValueError, match="spends the evaluations its tolerance needs"):
        evaluations("dpm-adaptive", 10)


def test_sample_reports_the_evaluations_each_image_took():
    denoiser, _, _ = _setup()
    fixed, adaptive = {}, {}
    sample(denoiser, (1, 4, 4), 5, Walk("heun", 6), batch_size=2, progress=False, report=fixed)
    sample(denoiser, (1, 4, 4), 5, Walk("dpm-adaptive", 6), batch_size=2, progress=False, report=adaptive)
    assert fixed["evaluations"] == [11] * 5
    assert len(adaptive["evaluations"]) == len(adaptive["accepted"]) == 5
    assert all(e == 3 * a + 2 * r + 1 for e, a, r in zip(adaptive["evaluations"], adaptive["accepted"],
                                                         adaptive["rejected"]))  # a refused step keeps its start


# ---- on the straight path of rectified flow ----------------------------------------------------


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("euler", 1), ("heun", 2), ("dpmpp-2m", 2), ("unipc", 3)])
def test_deterministic_samplers_converge_at_their_order_on_rectified_flow(sampler, order):
    # The samplers see only the split and the rates, so a straight path (alpha + sigma = 1) is walked unchanged.
    denoiser, x, _ = _setup("rectified-flow")
    counts = [16, 32, 64, 128]
    errors = [_before_last_step(sampler, denoiser, x, sampling_times(denoiser.schedule, n, "karras")) for n in counts]
    slope = np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert {1: -1.25 < slope < -0.8, 2: slope < -1.8, 3: slope < -2.7}[order], (errors, slope)


@pytest.mark.parametrize("sampler, options, steps", [("ddpm", {}, 1000), ("ddim", {"eta": 1.0}, 1000), ("dpmpp-2m-sde", {}, 200)])
def test_stochastic_samplers_reach_the_data_moments_on_rectified_flow(sampler, options, steps):
    # DDPM's posterior on any schedule: beta_ts = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2.
    denoiser, _, _ = _setup("rectified-flow")
    run = lambda n: sample(denoiser, (1, 4, 4), 4096, Walk(sampler, n, "log-snr", options=options), seed=1,  # noqa: E731
                           batch_size=4096, progress=False)
    out = run(steps)
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.var().item() == pytest.approx(STD**2, rel=0.025)
    assert abs(run(steps // 10).var().item() - STD**2) > abs(out.var().item() - STD**2)


def test_a_walk_on_rectified_flow_starts_from_noise_of_the_marginal_size():
    # Karras's walk starts at EDM sigma 80, t = 80 / 81 on this path, where x_t has standard deviation
    # sqrt(alpha^2 s^2 + sigma^2), not 1: sample() scales its noise by sqrt(alpha^2 + sigma^2).
    denoiser, _, _ = _setup("rectified-flow")
    starts = []
    out = sample(denoiser, (1, 4, 4), 4096, Walk("dpmpp-2m", 100), seed=2, batch_size=4096, progress=False,
                 callback=lambda i, x_t, image: starts.append(x_t) if i == 0 else None)
    t0 = float(sampling_times(denoiser.schedule, 100, "karras")[0])
    assert t0 == pytest.approx(80 / 81)
    alpha, sigma = (float(r) for r in denoiser.schedule.rates(torch.tensor(t0, dtype=torch.float64)))
    assert starts[0].std().item() == pytest.approx(math.hypot(alpha, sigma), rel=0.02)
    assert abs(math.hypot(alpha, sigma) - 1) > 0.01  # the scale is really needed
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.var().item() == pytest.approx(STD**2, rel=0.03)
