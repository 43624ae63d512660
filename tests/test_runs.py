"""The run layer: model descriptions, loading a checkpoint by name, sampling, older runs, and the
registries the commands read."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pixel_diffusion.checkpoints import CheckpointError
from pixel_diffusion.cli import build_parser, main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import ModelSpec, load_run
from pixel_diffusion.samplers import DEFAULT_SAMPLER
from pixel_diffusion.training import train

RELEASE = Path(__file__).parent / "fixtures" / "release-0.1.0"
TINY = [
    "data.source=digits",
    'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
    "batch_size=32", "log_every=1", "preview_every=0", "progress=false", "precision=fp32", "lr_warmup=2",
    "clusters=3", "lr=3e-3",
]


def test_a_run_written_by_release_0_1_0_samples_the_same_images_bit_for_bit():
    expected = np.load(RELEASE / "expected.npz")
    assert not (RELEASE / "checkpoints" / "step-0000006" / "model.json").exists()  # from before model.json
    for name, sampler, steps, weights in [("ddim-4", "ddim", 4, "ema"), ("ddpm-3", "ddpm", 3, "ema"),
                                          ("ddim-4-model", "ddim", 4, "model")]:
        run = load_run(RELEASE, weights=weights)
        assert np.array_equal(run.sample(6, sampler=sampler, steps=steps, seed=0, progress=False), expected[name]), name
    assert run.step == 6 and run.spec.on_clusters and run.describe()["preset"] == "mnist"


@pytest.fixture(scope="module")
def kid_run(tmp_path_factory):
    """A run with KID selection: checkpoints at steps 4 and 6 and a `best` among 2, 4, 6."""
    from pixel_diffusion.data import DataConfig
    from pixel_diffusion.features import train_classifier

    root = tmp_path_factory.mktemp("kid")
    home = pytest.MonkeyPatch()
    home.setenv("HOME", str(root / "home"))  # the reference cache lives under it
    train_classifier(DataConfig("digits"), root / "classifier", epochs=1, progress=False)
    config = apply_overrides(apply_overrides(preset("mnist"), TINY), {
        "steps": 6, "checkpoint_every": 2, "keep_checkpoints": 2, "kid_every": 2, "kid_images": 40,
        "kid_classifier": str(root / "classifier")})
    train(config, root / "run")
    home.undo()
    return root / "run"


def test_every_checkpoint_folder_carries_the_model_description(kid_run):
    saved = json.loads((kid_run / "config.json").read_text())["model"]
    for folder in (kid_run / "checkpoints").iterdir():
        if folder.is_dir():
            assert json.loads((folder / "model.json").read_text()) == saved, folder.name
    spec = load_run(kid_run).spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec and json.loads(json.dumps(spec.to_dict())) == saved


def test_checkpoints_are_named_latest_best_or_by_step(kid_run):
    best = json.loads((kid_run / "checkpoints" / "best" / "state.json").read_text())["step"]
    assert load_run(kid_run).step == 6 and load_run(kid_run, checkpoint="best").step == best
    assert load_run(kid_run, checkpoint=4).step == 4 and load_run(kid_run, checkpoint="step-0000004").step == 4
    weights = lambda run: torch.cat([p.flatten() for p in run.denoiser.net.parameters()])  # noqa: E731
    assert not torch.equal(weights(load_run(kid_run, checkpoint=4)), weights(load_run(kid_run, checkpoint=6)))
    assert not torch.equal(weights(load_run(kid_run, checkpoint=4)), weights(load_run(kid_run, checkpoint=4, weights="model")))
    with pytest.raises(ValueError, match="has no checkpoint at step 3; it keeps steps 4, 6"):
        load_run(kid_run, checkpoint=3)
    with pytest.raises(ValueError, match="checkpoint must be latest, best or a step number"):
        load_run(kid_run, checkpoint="newest")


def test_sample_and_show_take_a_checkpoint(kid_run, tmp_path, capsys):
    best = load_run(kid_run, checkpoint="best")
    for checkpoint, run in (("best", best), ("4", load_run(kid_run, checkpoint=4))):
        out = tmp_path / checkpoint
        assert main(["sample", "--run", str(kid_run), "--checkpoint", checkpoint, "--n", "4", "--steps", "3",
                     "--no-png", "--no-progress", "--out", str(out)]) == 0
        assert np.array_equal(np.load(out / "samples.npz")["images"], run.sample(4, steps=3, progress=False))
    assert main(["show", "grid", "--run", str(kid_run), "--checkpoint", "best", "--n", "4", "--steps", "2",
                 "--out", str(tmp_path / "grid.png")]) == 0
    capsys.readouterr()
    assert main(["sample", "--run", str(kid_run), "--checkpoint", "2"]) == 2
    assert "no checkpoint at step 2" in capsys.readouterr().err
    assert main(["sample", "--run", str(RELEASE), "--checkpoint", "best"]) == 2
    assert "has no best checkpoint" in capsys.readouterr().err


def test_a_checkpoint_folder_copied_elsewhere_samples_on_its_own(kid_run, tmp_path):
    for name in ("best", "step-0000006"):
        copy = tmp_path / name
        shutil.copytree(kid_run / "checkpoints" / name, copy)
        alone = load_run(copy)
        assert alone.directory is None and alone.step == load_run(kid_run, checkpoint=name.removeprefix("step-")).step
        from_run = load_run(kid_run, checkpoint=name.removeprefix("step-")).sample(5, steps=3, seed=2, progress=False)
        assert np.array_equal(alone.sample(5, steps=3, seed=2, progress=False), from_run)
        assert main(["sample", "--run", str(copy), "--n", "2", "--steps", "2", "--no-png", "--no-progress"]) == 0
        assert (copy / f"samples-{DEFAULT_SAMPLER}-2" / "samples.npz").exists()
    # An old checkpoint folder on its own has no description: it says so.
    shutil.copytree(RELEASE / "checkpoints" / "step-0000006", tmp_path / "old")
    with pytest.raises(ValueError, match="holds no model.json; copy the whole run directory"):
        load_run(tmp_path / "old")


@pytest.mark.parametrize("change, message", [
    ({"channels": "one"}, "channels: expected an integer, got 'one'"),
    ({"channels": 2}, "channels must be 1 or 3; got 2"),
    ({"image_size": [8]}, r"image_size: expected a list of 2 integers, got \[8\]"),
    ({"network": 1}, "network must be a table of a network config's fields; got int"),
    ({"network": {"widths": "wide"}}, "network.widths: expected a list of integers, got 'wide'"),
    ({"label_prior": "many"}, "label_prior: expected a list of numbers or null, got 'many'"),
    ({"prediction": None}, "prediction: expected a string, got None"),
    ({"schedule": "wavy"}, "unknown schedule 'wavy'"),
    ({"noise_input": "sigma"}, "noise_input must be one of timestep, variance, log-snr"),
    ({"schedule_options": {"steps": 0.5}}, "unknown option schedule_options.steps; expected one of"),
    ({"walk": {"steps": "many"}}, "walk.steps: expected an integer, got 'many'"),
    ({"colour": "red"}, "unknown field colour; expected one of"),
])
def test_a_malformed_model_description_is_one_line(change, message, tmp_path):
    shutil.copytree(RELEASE, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"].update(change)
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as caught:
        load_run(tmp_path / "run")
    assert "\n" not in str(caught.value)
    with pytest.raises(CheckpointError, match="model description must be a JSON object"):
        ModelSpec.from_dict(1)


def test_the_commands_share_one_vocabulary_of_options():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    shared = {"--seed": ("train", "sample", "evaluate", "show", "demo"),
              "--no-progress": ("train", "sample", "evaluate", "train-classifier", "demo"),
              "--device": ("train", "sample", "evaluate", "show"),
              "--checkpoint": ("sample", "evaluate", "show"), "--weights": ("sample", "evaluate", "show")}
    for flag, names in shared.items():
        for name in names:
            assert flag in commands[name]._option_string_actions, f"{name} lacks {flag}"


def test_a_registered_sampler_is_usable_from_the_command_line(monkeypatch, tmp_path, capsys):
    from pixel_diffusion import samplers

    calls = {}

    def halfway(denoiser, x, times, *, labels=None, noise=None, callback=None, eta=0.5, clip=None):
        calls["eta"] = eta
        return samplers.ddim(denoiser, x, times, labels=labels, noise=noise, callback=callback, eta=eta, clip=clip)

    monkeypatch.setitem(samplers.SAMPLERS, "halfway", samplers.SamplerEntry(halfway, lambda steps: 3 * steps, "test"))
    assert samplers.evaluations("halfway", 4) == 12 and "halfway" in samplers.samplers_with_option("eta")
    assert main(["sample", "--run", str(RELEASE), "--sampler", "halfway", "--eta", "0.25", "--steps", "2", "--n", "2",
                 "--no-png", "--no-progress", "--out", str(tmp_path)]) == 0
    assert calls["eta"] == 0.25 and "12 network evaluations" not in capsys.readouterr().out  # 2 steps: 6
    assert main(["sample", "--run", str(RELEASE), "--sampler", "euler", "--eta", "0.25"]) == 2
    assert "halfway" in capsys.readouterr().err  # the list of samplers with eta is the registry's


def test_walk_options_come_from_the_registry(tmp_path, capsys):
    out = lambda name: ["--n", "3", "--no-png", "--no-progress", "--out", str(tmp_path / name)]  # noqa: E731
    assert main(["sample", "--run", str(RELEASE), "--sampler", "ddim", "--order", "2", *out("a")]) == 2
    err = capsys.readouterr().err
    assert "order is an option of the ipndm, unipc, dpm-adaptive samplers, not of ddim" in err and err.count("\n") == 1
    assert main(["sample", "--run", str(RELEASE), "--sampler", "unipc", "--order", "5", *out("b")]) == 2
    assert "UniPC order must be 1, 2 or 3; got 5" in capsys.readouterr().err
    assert main(["sample", "--run", str(RELEASE), "--sampler", "unipc", "--order", "2", "--corrector", "no", "--steps", "4",
                 *out("c")]) == 0
    assert "4 steps, karras spacing, 4 network evaluations each" in capsys.readouterr().out  # the sampler's own spacing
    assert main(["sample", "--run", str(RELEASE), "--sampler", "dpm-adaptive", "--rtol", "0.2", "--max-evaluations", "3",
                 *out("d")]) == 2
    assert "max_evaluations must be an integer of at least 4" in capsys.readouterr().err
    assert main(["sample", "--run", str(RELEASE), "--sampler", "dpm-adaptive", "--rtol", "0.2", "--max-evaluations", "30",
                 *out("e")]) == 0
    said = re.search(r"\(dpm-adaptive, adaptive, ([\d.]+) network evaluations each \((\d+) to (\d+)\)\)",
                     capsys.readouterr().out)
    assert said and 4 <= int(said[2]) <= float(said[1]) <= int(said[3]) <= 30, said


def test_show_reads_the_picture_registry_and_refuses_foreign_options(monkeypatch, tmp_path, capsys):
    from PIL import Image

    from pixel_diffusion import viz

    def spec_card(run, *, seed: int = 0):
        return Image.new("L", (run.spec.image_size[1], run.spec.image_size[0]), seed)

    monkeypatch.setitem(viz.PICTURES, "card", viz.Picture(spec_card, "one grey card"))
    assert main(["show", "card", "--run", str(RELEASE), "--seed", "7", "--out", str(tmp_path / "card.png")]) == 0
    with Image.open(tmp_path / "card.png") as card:
        assert card.size == (8, 8) and card.getpixel((0, 0)) == 7
    capsys.readouterr()
    assert main(["show", "card", "--run", str(RELEASE), "--frames", "3"]) == 2
    assert "--frames is not an option of show card; it takes --seed" in capsys.readouterr().err


def test_a_registered_data_source_is_opened_by_its_spec(monkeypatch):
    from pixel_diffusion import sources
    from pixel_diffusion.data import DataConfig, load_images

    images = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8, 1)
    kind = sources.SourceKind(lambda spec, path: spec == "ramp", lambda config: sources.Source("ramp", 4, lambda i: images[i],
                                                                                               lambda i: f"ramp[{i}]"), "a ramp")
    monkeypatch.setitem(sources.SOURCES, "ramp", kind)
    monkeypatch.setattr(sources, "SOURCES", {"ramp": kind, **sources.SOURCES})  # claimed before the others
    loaded = load_images(DataConfig("ramp"), progress=False)
    assert np.array_equal(loaded.uint8(np.arange(4)).permute(0, 2, 3, 1).numpy(), images)


def test_curves_draw_the_logged_metrics_registry(monkeypatch, tmp_path):
    from pixel_diffusion import logbook, viz

    log = logbook.RunLog(tmp_path)
    for step in range(1, 4):
        log.write({"step": step, "loss": 1.0 / step, "lr": 1e-3, "sharpness": step})
    log.close()
    narrow = viz.curves(tmp_path).width
    monkeypatch.setitem(logbook.LOGGED, "sharpness", logbook.Logged("sharpness"))
    assert viz.curves(tmp_path).width > narrow  # one panel more
    log = logbook.RunLog(tmp_path)
    log.truncate(2)
    assert [r["step"] for r in logbook.read_records(tmp_path)] == [1, 2]


def test_every_png_carries_how_it_was_made_and_info_draws_it_again(tmp_path, capsys):
    import shlex

    from PIL import Image

    from pixel_diffusion.viz import read_parameters

    first = tmp_path / "first"
    assert main(["sample", "--run", str(RELEASE), "--n", "3", "--sampler", "dpmpp-2m", "--steps", "3", "--seed", "5",
                 "--guidance", "1.5", "--eta", "0.3", "--no-progress", "--out", str(first)]) == 0
    made = read_parameters(first / "00002.png")
    assert (made["sampler"], made["steps"], made["spacing"], made["seed"], made["index"], made["guidance"],
            made["eta"]) == ("dpmpp-2m", 3, "karras", 5, 2, 1.5, 0.3)
    assert made["step"] == 6 and made["checkpoint"].endswith("step-0000006") and made["drawn_label"] in range(3)
    assert read_parameters(first / "grid.png")["images"] == 3
    capsys.readouterr()
    assert main(["info", str(first / "00002.png")]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("reproduce: pixel-diffusion sample ")
    again = tmp_path / "again"
    command = shlex.split(line.removeprefix("reproduce: pixel-diffusion ").split("  (image")[0])
    assert main(command + ["--no-progress", "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again / "00002.png")), np.asarray(Image.open(first / "00002.png")))

    assert main(["show", "forward", "--run", str(RELEASE), "--n", "2", "--out", str(tmp_path / "f.png")]) == 0
    assert read_parameters(tmp_path / "f.png")["kind"] == "forward"
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "plain.png")]) == 2
    err = capsys.readouterr().err
    assert "carries no pixel-diffusion parameters" in err and err.count("\n") == 1
