"""Consistency models: the boundary, the multistep sampler against the closed form, distillation
of an exact teacher, and `pixel-diffusion distill` end to end."""

import json
import math

import pytest
import torch
from torch import nn

from pixel_diffusion.cli import main
from pixel_diffusion.diffusion import Denoiser
from pixel_diffusion.exact import GaussianConsistency, GaussianDenoiser, MixtureDenoiser
from pixel_diffusion.objectives import Consistency, consistency_levels
from pixel_diffusion.runs import load_run
from pixel_diffusion.samplers import SAMPLERS, Walk, sample, time_at_edm_sigma
from pixel_diffusion.schedules import make_schedule
from test_training import TINY, _weights


class PixelNet(nn.Module):
    """A per-pixel network of (x, log-SNR): enough for data whose pixels are independent."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 1), nn.SiLU(), nn.Conv2d(width, width, 1), nn.SiLU(),
                                  nn.Conv2d(width, 1, 1))

    def forward(self, x, level, labels=None):
        level = level.float().reshape(-1, 1, 1, 1).expand_as(x) / 10
        return self.body(torch.cat([x, level.sin(), level.cos()], 1))


def _edm_time(schedule, sigma: float) -> float:
    return float(time_at_edm_sigma(schedule, sigma))


@pytest.mark.parametrize("schedule_name", ["cosine", "rectified-flow"])
@pytest.mark.parametrize("prediction", ["noise", "flow"])
def test_the_student_is_the_identity_at_its_smallest_noise_level(schedule_name, prediction):
    schedule = make_schedule(schedule_name)
    if prediction == "flow" and schedule_name == "cosine":
        prediction = "velocity"
    torch.manual_seed(0)
    net = PixelNet()
    plain = Denoiser(net, schedule, prediction, "log-snr")
    student = Denoiser(net, schedule, prediction, "log-snr", boundary=0.002)
    x = torch.randn(4, 1, 4, 4) * 3
    t = _edm_time(schedule, 0.002)
    alpha = float(schedule.rates(torch.tensor(t, dtype=torch.float64))[0])
    assert (student(x, t).image - x / alpha).abs().max() < 2e-6  # whatever the (untrained) network says
    assert (plain(x, t).image - x / alpha).abs().max() > 2e-5
    far = _edm_time(schedule, 0.5)  # 250 sigma_min above: the network's own estimate (c = 1.6e-5)
    assert torch.allclose(student(x, far).image, plain(x, far).image, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("sigmas", [(80.0,), (80.0, 0.821), (80.0, 5.0, 1.0, 0.2)])
def test_the_consistency_sampler_draws_the_exact_distribution_at_any_steps(sigmas):
    # A perfect consistency function of N(0.3, 0.5^2) pixels: every walk lands on the data law.
    schedule = make_schedule("cosine")
    oracle = GaussianConsistency(GaussianDenoiser.iid(schedule, 0.3, 0.5))
    walk = Walk("consistency", len(sigmas), sigmas=sigmas)
    x = sample(oracle, (1, 20, 20), 50, walk, seed=1, batch_size=50, progress=False)  # 20,000 pixels
    assert abs(float(x.mean()) - 0.3) < 0.02 and abs(float(x.std()) - 0.5) < 0.02
    # The same walk on the posterior mean E[x_0 | x_t] (a diffusion model, not a consistency
    # model) collapses one-step draws toward the mean: the sampler needs what it is made for.
    blurred = sample(GaussianDenoiser.iid(schedule, 0.3, 0.5), (1, 20, 20), 50, Walk("consistency", 1, sigmas=(80.0,)),
                     seed=1, batch_size=50, progress=False)
    assert float(blurred.std()) < 0.05


def test_walk_sigmas_name_the_noise_levels():
    schedule = make_schedule("cosine")
    walk = Walk("consistency", 2, sigmas=(80, 0.821))
    times = walk.times(schedule)
    assert times.tolist() == pytest.approx([_edm_time(schedule, 80), _edm_time(schedule, 0.821), 0.0])
    assert Walk.from_dict(json.loads(json.dumps(walk.to_dict()))) == walk
    assert walk.replace(steps=4).sigmas is None and walk.replace(sampler="ddim").sigmas == (80.0, 0.821)
    assert "sigma 80, 0.821" in walk.describe()
    with pytest.raises(ValueError, match="2 steps take 2 of them"):
        Walk("consistency", 2, sigmas=(80,))
    with pytest.raises(ValueError, match="strictly decreasing"):
        Walk("consistency", 2, sigmas=(1, 5))
    with pytest.raises(ValueError, match="drop start, sigma_max and spacing"):
        Walk("consistency", 1, sigmas=(5,), spacing="karras")
    with pytest.raises(ValueError, match="repeat a time"):  # both above the discrete cosine's t = 1
        Walk("consistency", 2, sigmas=(1e6, 1e5)).times(schedule)
    assert SAMPLERS["consistency"].evaluations(2) == 2


def _one_step_distance(denoiser, truth: torch.Tensor, seed: int = 3) -> float:
    """Wasserstein-1 between one-step draws (every pixel) and exact draws of the data."""
    drawn = sample(denoiser, (1, 4, 4), 500, Walk("consistency", 1, sigmas=(80.0,), clip=False), seed=seed,
                   batch_size=500, progress=False).flatten()
    return float((drawn.sort().values - truth.flatten().float().sort().values).abs().mean())


def test_distillation_moves_one_step_draws_to_the_data():
    # Teacher: the exact denoiser of pixels drawn from 0.5 N(-1, 0.2^2) + 0.5 N(1, 0.2^2). Its own
    # one-step draw is the posterior mean from pure noise (near 0, W1 ~ 1); a student distilled from
    # its ODE for 200 steps must draw the two modes in one step (W1 0.29 when written).
    schedule = make_schedule("cosine")
    teacher = MixtureDenoiser(schedule, [0.5, 0.5], [-1.0, 1.0], [0.2, 0.2])
    truth = teacher.sample(500, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    student = Denoiser(PixelNet(), schedule, "velocity", "log-snr", boundary=0.002)
    objective = Consistency(teacher="exact", levels=12)
    before, collapsed = _one_step_distance(student, truth), _one_step_distance(teacher, truth)
    optimiser = torch.optim.Adam(student.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        images = teacher.sample(128, (1, 4, 4), generator=generator).float()
        loss = objective(student, images, generator=generator, teacher=teacher).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = _one_step_distance(student, truth)
    assert collapsed > 0.8 and before > 0.5
    assert after < 0.35 * collapsed and after < 0.35 * before, (before, collapsed, after)


def test_the_levels_run_from_sigma_min_to_sigma_max():
    schedule = make_schedule("rectified-flow")
    times = consistency_levels(schedule, 18, 0.002, 80.0)
    alpha, sigma = schedule.rates(times)
    edm = (sigma / alpha).tolist()
    assert edm[0] == pytest.approx(0.002, rel=1e-6) and edm[-1] == pytest.approx(80.0, rel=1e-6)
    assert all(b > a for a, b in zip(edm, edm[1:]))
    ramp = [s ** (1 / 7) for s in edm]  # evenly spaced in sigma^(1/rho)
    assert max(abs((b - a) - (ramp[1] - ramp[0])) for a, b in zip(ramp, ramp[1:])) < 1e-6


def test_objective_refusals_are_one_line():
    with pytest.raises(ValueError, match="needs loss.teacher"):
        Consistency().check(make_schedule("cosine"), "velocity")
    with pytest.raises(ValueError, match="levels must be an integer of at least 2"):
        Consistency(teacher="x", levels=1)
    assert Consistency(target="data").needs == () and Consistency(teacher="x").needs == ("teacher",)


def _teacher(tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["train", "--preset", "mnist", "--steps", "3", *TINY, "--out", str(teacher)]) == 0
    return teacher


def test_distil_a_run_resume_bit_identical_and_sample_in_two_evaluations(tmp_path, capsys):
    teacher = _teacher(tmp_path)
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["distill", "--run", str(teacher), "--no-progress", "checkpoint_every=2", "batch_size=16"]
    assert main([*common, "--out", str(whole), "--steps", "4"]) == 0
    assert main([*common, "--out", str(split), "--steps", "2"]) == 0
    assert main([*common, "--out", str(split), "--steps", "4"]) == 0  # the same command, a longer budget
    a, b = _weights(whole), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = load_run(whole)
    assert run.spec.distilled is not None and run.spec.distilled.teacher.endswith("step-0000003")
    assert run.spec.walk.sampler == "consistency" and run.spec.walk.steps == 2 and run.spec.guidance == 1
    assert run.denoiser.boundary == run.spec.distilled.sigma_min
    report = {}
    assert run.sample(6, seed=0, report=report, progress=False).shape == (6, 8, 8, 1)
    assert report["evaluations"] == [2] * 6
    assert run.sample(3, steps=1, progress=False).shape == (3, 8, 8, 1)  # one step: the spacing's own level
    out = tmp_path / "drawn.npz"
    assert main(["sample", "--run", str(whole), "--n", "4", "--sigmas", "80", "1.5", "0.3", "--no-progress", "--no-png",
                 "--out", str(out)]) == 0
    assert "3 steps at sigma 80, 1.5, 0.3" in capsys.readouterr().out
    assert main(["sample", "--run", str(whole), "--n", "4", "--sigmas", "1", "3", "--no-png", "--out", str(out)]) == 2
    assert "strictly decreasing" in capsys.readouterr().err
    saved = json.loads((whole / "config.json").read_text())
    assert saved["train"]["init"].endswith("step-0000003") and saved["train"]["loss"]["kind"] == "consistency"
    assert main(["distill", "--run", str(whole), "--out", str(tmp_path / "again"), "--steps", "1"]) == 2
    assert "consistency model already" in capsys.readouterr().err
    assert main(["export", "--run", str(whole), "--out", str(tmp_path / "pipeline")]) == 2
    assert "is a consistency model" in capsys.readouterr().err and not (tmp_path / "pipeline").exists()


def test_consistency_tuning_needs_no_teacher(tmp_path):
    teacher = _teacher(tmp_path)
    out = tmp_path / "tuned"
    assert main(["distill", "--run", str(teacher), "--out", str(out), "--steps", "2", "--target", "data",
                 "--no-progress", "batch_size=16"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["loss"]["target"] == "data" and saved["train"]["loss"]["teacher"] == ""
    assert load_run(out).spec.distilled.objective == "data"
    # The student starts as its teacher: after one step of a vanishing learning rate it is the teacher.
    still = tmp_path / "still"
    assert main(["distill", "--run", str(teacher), "--out", str(still), "--steps", "1", "--no-progress",
                 "batch_size=16", "lr=1e-12", "weights=model"]) == 0
    mine, theirs = load_run(still).denoiser.net.state_dict(), load_run(teacher).denoiser.net.state_dict()
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-9) for k in theirs)
    assert math.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["loss"])


def test_a_student_of_a_run_on_clusters_keeps_its_clusters(tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["train", "--preset", "mnist", "--steps", "2", *TINY, "clusters=3", "--out", str(teacher)]) == 0
    student = tmp_path / "student"
    assert main(["distill", "--run", str(teacher), "--out", str(student), "--steps", "1", "--no-progress",
                 "batch_size=16"]) == 0
    assert json.loads((student / "clusters.json").read_text()) == json.loads((teacher / "clusters.json").read_text())
    assert load_run(student).spec.label_prior == load_run(teacher).spec.label_prior
