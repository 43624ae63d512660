"""The one device rule of every command, and precision=auto's measured choice."""

import json
import os
import time

import pytest
import torch

from pixel_diffusion import devices
from pixel_diffusion.checkpoints import latest_checkpoint, read_json
from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.training import make_engine, train

TINY = ['network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}', "batch_size=16",
        "preview_every=0", "progress=false", "lr_warmup=0", "clusters=0", "kid_every=0", "checkpoint_every=2"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home of its own: the precision cache is written there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_auto_is_cuda_then_mps_then_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if devices._mps_available() else "cpu"
    assert devices.pick_device("auto").type == expected
    assert devices.pick_device("cpu") == torch.device("cpu") == devices.pick_device(" CPU ")


@pytest.mark.parametrize("name", ["gpu", "tpu", "", "cuda:x", "cuda:-1", "cpu:0:1", "meta"])
def test_a_device_that_is_no_device_is_one_line(name):
    with pytest.raises(ValueError, match="unknown device .*; expected auto, cpu, cuda, cuda:N or mps"):
        devices.pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_a_gpu_asked_for_where_there_is_none_is_refused_by_every_command(tmp_path, capsys, name):
    with pytest.raises(ValueError, match=f"device {name} asked for, but this machine has no CUDA GPU"):
        devices.pick_device(name)
    config = apply_overrides(preset("mnist"), [*TINY, f"device={name}"])
    with pytest.raises(ValueError, match="no CUDA GPU"):
        make_engine(config)
    for command in (["train", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "run"), *TINY],
                    ["sample", "--run", str(tmp_path / "run"), "--n", "1"],
                    ["train-classifier", "--data", "digits", "--out", str(tmp_path / "classifier")],
                    ["serve", "--runs", str(tmp_path)]):
        capsys.readouterr()
        assert main([*command, "--device", name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no CUDA GPU" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_explicit_gpu_index_is_checked_against_the_gpus_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.pick_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"has 2 CUDA GPU\(s\): cuda:0 to cuda:1"):
        devices.pick_device("cuda:2")


def test_the_engine_takes_the_device_the_rule_names():
    accelerator = make_engine(apply_overrides(preset("mnist"), [*TINY, "device=cpu"]))
    assert accelerator.device == torch.device("cpu")
    assert "ACCELERATE_TORCH_DEVICE" not in os.environ  # set only while the engine is made


def _step(slow_in: str, seconds: float = 0.01):
    """A step slower under one precision (bf16: under autocast), counting its calls."""
    calls = []

    def step():
        calls.append(torch.is_autocast_enabled("cpu"))
        time.sleep(seconds if (slow_in == "bf16") == torch.is_autocast_enabled("cpu") else seconds / 10)

    return step, calls


@pytest.mark.parametrize("slow_in, chosen", [("bf16", "fp32"), ("fp32", "bf16")])
def test_auto_takes_the_faster_precision_and_measures_a_network_once(tmp_path, slow_in, chosen):
    cache, cpu, network = tmp_path / "precision.json", torch.device("cpu"), {"name": "patch-mnist", "channels": 8}
    step, calls = _step(slow_in)
    precision, why = devices.choose_precision(step, cpu, network, (16, 1, 28, 28), cache=cache)
    assert precision == chosen and "measured" in why
    assert True in calls and False in calls  # both were timed, each under its own arithmetic
    measured = len(calls)
    assert devices.choose_precision(step, cpu, network, (16, 1, 28, 28), cache=cache) == (chosen, why.replace("measured", "cached"))
    assert len(calls) == measured  # cached: not timed again
    devices.choose_precision(step, cpu, {**network, "channels": 16}, (16, 1, 28, 28), cache=cache)
    devices.choose_precision(step, cpu, network, (32, 1, 28, 28), cache=cache)
    assert len(calls) == 3 * measured and len(json.loads(cache.read_text())) == 3  # another network, another batch


def test_a_tie_keeps_float32_and_a_damaged_cache_is_measured_again(tmp_path):
    cache = tmp_path / "precision.json"
    cache.write_text("{not json")
    precision, why = devices.choose_precision(lambda: time.sleep(0.002), torch.device("cpu"), {}, (1,), cache=cache)
    assert precision == "fp32" and "measured" in why  # bf16 must be MARGIN faster to be taken
    assert isinstance(json.loads(cache.read_text()), dict)


def test_training_says_its_device_and_precision_and_a_run_keeps_its_precision(tmp_path, home, capsys):
    run = tmp_path / "run"
    command = ["train", "--preset", "mnist", "--data", "digits", "--out", str(run), "--device", "cpu",
               *[o for o in TINY if o != "progress=false"]]
    assert main([*command, "--steps", "2"]) == 0
    said = capsys.readouterr().out
    assert f"on {devices.describe_device(torch.device('cpu'))} in " in said and "measured" in said
    first = read_json(latest_checkpoint(run) / "state.json")["precision"]
    assert first in ("fp32", "bf16") and f"in {first} (" in said
    # The machine's cached verdict turns over; the run still resumes in the arithmetic it began with.
    cache = devices.precision_cache()
    known = json.loads(cache.read_text())
    (key,) = known
    other = "fp32" if first == "bf16" else "bf16"
    cache.write_text(json.dumps({key: {first: 1.0, other: 0.1}}))
    assert main([*command, "--steps", "4"]) == 0
    assert f"in {first} (this run's own, from its checkpoint)" in capsys.readouterr().out
    assert read_json(latest_checkpoint(run) / "state.json")["precision"] == first
    fresh = tmp_path / "fresh"
    train(apply_overrides(preset("mnist"), [*TINY, "data.source=digits", "steps=2"]), fresh)
    assert read_json(latest_checkpoint(fresh) / "state.json")["precision"] == other  # a new run reads the cache
