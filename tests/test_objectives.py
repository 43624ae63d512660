"""The training objectives (objectives.py): each one's loss of the exact denoiser is the posterior
variance of its target, its times follow their distribution, and a model it cannot train is refused."""


import pytest
import torch
from torch import nn

from pixel_diffusion import schedules
from pixel_diffusion.config import TrainConfig, apply_overrides
from pixel_diffusion.diffusion import Denoiser
from pixel_diffusion.exact import GaussianDenoiser
from pixel_diffusion.objectives import OBJECTIVES, Diffusion, FlowMatching, objective_from_dict

MU, STD = 0.3, 0.5



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
    loss = Diffusion(target=target)(exact, _images(), generator=torch.Generator().manual_seed(1))
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
        Diffusion(target=target, weighting=weighting)(exact, images, generator=torch.Generator().manual_seed(2))
        for target in ("noise", "image", "velocity")
    ]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(losses[0], losses[2], rtol=1e-3, atol=1e-7)


def test_min_snr_and_p2_weights_follow_their_papers():
    schedule = schedules.linear()
    recorder = Recorder(GaussianDenoiser.iid(schedule, MU, STD * 1.3))
    images = _images(256)

    def run(**options):
        value = Diffusion(**options)(recorder, images, generator=torch.Generator().manual_seed(3))
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
    run = lambda **o: Diffusion(**o)(exact, images, generator=torch.Generator().manual_seed(4))
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
        Diffusion()(recorder, images, generator=generator)
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
        loss = Diffusion(time_sampling="log-normal", log_normal_mean=mean, log_normal_std=std)
        loss(recorder, images, generator=torch.Generator().manual_seed(6))
        alpha, sigma = schedule.rates(recorder.t)
        log_sigma = (sigma / alpha).log()
        assert abs(float(log_sigma.mean()) - mean) < 0.02 and abs(float(log_sigma.std()) - std) < 0.02
        # Quartiles too, not just the first two moments.
        quartiles = torch.quantile(log_sigma.float(), torch.tensor([0.25, 0.5, 0.75]))
        torch.testing.assert_close(quartiles, mean + std * torch.tensor([-0.6745, 0.0, 0.6745]), atol=0.03, rtol=0)
    # A schedule narrower than the distribution holds every draw inside [t_min, 1].
    recorder = Recorder(GaussianDenoiser.iid(schedules.linear(100), 0.0, 1.0))
    Diffusion(time_sampling="log-normal", log_normal_std=5.0)(recorder, images[:5000], generator=torch.Generator().manual_seed(7))
    assert float(recorder.t.min()) >= 0.01 and float(recorder.t.max()) <= 1 and float(recorder.t.min()) < 0.0101
    with pytest.raises(ValueError, match="log_normal_std must be positive"):
        Diffusion(time_sampling="log-normal", log_normal_std=0.0)
    with pytest.raises(ValueError, match="log_normal_mean must be a finite number"):
        Diffusion(time_sampling="log-normal", log_normal_mean=float("nan"))


def test_loss_trains_a_network():
    torch.manual_seed(0)
    schedule = schedules.linear(100)
    conv = nn.Sequential(nn.Conv2d(2, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 1, 3, padding=1))

    def net(x, level, labels=None):  # the noise level enters as a constant channel
        return conv(torch.cat([x, (level / 100).view(-1, 1, 1, 1).expand_as(x)], 1))

    denoiser = Denoiser(net, schedule, "noise", "timestep")
    loss_fn = Diffusion()
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
        Diffusion(target="score")
    with pytest.raises(ValueError, match="expected one of mse, mae, huber"):
        Diffusion(distance="l3")
    with pytest.raises(ValueError, match="expected one of none, min-snr, p2"):
        Diffusion(weighting="snr")
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        Diffusion(weighting="min-snr", min_snr_gamma=0)




# ---- flow matching ----------------------------------------------------------------------------


def test_flow_matching_loss_of_the_exact_denoiser_is_the_posterior_variance_of_the_velocity():
    # x_t = (1 - t) x_0 + t eps fixes eps - x_0 = x_t / t - x_0 / t given x_t, so its posterior
    # variance is Var(x_0 | x_t) / t^2 = s^2 / ((1 - t)^2 s^2 + t^2) for pixels N(mu, s^2).
    for shift in (1.0, 3.0):
        schedule = schedules.make_schedule("rectified-flow", shift=shift)
        recorder = Recorder(GaussianDenoiser.iid(schedule, MU, STD))
        loss = FlowMatching()(recorder, _images(), generator=torch.Generator().manual_seed(8))
        alpha, sigma = schedule.rates(recorder.t)
        expected = STD**2 / (alpha**2 * STD**2 + sigma**2)
        assert loss.shape == (20000,)
        assert loss.mean().item() == pytest.approx(expected.mean().item(), rel=0.03)
        # and a wrong denoiser does worse
        wrong = FlowMatching()(GaussianDenoiser.iid(schedule, MU, STD * 1.3), _images(),
                               generator=torch.Generator().manual_seed(8))
        assert wrong.mean().item() > 1.02 * loss.mean().item()


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (-0.5, 0.6)])
def test_flow_matching_draws_logit_normal_times(mean, std):
    # Esser et al. 2024, eq. 19: logit(t) ~ N(m, s^2) on the unshifted path.
    recorder = Recorder(GaussianDenoiser.iid(schedules.make_schedule("rectified-flow"), 0.0, 1.0))
    FlowMatching(logit_normal_mean=mean, logit_normal_std=std)(recorder, torch.zeros(50000, 1, 1, 1),
                                                                generator=torch.Generator().manual_seed(9))
    logit = torch.logit(recorder.t).float()
    quartiles = torch.quantile(logit, torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(quartiles, mean + std * torch.tensor([-0.6745, 0.0, 0.6745]), atol=0.03, rtol=0)
    recorder = Recorder(GaussianDenoiser.iid(schedules.make_schedule("rectified-flow"), 0.0, 1.0))
    FlowMatching(time_sampling="uniform")(recorder, torch.zeros(50000, 1, 1, 1), generator=torch.Generator().manual_seed(9))
    counts = torch.histc(recorder.t.float(), bins=10, min=0, max=1)
    assert counts.min() > 0.95 * 5000 and counts.max() < 1.05 * 5000


def test_flow_matching_trains_a_network_that_predicts_the_velocity():
    torch.manual_seed(0)
    schedule = schedules.make_schedule("rectified-flow")
    conv = nn.Sequential(nn.Conv2d(2, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 1, 3, padding=1))

    def net(x, level, labels=None):  # the time (0..1000) enters as a constant channel
        return conv(torch.cat([x, (level / 1000).view(-1, 1, 1, 1).expand_as(x)], 1))

    denoiser = Denoiser(net, schedule, "flow", "time")
    objective = FlowMatching()
    images = torch.linspace(-1, 1, 8).view(1, 1, 1, 8).expand(64, 1, 8, 8)
    generator = torch.Generator().manual_seed(0)
    optimiser = torch.optim.Adam(conv.parameters(), lr=3e-3)
    first = objective(denoiser, images, generator=torch.Generator().manual_seed(1)).mean().item()
    for _ in range(150):
        loss = objective(denoiser, images, generator=generator).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert objective(denoiser, images, generator=torch.Generator().manual_seed(1)).mean().item() < 0.5 * first


def test_what_needs_a_variance_preserving_schedule_refuses_a_straight_one_in_one_line():
    flow = schedules.make_schedule("rectified-flow")
    with pytest.raises(ValueError, match=r"^prediction 'velocity' needs a variance-preserving schedule .* use 'flow'"):
        Denoiser(nn.Identity(), flow, "velocity", "time")
    with pytest.raises(ValueError, match=r"^loss target 'velocity' needs a variance-preserving schedule"):
        Diffusion(target="velocity").check(flow, "noise")
    with pytest.raises(ValueError, match="use schedule rectified-flow"):
        FlowMatching().check(schedules.cosine(), "flow")
    with pytest.raises(ValueError, match="use schedule rectified-flow"):
        FlowMatching().check(schedules.uniform_mixing(), "flow")  # straight, but not Gaussian
    Diffusion(target="noise").check(flow, "flow")
    FlowMatching().check(schedules.make_schedule("rectified-flow", shift=2), "noise")


def test_objectives_are_read_by_kind_and_switched_by_loss_kind():
    assert list(OBJECTIVES) == ["diffusion", "flow-matching", "consistency"]
    assert objective_from_dict({"target": "image"}) == Diffusion(target="image")  # saved before kinds
    assert objective_from_dict({"kind": "flow-matching", "logit_normal_std": 0.8}) == FlowMatching(logit_normal_std=0.8)
    with pytest.raises(ValueError, match="unknown field loss.target; expected one of distance, huber_delta"):
        objective_from_dict({"kind": "flow-matching", "target": "noise"})
    with pytest.raises(ValueError, match="loss.kind: unknown objective 'score'; expected one of diffusion, flow-matching, consistency"):
        objective_from_dict({"kind": "score"})
    config = TrainConfig(schedule="rectified-flow", prediction="flow", noise_input="time",
                         loss=Diffusion(target="noise", weighting="min-snr"))
    switched = apply_overrides(config, ["loss.logit_normal_std=0.8", "loss.kind=flow-matching"])
    assert switched.loss == FlowMatching(logit_normal_std=0.8)  # the kind first, whatever the order
    assert TrainConfig.from_dict(switched.to_dict()).loss == switched.loss
    assert apply_overrides(switched, {"loss": {"kind": "diffusion", "weighting": "p2"}}).loss == Diffusion(weighting="p2")
    with pytest.raises(ValueError, match="unknown config field 'loss.target'"):
        apply_overrides(config, ["loss.kind=flow-matching", "loss.target=noise"])
    with pytest.raises(ValueError, match="loss.kind: unknown objective 'score'"):
        apply_overrides(config, ["loss.kind=score"])
    with pytest.raises(ValueError, match="loss.logit_normal_std: expected a number"):
        apply_overrides(switched, ["loss.logit_normal_std=wide"])


def test_train_refuses_an_objective_its_model_cannot_take_in_one_line_before_reading_data(tmp_path, capsys):
    from pixel_diffusion.cli import main

    base = ["train", "--preset", "mnist", "--steps", "1", "--no-progress", "--out", str(tmp_path / "run"),
            "data.source=/nowhere/to/be/read"]
    for overrides, says in (
        (["loss.kind=flow-matching"], "flow matching trains on the straight path"),
        (["schedule=rectified-flow", "noise_input=time"], "prediction 'velocity' needs a variance-preserving schedule"),
        (["schedule=rectified-flow", "noise_input=time", "prediction=flow"], "loss target 'velocity' needs a variance"),
        (["loss.kind=consistency"], "consistency distillation needs loss.teacher"),
    ):
        assert main([*base, *overrides]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "/nowhere" not in err, err
