"""Samplers driven by exact denoisers of Gaussian and Gaussian-mixture data.

For i.i.d. N(mu, s^2) pixels every sampler step is affine in x (plus independent noise), so the
moments of what a discretised walk produces have a closed form. It is computed here from the
papers' formulas in alpha-bar notation (Ho et al. eq. 7, Song et al. eq. 12 and 16), independently
of the sampler code; a wrong coefficient moves the result far outside the tolerances.
"""

import math

import pytest
import torch

from pixel_diffusion import schedules
from pixel_diffusion.exact import GaussianDenoiser, MixtureDenoiser
from pixel_diffusion.samplers import SAMPLERS, ImageNoise, Walk, check_times, ddim, ddpm, get_sampler, sample
from pixel_diffusion.schedules import sampling_times

MU, STD = 0.3, 0.5
SHAPE = (4096, 1, 4, 4)  # 65,536 independent pixels


def _x_T(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def _ddim_step(x, z, ab_t, ab_s, x0, eta):
    eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
    std = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
    return math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s - std**2) * eps + std * z


def _ddpm_step(x, z, ab_t, ab_s, x0, variance, last):
    beta = 1 - ab_t / ab_s
    mean = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * x
    var = beta * (1 - ab_s) / (1 - ab_t) if variance == "posterior" else beta
    return mean + (0 if last else math.sqrt(var)) * z


def walk_moments(schedule, times, step, mean, var, mu=MU, s2=STD**2):
    """Mean and variance after the walk, for pixels i.i.d. N(mu, s2) and x_T with (mean, var)."""
    alpha, _ = schedule.rates(times)
    ab = (alpha**2).tolist()
    clean = float(times[-1]) == 0  # a walk to 0 ends at clean data; one that stops earlier, at its last time
    if clean:
        ab[-1] = 1.0
    for i in range(len(ab) - 1):
        ab_t, ab_s, last = ab[i], ab[i + 1], clean and i == len(ab) - 2

        def f(x, z):  # one step for scalar x and noise z, with the exact x_0 estimate
            x0 = mu + math.sqrt(ab_t) * s2 / (ab_t * s2 + 1 - ab_t) * (x - math.sqrt(ab_t) * mu)
            return step(x, z, ab_t, ab_s, x0, last)

        q = f(0.0, 0.0)
        p, c = f(1.0, 0.0) - q, f(0.0, 1.0) - q
        mean, var = p * mean + q, p * p * var + c * c
    return mean, var


CASES = {
    # name: (sampler, options, reference step)
    "ddim-eta0": (ddim, {}, lambda x, z, a, b, x0, last: _ddim_step(x, z, a, b, x0, 0.0)),
    "ddim-eta0.5": (ddim, {"eta": 0.5}, lambda x, z, a, b, x0, last: _ddim_step(x, z, a, b, x0, 0.5)),
    "ddim-eta1": (ddim, {"eta": 1.0}, lambda x, z, a, b, x0, last: _ddim_step(x, z, a, b, x0, 1.0)),
    "ddpm-posterior": (ddpm, {}, lambda x, z, a, b, x0, last: _ddpm_step(x, z, a, b, x0, "posterior", last)),
    "ddpm-beta": (ddpm, {"variance": "beta"}, lambda x, z, a, b, x0, last: _ddpm_step(x, z, a, b, x0, "beta", last)),
}


def _check_moments(out, mean, var):
    n = out.numel()
    assert abs(out.mean().item() - mean) < 5 * math.sqrt(var / n), (out.mean().item(), mean)
    assert abs(out.var().item() / var - 1) < 5 * math.sqrt(2 / n), (out.var().item(), var)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("steps", [10, 50, 1000])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_gaussian_walk_matches_closed_form(case, steps, schedule_name):
    schedule = schedules.make_schedule(schedule_name)
    sampler, options, step = CASES[case]
    times = sampling_times(schedule, steps)
    x = _x_T()
    out = sampler(GaussianDenoiser.iid(schedule, MU, STD), x, times, noise=torch.Generator().manual_seed(1), **options)
    mean, var = walk_moments(schedule, times, step, x.mean().item(), x.var().item())
    _check_moments(out.double(), mean, var)
    if case == "ddim-eta0":  # deterministic: the walk is one affine map per pixel
        p = walk_moments(schedule, times, step, 1.0, 0.0)[0] - walk_moments(schedule, times, step, 0.0, 0.0)[0]
        q = walk_moments(schedule, times, step, 0.0, 0.0)[0]
        torch.testing.assert_close(out.double(), p * x.double() + q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("start, stop, spacing", [(0.7, 0.3, "uniform"), (1.0, 0.4, "karras"), (0.5, 0.0, "karras"),
                                                  (0.6, 0.05, "log-snr")])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_a_walk_over_part_of_the_times_matches_closed_form(case, start, stop, spacing, schedule_name):
    """A walk that starts late (SDEdit) or stops early (x at its last time, noise and all) takes
    the same exact steps: its moments are the closed form's over its own times."""
    schedule = schedules.make_schedule(schedule_name)
    sampler, options, step = CASES[case]
    times = sampling_times(schedule, 12, spacing, start=start, stop=stop)
    assert len(times) == 13 and float(times[-1]) == stop
    x = _x_T()
    out = sampler(GaussianDenoiser.iid(schedule, MU, STD), x, times, noise=torch.Generator().manual_seed(1), **options)
    mean, var = walk_moments(schedule, times, step, x.mean().item(), x.var().item())
    _check_moments(out.double(), mean, var)


@pytest.mark.parametrize(
    "case, tolerance",
    # At 1000 steps the walks reach the data; DDPM with the posterior variance stays about 2%
    # short in variance (it ignores the uncertainty of x_0 at each step; Ho et al. sec. 3.2).
    [("ddim-eta0", 0.01), ("ddim-eta1", 0.03), ("ddpm-posterior", 0.03), ("ddpm-beta", 0.015)],
)
def test_thousand_steps_reach_the_data_distribution(case, tolerance):
    schedule = schedules.linear()
    sampler, options, _ = CASES[case]
    out = sampler(
        GaussianDenoiser.iid(schedule, MU, STD),
        _x_T(),
        sampling_times(schedule, 1000),
        noise=torch.Generator().manual_seed(2),
        **options,
    )
    assert out.mean().item() == pytest.approx(MU, abs=0.006)
    assert out.var().item() == pytest.approx(STD**2, rel=tolerance)


def test_ddim_error_shrinks_with_steps():
    schedule = schedules.linear()
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    errors = [abs(ddim(denoiser, _x_T(), sampling_times(schedule, n)).var().item() - STD**2) for n in (5, 20, 100, 1000)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.01 * STD**2


def test_keras_schedule_ends_on_the_image_estimate():
    # Its walk stops at signal rate 0.95: the output is E[x_0 | x_0.95], whose variance is
    # s^2 * a^2 s^2 / (a^2 s^2 + 1 - a^2) for a = 0.95.
    schedule = schedules.continuous_cosine()
    out = ddim(GaussianDenoiser.iid(schedule, MU, STD), _x_T(), sampling_times(schedule, 500))
    a2 = 0.95**2
    assert out.var().item() == pytest.approx(STD**2 * a2 * STD**2 / (a2 * STD**2 + 1 - a2), rel=0.01)


def test_wrong_variance_is_detected():
    # The check above is sharp: a denoiser for data 5% wider in std fails it.
    schedule = schedules.linear()
    times = sampling_times(schedule, 50)
    x = _x_T()
    out = ddim(GaussianDenoiser.iid(schedule, MU, STD * 1.05), x, times)
    mean, var = walk_moments(schedule, times, CASES["ddim-eta0"][2], x.mean().item(), x.var().item())
    with pytest.raises(AssertionError):
        _check_moments(out.double(), mean, var)


@pytest.mark.parametrize("case, steps", [("ddpm-posterior", 1000), ("ddpm-beta", 1000), ("ddim-eta0", 100), ("ddim-eta1", 250)])
def test_mixture_modes_have_the_right_weights(case, steps):
    schedule = schedules.linear()
    weights, means, stds = [0.3, 0.7], [-1.0, 1.0], [0.15, 0.15]
    denoiser = MixtureDenoiser(schedule, weights, means, stds)
    sampler, options, _ = CASES[case]
    out = sampler(denoiser, _x_T(), sampling_times(schedule, steps), noise=torch.Generator().manual_seed(3), **options)
    upper = out > 0
    assert upper.float().mean().item() == pytest.approx(0.7, abs=0.01)
    for mask, mu in ((upper, 1.0), (~upper, -1.0)):
        assert out[mask].mean().item() == pytest.approx(mu, abs=0.02)
        assert out[mask].std().item() == pytest.approx(0.15, rel=0.1)


def test_ddim_eta1_equals_ddpm_with_posterior_variance():
    schedule = schedules.cosine()
    denoiser = MixtureDenoiser(schedule, [0.5, 0.5], [-0.5, 0.5], [0.2, 0.2])
    times = sampling_times(schedule, 20, "trailing")
    x = _x_T()[:64]
    a = ddim(denoiser, x, times, eta=1.0, noise=torch.Generator().manual_seed(4))
    b = ddpm(denoiser, x, times, noise=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_seed_gives_one_image_whatever_the_batch():
    schedule = schedules.linear()
    denoiser = MixtureDenoiser(schedule, [0.5, 0.5], [-0.5, 0.5], [0.2, 0.2])
    for name in SAMPLERS:
        a = sample(denoiser, (1, 6, 6), 7, Walk(name, 20), seed=11, batch_size=7, progress=False)
        b = sample(denoiser, (1, 6, 6), 7, Walk(name, 20), seed=11, batch_size=3, progress=False)
        c = sample(denoiser, (1, 6, 6), 3, Walk(name, 20), seed=11, batch_size=2, progress=False)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        torch.testing.assert_close(a[:3], c, rtol=0, atol=1e-6)
        d = sample(denoiser, (1, 6, 6), 3, Walk(name, 20), seed=12, batch_size=3, progress=False)
        assert (a[:3] - d).abs().max() > 0.1


def test_stochastic_samplers_use_the_noise_they_are_given():
    schedule = schedules.linear()
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    times = sampling_times(schedule, 10)
    x = _x_T()[:4]
    same = [ddpm(denoiser, x, times, noise=ImageNoise([1, 2, 3, 4])) for _ in range(2)]
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=0)
    other = ddpm(denoiser, x, times, noise=ImageNoise([1, 2, 3, 5]))
    torch.testing.assert_close(other[:3], same[0][:3], rtol=0, atol=0)
    assert (other[3] - same[0][3]).abs().max() > 0.01


def test_callback_sees_every_step_with_the_predicted_image():
    schedule = schedules.linear()
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    seen = []
    out = ddim(denoiser, _x_T()[:2], sampling_times(schedule, 5), callback=lambda i, x, image: seen.append((i, x, image)))
    assert [i for i, _, _ in seen] == list(range(5))
    assert all(x.shape == image.shape == (2, 1, 4, 4) for _, x, image in seen)
    torch.testing.assert_close(seen[-1][2], out)  # the last step lands on the last image estimate


def test_clipping_keeps_the_image_estimate_in_range():
    schedule = schedules.linear()
    denoiser = GaussianDenoiser.iid(schedule, 0.0, 3.0)  # data far outside [-1, 1]
    images = []
    out = ddim(denoiser, _x_T()[:64], sampling_times(schedule, 20), clip=(-1, 1), callback=lambda i, x, image: images.append(image))
    assert out.abs().max() <= 1 and all(image.abs().max() <= 1 for image in images)
    assert ddim(denoiser, _x_T()[:64], sampling_times(schedule, 20)).abs().max() > 1


def test_bad_arguments_say_what_is_allowed():
    schedule = schedules.linear()
    denoiser = GaussianDenoiser.iid(schedule, MU, STD)
    x, times = _x_T()[:2], sampling_times(schedule, 10)
    for walk in (ddim, SAMPLERS["euler-ancestral"], SAMPLERS["dpmpp-2m"], SAMPLERS["dpmpp-2m-sde"]):
        for eta in (-0.1, 1.5):
            with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
                walk(denoiser, x, times, eta=eta)
    with pytest.raises(ValueError, match="expected one of posterior, beta"):
        ddpm(denoiser, x, times, variance="learned")
    with pytest.raises(ValueError, match="expected one of ddpm, ddim"):
        get_sampler("plms")
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        check_times(torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        check_times(torch.tensor([0.5, 0.7, 0.0]))
    with pytest.raises(ValueError, match="expected 1 to 1000"):
        sample(denoiser, (1, 4, 4), 2, Walk(steps=2000), progress=False)
    with pytest.raises(ValueError, match="positive integer"):
        Walk(steps=0)
    with pytest.raises(ValueError, match="non-negative integers"):
        ImageNoise([-1])
