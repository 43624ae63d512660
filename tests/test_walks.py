"""One typed walk: checked where it is built, stored with a run, and the default of every way a
run is sampled (sample, evaluate, show, the page, previews, KID)."""

import json

import numpy as np
import pytest

from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import ModelSpec, load_run
from pixel_diffusion.samplers import SAMPLERS, Walk
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
    ({"clip": "yes"}, "clip must be true or false"),
    ({"sampler": "heun", "options": {"eta": 0.5}}, "eta is an option of the ddim,"),
    ({"sampler": "ddim", "options": {"eta": 1.5}}, "eta must lie in [0, 1]"),
    ({"sampler": "ddim", "options": {"eta": "half"}}, "ddim's eta must be a number; got 'half'"),
    ({"sampler": "ddim", "options": {"wobble": 1}}, "ddim has no option 'wobble'; it takes"),
    ({"sampler": "unipc", "options": {"corrector": 1}}, "unipc's corrector must be true or false"),
])
def test_a_bad_walk_is_one_line_where_it_is_built(fields, says):
    with pytest.raises(ValueError) as caught:
        Walk(**fields)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="walk: "):  # read from JSON: the same line, naming where
        Walk.from_dict(fields, "walk")


def test_a_walk_round_trips_and_changes_by_fields_or_sampler_options():
    walk = Walk("ddim", 20, "trailing", options={"eta": 0.3}, guidance=2.0, clip=False)
    assert Walk.from_dict(json.loads(json.dumps(walk.to_dict()))) == walk
    assert walk.replace(steps=None, spacing=None) == walk  # None leaves a field as it is
    assert walk.replace(sampler="heun").options == {}  # a new sampler starts from its own options
    assert walk.describe() == "ddim, 20 steps, trailing spacing" and walk.evaluations == 20
    assert Walk("heun", 5).evaluations == 9 and Walk("dpm-adaptive").evaluations is None
    assert Walk().sampler == "dpmpp-2m" and Walk().spacing_used == SAMPLERS["dpmpp-2m"].spacing
    with pytest.raises(ValueError, match="unknown field 'stepz'"):
        Walk.from_dict({"stepz": 3})


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
