"""One typed walk: checked where it is built, stored with a run, and the default of every way a
run is sampled (sample, evaluate, show, the page, previews, KID)."""

import json
import math

import numpy as np
import pytest
import torch

from pixel_diffusion import schedules
from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.editing import inpaint, restore
from pixel_diffusion.exact import GaussianDenoiser, MixtureDenoiser
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import ModelSpec, load_run
from pixel_diffusion.samplers import SAMPLERS, ImageNoise, Walk, sample
from pixel_diffusion.training import train

TINY = ["data.source=digits", 'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
        "batch_size=32", "log_every=1", "preview_every=2", "preview_images=4", "progress=false", "precision=fp32",
        "lr_warmup=2", "clusters=0"]


@pytest.mark.parametrize("fields, says", [
    ({"sampler": "plms"}, "unknown sampler 'plms'; expected one of"),
    ({"steps": 0}, "sampling steps must be a positive integer; got 0"),
    ({"steps": True}, "sampling steps must be a positive integer; got True"),
    ({"spacing": "wavy"}, "unknown spacing 'wavy'; expected one of"),
    ({"sampler": "ddim", "sigma_max": 80.0}, "spacing 'uniform' always starts at t = 1; sigma_max applies to 'karras'"),
    ({"sigma_max": -1.0}, "sigma_max must be a positive number"),
    ({"guidance": 25.0}, "guidance must be a scale in [0, 20]"),
    ({"clip": 2}, "clip must be true or false"),
    ({"sampler": "heun", "options": {"eta": 0.5}}, "eta is an option of the ddim,"),
    ({"sampler": "ddim", "options": {"eta": 1.5}}, "eta must lie in [0, 1]"),
    ({"sampler": "ddim", "options": {"eta": "half"}}, "ddim's eta must be a number; got 'half'"),
    ({"sampler": "ddim", "options": {"wobble": 1}}, "ddim has no option 'wobble'; it takes"),
    ({"sampler": "unipc", "options": {"corrector": 1}}, "unipc's corrector must be true or false"),
    ({"start": 0.3, "stop": 0.5}, "a walk runs from start down to stop; got start 0.3, stop 0.5"),
    ({"stop": 1.5}, "a walk's stop must be a time in [0, 1]"),
    ({"sampler": "dpm-adaptive", "stop": 0.2}, "dpm-adaptive solves down to t = 0; a walk that stops at 0.2"),
    ({"sampler": "ddim", "spacing": "leading", "start": 0.5}, "spacing 'leading' walks the whole grid"),
])
def test_a_bad_walk_is_one_line_where_it_is_built(fields, says):
    with pytest.raises(ValueError) as caught:
        Walk(**fields)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"walk[.:]"):  # read from JSON: one line too, naming where
        Walk.from_dict(fields, "walk")


def test_a_walk_round_trips_and_changes_by_fields_or_sampler_options():
    walk = Walk("ddim", 20, "trailing", options={"eta": 0.3}, guidance=2.0, clip=False)
    assert Walk.from_dict(json.loads(json.dumps(walk.to_dict()))) == walk
    assert walk.replace(steps=None, spacing=None) == walk  # None leaves a field as it is
    assert walk.replace(sampler="heun").options == {}  # a new sampler starts from its own options
    assert walk.describe() == "ddim, 20 steps, trailing spacing" and walk.evaluations == 20
    assert Walk("heun", 5).evaluations == 9 and Walk("dpm-adaptive").evaluations is None
    assert Walk().sampler == "dpmpp-2m" and Walk().spacing_used == SAMPLERS["dpmpp-2m"].spacing
    with pytest.raises(ValueError, match="unknown field walk.stepz; expected one of clip, guidance"):
        Walk.from_dict({"stepz": 3})


@pytest.mark.parametrize("spacing, coordinate", [
    ("uniform", lambda schedule, t: t),
    ("karras", lambda schedule, t: (-schedules.log_snr(schedule, t) / 2).exp() ** (1 / 7)),  # (sigma/alpha)^(1/rho)
    ("log-snr", lambda schedule, t: schedules.log_snr(schedule, t)),
])
@pytest.mark.parametrize("schedule_name", ["continuous-cosine", "rectified-flow"])
def test_a_walk_over_part_of_the_times_is_spaced_by_its_rule_between_its_ends(spacing, coordinate, schedule_name):
    schedule = schedules.make_schedule(schedule_name)
    times = Walk("euler", 8, spacing, start=0.8, stop=0.2).times(schedule)
    assert len(times) == 9 and float(times[0]) == 0.8 and float(times[-1]) == 0.2
    steps = torch.diff(coordinate(schedule, times))  # evenly spaced in the spacing's own coordinate
    torch.testing.assert_close(steps, steps[:1].expand(8), rtol=1e-6, atol=1e-9)
    to_zero = Walk("euler", 8, spacing, start=0.8).times(schedule)  # ending at 0: the last step from t_min
    assert float(to_zero[0]) == 0.8 and float(to_zero[-1]) == 0 and len(to_zero) == 9
    assert torch.equal(Walk("euler", 8, spacing).times(schedule),  # the whole walk is the default's
                       schedules.sampling_times(schedule, 8, spacing))


def test_a_discrete_schedules_partial_uniform_walk_stays_on_its_grid():
    schedule = schedules.make_schedule("linear")
    times = Walk("ddim", 10, start=0.5, stop=0.1).times(schedule)
    grid = times * schedule.num_steps
    torch.testing.assert_close(grid, grid.round(), rtol=0, atol=1e-9)
    assert float(times[0]) == 0.5 and float(times[-1]) == 0.1
    with pytest.raises(ValueError, match="repeat a time"):  # more steps than the grid has between the ends
        Walk("ddim", 10, start=0.005).times(schedule)


@pytest.mark.parametrize("sampler, options", [("ddim", {}), ("euler", {}), ("heun", {}),
                                              ("dpmpp-2s-ancestral", {"eta": 0.0})])
def test_a_one_step_sampler_walked_in_two_parts_is_the_whole_walk(sampler, options):
    """Where a sampler keeps no history, stopping at t and going on from t is the same walk."""
    denoiser = MixtureDenoiser(schedules.cosine(), [0.3, 0.7], [-0.6, 0.4], [0.1, 0.3])
    times = Walk(sampler, 12).times(denoiser.schedule)
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = SAMPLERS[sampler](denoiser, x, times, **options)
    middle = SAMPLERS[sampler](denoiser, x, times[:7], **options)
    assert middle.std() > 0.3  # x at t = times[6]: still noisy
    torch.testing.assert_close(SAMPLERS[sampler](denoiser, middle, times[6:], **options), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule_name", ["cosine", "rectified-flow"])
def test_an_ode_walk_between_two_times_lands_where_the_exact_flow_does(schedule_name):
    denoiser = GaussianDenoiser.iid(schedules.make_schedule(schedule_name), 0.3, 0.5)
    walk = Walk("dpmpp-2m", 40, "log-snr", start=0.9, stop=0.25)
    times = walk.times(denoiser.schedule)
    x = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(walk(denoiser, x).double(), denoiser.flow(x, float(times[0]), 0.25), rtol=0, atol=2e-3)


def test_sdedit_with_an_ode_walk_keeps_the_data_distribution():
    """Data noised to t and walked back along the probability-flow ODE is data again (closed form:
    pixels i.i.d. N(0.3, 0.5^2))."""
    denoiser = GaussianDenoiser.iid(schedules.cosine(), 0.3, 0.5)
    images = denoiser.sample(2048, (1, 4, 4), torch.Generator().manual_seed(2)).float()
    out = restore(denoiser, images, Walk("dpmpp-2m", 30), strength=0.6, seed=3).double()
    n = out.numel()
    assert abs(out.mean().item() - 0.3) < 5 * 0.5 / math.sqrt(n)
    assert out.var().item() == pytest.approx(0.25, rel=5 * math.sqrt(2 / n))
    assert (out - images).abs().mean() > 0.1  # restored, not returned


def test_inpainting_everything_in_one_pass_is_the_walk_itself():
    """RePaint walks any sampler of the registry one step at a time: with the whole image masked and
    no resampling it is that walk from the same noise."""
    denoiser = MixtureDenoiser(schedules.cosine(), [0.5, 0.5], [-0.5, 0.5], [0.2, 0.2])
    x = torch.zeros(6, 1, 4, 4)
    for walk in (Walk("ddim", 10), Walk("euler", 8)):
        filled = inpaint(denoiser, x, torch.ones(4, 4), walk, resample=1, seed=5)
        drawn = sample(denoiser, (1, 4, 4), 6, walk, seed=5, progress=False)
        torch.testing.assert_close(filled, drawn, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="inpainting walks fixed steps from t = 1 to 0"):
        inpaint(denoiser, x, torch.ones(4, 4), Walk("ddim", 10, stop=0.5))


def test_a_walk_that_starts_late_starts_from_images_not_noise():
    walk = Walk("ddim", 5, start=0.5)
    assert walk.describe() == "ddim, 5 steps, uniform spacing, t = 0.5 to 0"
    with pytest.raises(ValueError, match="starts from images noised to it"):
        sample(GaussianDenoiser.iid(schedules.cosine(), 0.0, 1.0), (1, 4, 4), 2, walk, progress=False)
    schedule = schedules.cosine()
    images, noise = torch.zeros(3, 1, 4, 4), ImageNoise([0, 1, 2])(torch.empty(3, 1, 4, 4))
    alpha, sigma = (float(r) for r in schedule.rates(torch.tensor(0.5, dtype=torch.float64)))
    torch.testing.assert_close(walk.from_images(schedule, images + 1, noise), alpha + sigma * noise)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Trained with its own walk, as a preset would store its measured best."""
    out = tmp_path_factory.mktemp("walk") / "run"
    config = apply_overrides(apply_overrides(preset("mnist"), TINY),
                             {"steps": 4, "checkpoint_every": 4, "walk": {"sampler": "ddim", "steps": 3, "options": {"eta": 0.5}}})
    train(config, out)
    return out


def test_a_run_stores_its_walk_and_every_sampling_defaults_to_it(run, tmp_path, capsys):
    loaded = load_run(run)
    assert loaded.spec.walk == Walk("ddim", 3, options={"eta": 0.5})
    assert json.loads((run / "config.json").read_text())["model"]["walk"]["sampler"] == "ddim"
    own = loaded.sample(3, seed=5, progress=False)
    assert np.array_equal(own, loaded.sample(3, Walk("ddim", 3, options={"eta": 0.5}), seed=5, progress=False))
    assert not np.array_equal(own, loaded.sample(3, seed=5, progress=False, eta=0.0))  # a change of one option
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--n", "3", "--seed", "5", "--no-progress", "--out", str(tmp_path / "s")]) == 0
    assert "ddim, 3 steps, uniform spacing" in capsys.readouterr().out
    assert np.array_equal(np.load(tmp_path / "s" / "samples.npz")["images"], own)
    # Previews were drawn along it too: the preview at step 4 is the run's walk from the preview seed.
    assert (run / "samples" / "step-0000004.png").exists()


def test_a_changed_walk_is_refused_before_sampling_in_one_line(run, capsys):
    assert main(["sample", "--run", str(run), "--sampler", "heun", "--eta", "0.5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "eta is an option of the" in err and err.count("\n") == 1
    assert main(["sample", "--run", str(run), "--eta", "0.2", "--n", "2", "--no-progress", "--no-png",
                 "--out", str(run / "eta")]) == 0  # the run's ddim takes eta


def test_a_config_walk_is_checked_before_training_and_older_model_descriptions_load():
    with pytest.raises(ValueError, match="walk: unknown sampler 'plms'"):
        apply_overrides(preset("mnist"), {"walk": {"sampler": "plms"}})
    with pytest.raises(ValueError, match="walk: sampling steps must be a positive integer"):
        apply_overrides(preset("mnist"), ["walk.steps=0"])
    described = apply_overrides(preset("mnist"), ["walk.sampler=ddim", "walk.steps=7"]).sampling_walk()
    assert described == Walk("ddim", 7)
    spec = ModelSpec.from_dict({"network": {"kind": "unet", "in_channels": 1, "widths": [8, 16], "groups": 4},
                                "schedule": "cosine", "prediction": "noise", "noise_input": "timestep",
                                "normalisation": {}, "channels": 1, "image_size": [8, 8]})
    assert spec.walk == Walk()  # a model.json from before walks
