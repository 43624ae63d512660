"""Training, checkpoints, resumption and the train/sample commands, on tiny models and data."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pixel_diffusion import checkpoints
from pixel_diffusion.checkpoints import CheckpointError, latest_checkpoint, load_checkpoint
from pixel_diffusion.cli import main
from pixel_diffusion.config import TrainConfig, apply_overrides, read_config_file
from pixel_diffusion.objectives import Diffusion
from pixel_diffusion.presets import PRESETS, preset
from pixel_diffusion.runs import load_run
from pixel_diffusion.training import TrainingError, train
from pixel_diffusion.viz import read_parameters

# A network and budget small enough for a test: digits are 8x8, one downsampling.
TINY = [
    "data.source=digits",
    'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
    "batch_size=32",
    "log_every=1",
    "preview_every=0",
    "progress=false",
    "precision=fp32",
    "lr_warmup=2",
    "clusters=0",  # unconditional; tests/test_clusters.py trains on clusters
]


def tiny(**extra) -> TrainConfig:
    return apply_overrides(apply_overrides(preset("mnist"), TINY), extra)


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pixel_diffusion", *args], capture_output=True, text=True, timeout=timeout)


def _weights(run: Path) -> dict:
    last = latest_checkpoint(run)
    return {**{f"model.{k}": v for k, v in load_file(last / "model.safetensors").items()},
            **{f"ema.{k}": v for k, v in load_file(last / "ema.safetensors").items()}}


def test_a_few_dozen_steps_lower_the_loss(tmp_path):
    train(tiny(steps=40, lr=3e-3), tmp_path)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["steps"] == 40 and saved["model"]["network"]["widths"] == [8, 16]
    assert saved["model"]["normalisation"]["kind"] == "minus-one-one" and saved["model"]["channels"] == 1


def test_the_gradient_norm_is_logged_before_clipping(tmp_path):
    train(tiny(steps=4, grad_clip=1e-6), tmp_path)
    norms = [json.loads(line)["grad_norm"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(norms) == 4 and all(np.isfinite(norms)) and min(norms) > 1e-3  # not the clipped 1e-6
    train(tiny(steps=1, grad_clip=None), tmp_path / "unclipped")
    assert "grad_norm" not in (tmp_path / "unclipped" / "metrics.jsonl").read_text()


def test_run_killed_at_any_moment_resumes_bit_identical(tmp_path):
    args = ["train", "--preset", "mnist", "--steps", "24", "--checkpoint-every", "3", *TINY]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert _cli(*args, "--out", str(whole)).returncode == 0
    for kill_after in (0.0, 0.7):  # right after the first checkpoint, and somewhat later
        process = subprocess.Popen([sys.executable, "-m", "pixel_diffusion", *args, "--out", str(broken)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while latest_checkpoint(broken) is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        process.wait()
    interrupted_at = int(latest_checkpoint(broken).name.split("-")[1])
    assert interrupted_at < 24, "the run finished before it could be killed"
    result = _cli(*args, "--out", str(broken))
    assert result.returncode == 0, result.stderr
    a, b = _weights(whole), _weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25))


def test_ctrl_c_checkpoints_and_the_same_command_continues(tmp_path):
    argv = ["train", "--steps", "60", "--checkpoint-every", "1000", *TINY, "--out", str(tmp_path)]
    process = subprocess.Popen([sys.executable, "-m", "pixel_diffusion", *argv],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in stderr and "saved" in stderr
    stopped = int(latest_checkpoint(tmp_path).name.split("-")[1])
    assert 0 < stopped < 60
    assert _cli(*argv).returncode == 0
    assert latest_checkpoint(tmp_path).name == "step-0000060"


def test_a_minutes_budget_counts_the_time_before_a_resume(tmp_path):
    records = lambda: [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    train(tiny(steps=None, epochs=None, minutes=0.02, checkpoint_every=1000), tmp_path)
    first = records()
    state = load_checkpoint(latest_checkpoint(tmp_path))["state"]
    assert state["step"] == first[-1]["step"] and state["elapsed_s"] >= 1.2
    # The same budget again: spent already, so no step is taken.
    train(tiny(steps=None, epochs=None, minutes=0.02, checkpoint_every=1000), tmp_path)
    assert records() == first
    # Twice the budget: the run goes on where its clock and its learning-rate decay stopped
    # (half the budget gone: cosine at 0.5, lr = lr (0.1 + 0.9 / 2) and below).
    train(tiny(steps=None, epochs=None, minutes=0.04, checkpoint_every=1000), tmp_path)
    resumed = records()[len(first):]
    assert resumed and resumed[0]["step"] == first[-1]["step"] + 1
    assert resumed[0]["elapsed_s"] >= state["elapsed_s"]
    assert load_checkpoint(latest_checkpoint(tmp_path))["state"]["elapsed_s"] >= 2.4
    assert resumed[0]["lr"] <= 0.56 * preset("mnist").lr


def test_accelerate_launch_steps_once_per_optimiser_step(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "pixel_diffusion", "train", "--steps", "6", "--checkpoint-every", "3",
         "--out", str(tmp_path), *TINY],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # one line per optimiser step, not per process
    warmup = preset("mnist").lr / 2  # lr_warmup=2 in TINY: lr/2, then lr, then cosine
    assert records[0]["lr"] == pytest.approx(warmup)
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step-*"))] == ["step-0000003", "step-0000006"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["state"]["step"] == 6 and state["state"]["images_seen"] == 6 * 32
    assert state["optimizer"]["state"][0]["step"].item() == 6  # Adam took 6 steps, not 12


def test_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    train(tiny(steps=4, checkpoint_every=2), tmp_path)
    before = latest_checkpoint(tmp_path)
    assert before.name == "step-0000004"
    real_save = checkpoints.save_file
    calls = {"n": 0}

    def failing_save(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the EMA file of the next checkpoint
            raise OSError("disk full")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoints, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(tiny(steps=6, checkpoint_every=2), tmp_path)
    assert latest_checkpoint(tmp_path) == before
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()] == ["step-0000002", "step-0000004"]
    load_checkpoint(before)  # still whole
    monkeypatch.setattr(checkpoints, "save_file", real_save)
    train(tiny(steps=6, checkpoint_every=2), tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-0000006"


def test_a_pickled_checkpoint_is_refused_without_running_it(tmp_path):
    train(tiny(steps=2, checkpoint_every=2), tmp_path)
    target = latest_checkpoint(tmp_path) / "ema.safetensors"
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"weight": Payload()}, target)
    with pytest.raises(CheckpointError, match="is damaged: ema.safetensors has"):  # its manifest catches it first
        load_checkpoint(target.parent)
    (target.parent / checkpoints.MANIFEST).unlink()  # as a run from before manifests: the format refuses it
    with pytest.raises(CheckpointError, match="pickled objects are refused"):
        load_checkpoint(target.parent)
    with pytest.raises(ValueError, match="pickled objects are refused"):
        load_run(tmp_path)
    assert not marker.exists()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    real = Diffusion.__call__
    calls = {"n": 0}

    def sometimes_nan(self, *args, **kwargs):
        calls["n"] += 1
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(Diffusion, "__call__", sometimes_nan)
    with pytest.raises(TrainingError, match=r"became nan at step 5.*step-0000004, is kept"):
        train(tiny(steps=10, checkpoint_every=2), tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-0000004"


def test_resuming_with_other_settings_names_them(tmp_path):
    train(tiny(steps=2, checkpoint_every=2), tmp_path)
    with pytest.raises(ValueError, match=r"\(loss.weighting, lr differ\)"):
        train(tiny(steps=4, lr=0.5, **{"loss.weighting": "none"}), tmp_path)
    train(tiny(steps=4, checkpoint_every=2), tmp_path)  # a longer budget is fine
    assert latest_checkpoint(tmp_path).name == "step-0000004"


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs_two_steps_on_stand_in_data(name, tmp_path):
    config = preset(name)
    channels = 3 if config.data.channels == "3" else 1
    size = config.data.image_size or 28
    images = np.random.default_rng(0).integers(0, 256, (64, size, size, channels), dtype=np.uint8)
    np.savez(tmp_path / "stand_in.npz", images=images, labels=np.arange(64) % 2)  # 64: enough for mnist's 50 clusters
    overrides = {"data.source": str(tmp_path / "stand_in.npz"), "batch_size": 4, "accumulation": 1, "steps": 2,
                 "epochs": None, "minutes": None, "preview_every": 0, "progress": False, "lr_warmup": 0,
                 "kid_every": 0}  # KID needs feature weights; it is tested on its own below
    if config.precision == "fp16" and not torch.cuda.is_available():
        overrides["precision"] = "fp32"  # fp16 loss scaling needs a GPU
    last = train(apply_overrides(config, overrides), tmp_path / "run")
    assert last.name == "step-0000002"
    trained = load_run(tmp_path / "run")  # with the weights the preset samples with, saved by the run
    assert trained.spec.channels == channels and trained.spec.image_size == (size, size)
    assert trained.weights == config.weights


def test_kid_during_training_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    from pixel_diffusion.data import DataConfig
    from pixel_diffusion.features import train_classifier

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the reference cache lives under it
    train_classifier(DataConfig("digits"), tmp_path / "classifier", epochs=1, progress=False)
    config = tiny(steps=6, checkpoint_every=2, keep_checkpoints=1, kid_every=2, kid_images=40,
                  kid_classifier=str(tmp_path / "classifier"))
    train(config, tmp_path / "run")
    kids = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "kid" in line]
    assert [r["step"] for r in kids] == [2, 4, 6]
    best = json.loads((tmp_path / "run" / "checkpoints" / "best" / "state.json").read_text())
    lowest = min(kids, key=lambda r: r["kid"])
    assert best["step"] == lowest["step"] and best["kid"] == lowest["kid"]
    assert (tmp_path / "run" / "checkpoints" / "best" / "ema.safetensors").exists()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")] == ["step-0000006"]  # best survives pruning
    assert list((tmp_path / "home" / ".cache" / "pixel-diffusion" / "reference").glob("*.npz"))
    with pytest.raises(ValueError, match="KID during training: .*or turn it off with kid_every=0"):
        train(tiny(steps=2, kid_every=2), tmp_path / "other")


def test_sample_command_writes_npz_grid_and_pngs(tmp_path):
    run = tmp_path / "run"
    train(tiny(steps=3, conditional=True, checkpoint_every=3), run)
    assert main(["sample", "--run", str(run), "--n", "5", "--steps", "4", "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s" / "samples.npz") as saved:
        images = saved["images"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    assert (tmp_path / "s" / "grid.png").exists() and len(list((tmp_path / "s").glob("0000*.png"))) == 5
    assert main(["sample", "--run", str(run), "--n", "3", "--steps", "4", "--label", "3", "--guidance", "2",
                 "--no-png", "--out", str(tmp_path / "g")]) == 0
    assert not list((tmp_path / "g").glob("0000*.png"))
    again = main(["sample", "--run", str(run), "--n", "5", "--steps", "4", "--batch-size", "2", "--out", str(tmp_path / "t")])
    assert again == 0
    with np.load(tmp_path / "t" / "samples.npz") as saved:
        assert np.array_equal(saved["images"], images)  # one seed, one image, whatever the batch


def test_a_run_on_labels_samples_its_classes_in_turn_at_its_own_guidance(tmp_path):
    run = tmp_path / "run"
    train(tiny(steps=3, conditional=True, guidance=2.0, checkpoint_every=3), run)
    model = json.loads((latest_checkpoint(run) / "model.json").read_text())
    assert model["guidance"] == 2.0 and model["num_classes"] == 10

    def drawn(*options):
        out = tmp_path / "-".join(options or ("default",))
        assert main(["sample", "--run", str(run), "--n", "12", "--steps", "3", "--no-progress", "--out", str(out), *options]) == 0
        with np.load(out / "samples.npz") as saved:
            return saved["images"], [read_parameters(out / f"{k:05d}.png") for k in range(12)]

    images, made = drawn()
    assert [m["drawn_label"] for m in made] == [k % 10 for k in range(12)]  # every class in turn
    assert {m["guidance"] for m in made} == {2.0}  # the run's own scale
    explicit, _ = drawn("--guidance", "2")
    assert np.array_equal(images, explicit)
    unguided, made_1 = drawn("--guidance", "1")
    assert {m["guidance"] for m in made_1} == {1.0} and not np.array_equal(images, unguided)
    threes, _ = drawn("--label", "3")
    assert np.array_equal(threes[3], images[3]) and not np.array_equal(threes[4], images[4])  # one seed, one image
    # A model with no labels has nothing to guide: its own scale is 1 whatever the config said.
    train(tiny(steps=1, guidance=3.0, clusters=0), tmp_path / "plain")
    assert json.loads((latest_checkpoint(tmp_path / "plain") / "model.json").read_text())["guidance"] == 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["sample", "--run", ".", "--guidance", "-1"], "expected a guidance scale in [0, 20]"),
        (["train", "--steps", "-3"], "expected a positive integer"),
        (["train", "colour=blue"], "unknown config field 'colour'"),
        (["train", "lr=fast"], "lr: expected a number"),
        (["train", "--preset", "keras-flowers", "--steps", "1"], "has no built-in data; pass --data"),
        (["train", "--data", "/no/such/folder", "--steps", "1"], "does not exist"),
        (["sample", "--run", "/no/such/run"], "is not a run directory"),
        (["sample", "--run", ".", "--sampler", "plms"], "is not a run directory"),
    ],
)
def test_command_line_errors_exit_2_with_one_line(argv, message, tmp_path):
    result = _cli(*argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sample_errors_on_a_run_without_checkpoint_or_labels(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert main(["sample", "--run", str(tmp_path / "empty")]) == 2
    assert "has no checkpoint yet" in capsys.readouterr().err
    train(tiny(steps=2, checkpoint_every=2), tmp_path / "run")
    assert main(["sample", "--run", str(tmp_path / "run"), "--sampler", "plms"]) == 2
    assert "unknown sampler 'plms'" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "run"), "--label", "1"]) == 2
    assert "trained without labels" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "run"), "--sampler", "ddim", "--sigma-max", "80"]) == 2  # ddim's spacing: uniform
    assert "sigma_max applies to 'karras' and 'log-snr'" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "run"), "--n", "2", "--steps", "3", "--spacing", "karras",
                 "--sigma-max", "inf", "--no-png", "--out", str(tmp_path / "s")]) == 0
    assert main(["sample", "--run", str(tmp_path / "run"), "--sampler", "heun", "--eta", "0.5"]) == 2
    assert "eta is an option of the ddim, euler-ancestral, dpmpp-2m, dpmpp-2m-sde, dpmpp-3m" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "run"), "--sampler", "ddim", "--eta", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "argument --eta: expected a number in [0, 1], got '1.5'" in err and len(err.strip().splitlines()) == 1
    assert main(["sample", "--run", str(tmp_path / "run"), "--n", "2", "--steps", "3", "--sampler", "dpmpp-2m-sde",
                 "--spacing", "karras", "--eta", "0.5", "--no-png", "--out", str(tmp_path / "e")]) == 0
    for flags, out in (([], "clipped"), (["--no-clip"], "unclipped")):
        assert main(["sample", "--run", str(tmp_path / "run"), "--n", "4", "--steps", "3", "--sampler", "ddim", "--no-png",
                     "--out", str(tmp_path / out), *flags]) == 0
    with np.load(tmp_path / "clipped" / "samples.npz") as a, np.load(tmp_path / "unclipped" / "samples.npz") as b:
        assert not np.array_equal(a["images"], b["images"])  # the barely trained net's estimates leave the range
    assert main(["train", "--resume", "--out", str(tmp_path / "fresh"), *TINY]) == 2
    assert "no checkpoint to continue from" in capsys.readouterr().err


def test_overrides_and_config_files(tmp_path):
    config = apply_overrides(preset("mnist"), ["lr=3e-4", "data.image_size=32", "loss.weighting=p2", "grad_clip=null", "betas=[0.9, 0.99]"])
    assert config.lr == 3e-4 and config.data.image_size == 32 and config.loss.weighting == "p2"
    assert config.grad_clip is None and config.betas == (0.9, 0.99)
    (tmp_path / "c.toml").write_text('lr = 0.01\nbatch_size = 32\n[data]\nflip = false\n')
    config = apply_overrides(preset("keras-flowers"), read_config_file(tmp_path / "c.toml"))
    assert config.lr == 0.01 and config.batch_size == 32 and not config.data.flip
    assert config.data.image_size == 64 and config.data.normalise == "standardise"  # the rest of [data] is kept
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="not key=value"):
        apply_overrides(config, ["lr"])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        apply_overrides(config, ["batch_size=0"])
    with pytest.raises(ValueError, match="expected one of auto, fp32, bf16, fp16"):
        apply_overrides(config, ["precision=fp8"])


def test_a_config_file_s_quoted_number_is_read_and_a_wrong_kind_is_one_line(tmp_path):
    (tmp_path / "c.toml").write_text('lr = "3e-4"\nsteps = "100"\nema_profiles = [0.05, 0.1]\n[data]\nflip = "false"\n'
                                     '[loss]\nkind = "flow-matching"\nlogit_normal_std = "0.8"\n')
    config = apply_overrides(preset("mnist-flow"), read_config_file(tmp_path / "c.toml"))
    assert config.lr == 3e-4 and config.steps == 100 and config.ema_profiles == (0.05, 0.1) and config.data.flip is False
    assert config.loss.kind == "flow-matching" and config.loss.logit_normal_std == 0.8
    for text, says in (('lr = "fast"', "lr: expected a number, got 'fast'"), ("lr = [1]", "lr: expected a number, got [1]"),
                       ('steps = 1.5', "steps: expected an integer or null, got 1.5"), ("betas = 0.9", "betas: expected a list")):
        (tmp_path / "bad.toml").write_text(text + "\n")
        with pytest.raises(ValueError, match=f"^{re.escape(says)}"):
            apply_overrides(preset("mnist"), read_config_file(tmp_path / "bad.toml"))


def test_speed_levers_leave_the_training_the_same(tmp_path):
    """channels_last and the fused optimiser change memory layout and kernels, not the
    mathematics: 6 steps end at the same weights (to float rounding) with the same names."""
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    train(tiny(steps=6), plain)
    train(tiny(steps=6, channels_last=True, fused_optimizer=True, threads=1), fast)
    a, b = _weights(plain), _weights(fast)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4, msg=name)  # steps move weights ~1e-2
    records = [json.loads(line) for line in (fast / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0


@pytest.mark.slow
def test_compiled_network_trains_and_saves_plain_names(tmp_path):
    train(tiny(steps=4, compile=True), tmp_path)
    names = set(load_file(latest_checkpoint(tmp_path) / "model.safetensors"))
    assert names and not any("_orig_mod" in n for n in names)
    load_run(tmp_path)  # loads into an uncompiled network


def test_compile_without_a_cpu_compiler_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    env["PATH"] = str(Path(sys.executable).parent)  # python, and no g++ or clang++
    result = subprocess.run([sys.executable, "-m", "pixel_diffusion", "train", "--steps", "1", "--out", str(tmp_path),
                             *TINY, "compile=true"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "compile=true on a CPU needs a C++ compiler" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert latest_checkpoint(tmp_path) is None


def test_threads_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        tiny(threads=0)


def test_bf16_sampling_stays_close_to_fp32(tmp_path):
    train(tiny(steps=30, lr=3e-3), tmp_path)
    run = load_run(tmp_path)
    full = run.sample(16, steps=10, progress=False).astype(float)
    half = run.sample(16, steps=10, progress=False, precision="bf16").astype(float)
    # bf16 keeps ~3 significant digits in the network; the walk's arithmetic stays float32.
    assert np.abs(full - half).mean() < 3.0 and not np.array_equal(full, half)
    with pytest.raises(ValueError, match="unknown sampling precision"):
        run.sample(1, steps=2, progress=False, precision="fp8")


def test_one_trainer_per_run_and_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pixel_diffusion.checkpoints import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        command = ["train", "--preset", "mnist", "--data", "digits", "--steps", "1", "--out", str(run), "--no-progress",
                   *TINY]
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"is being trained by process {holder.pid} on " in err and " since " in err and err.count("\n") == 1
        assert {p.name for p in run.iterdir()} <= {".lock", ".trainer"}  # refused before anything was written
    finally:
        holder.kill()  # as a crash would: no clean release of the holder record
        holder.wait()
    assert main(command) == 0
    assert f"taking over the lock left by process {holder.pid}" in capsys.readouterr().out
    assert latest_checkpoint(run) is not None and not (run / ".trainer").exists()  # a clean exit leaves no record


def test_a_run_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "--preset", "mnist", "--data", "digits", "--steps", "1", "--out", str(blocker / "run"),
                 "--no-progress", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"cannot train into {blocker / 'run'}" in err and err.count("\n") == 1
