"""Runs that cannot be damaged: checked checkpoints, falling back past a damaged one, a full disk,
non-finite steps skipped, skipped inputs listed, and fuzzed config files and image bytes."""

import json
import shutil
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
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.logbook import read_records
from pixel_diffusion.objectives import Diffusion
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import load_run
from pixel_diffusion.training import TrainingError, train

TINY = ["data.source=digits", 'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
        "batch_size=32", "log_every=1", "preview_every=0", "progress=false", "precision=fp32", "lr_warmup=2", "clusters=0"]


def tiny(**extra):
    return apply_overrides(apply_overrides(preset("mnist"), TINY), extra)


def _weights(folder: Path) -> dict:
    return {name: load_file(folder / f"{name}.safetensors") for name in ("model", "ema")}


def _same(a: dict, b: dict) -> bool:
    return all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k]) for k in a[n]) for n in a)


def _flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


# ---- manifests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """A run trained 6 steps without a fault, checkpoints at 2, 4 and 6."""
    run = tmp_path_factory.mktemp("whole") / "run"
    train(tiny(steps=6, checkpoint_every=2), run)
    return run


def test_every_checkpoint_carries_a_manifest_of_its_files(whole):
    for folder in checkpoints.list_checkpoints(whole):
        listed = json.loads((folder / checkpoints.MANIFEST).read_text())["files"]
        assert set(listed) == {p.name for p in folder.iterdir()} - {checkpoints.MANIFEST}
        checkpoints.verify_checkpoint(folder)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    from pixel_diffusion.data import DataConfig
    from pixel_diffusion.features import train_classifier

    folder = tmp_path_factory.mktemp("classifier") / "digits"
    train_classifier(DataConfig("digits"), folder, epochs=1, progress=False)
    return folder


def test_a_flipped_byte_is_caught_by_every_command_that_reads_the_file(whole, classifier, tmp_path, capsys):
    # Loading for training reads every file; sampling, evaluating and exporting read the EMA
    # weights, state.json and model.json, and hash only those (the others' sizes are checked).
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    newest = latest_checkpoint(run)
    read_to_sample = {"ema.safetensors", "state.json", "model.json"}
    for file in sorted(p for p in newest.iterdir() if p.name != checkpoints.MANIFEST):
        original = file.read_bytes()
        _flip_byte(file)
        with pytest.raises(CheckpointError, match=f"is damaged: {file.name} differs"):
            load_checkpoint(newest)
        for command in (["sample", "--n", "1", "--steps", "2", "--no-progress", "--out", str(tmp_path / "s" / file.name)],
                        ["show", "grid", "--n", "1", "--steps", "2", "--out", str(tmp_path / f"{file.name}.png")],
                        ["evaluate", "--n", "4", "--steps", "2", "--no-progress", "--classifier", str(classifier),
                         "--cache", str(tmp_path / "cache")],
                        ["export", "--out", str(tmp_path / "exported" / file.name)]):
            capsys.readouterr()
            status = main([command[0], "--run", str(run), *command[1:]])
            err = capsys.readouterr().err
            if file.name not in read_to_sample:  # (this patch network cannot be exported to diffusers at all)
                assert "differs from its manifest" not in err and (status == 0 or command[0] == "export"), (file.name, err)
                continue
            assert status == 2, (file.name, command[0])
            assert f"{file.name} differs from its manifest's SHA-256" in err and err.count("\n") == 1
            assert "the newest intact checkpoint is step-0000004 (--checkpoint 4)" in err
        file.write_bytes(original)
    load_checkpoint(newest)


def test_resuming_past_a_truncated_newest_checkpoint_ends_bit_identical(whole, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    model = latest_checkpoint(run) / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])  # cut short, as a crash or a full disk would
    capsys.readouterr()
    train(tiny(steps=6, checkpoint_every=2), run)  # resumes from step 4, trains 5 and 6 again
    assert "not resuming from step-0000006" in capsys.readouterr().out
    assert _same(_weights(latest_checkpoint(run)), _weights(latest_checkpoint(whole)))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_run_whose_checkpoints_are_all_damaged_says_so(whole, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    for folder in checkpoints.list_checkpoints(run):
        _flip_byte(folder / "ema.safetensors")
    with pytest.raises(CheckpointError, match="every checkpoint is damaged"):
        train(tiny(steps=6, checkpoint_every=2), run)
    with pytest.raises(CheckpointError, match="the run has no intact checkpoint"):
        load_run(run)


# ---- a full disk ------------------------------------------------------------------------------------


def test_a_full_disk_keeps_the_last_checkpoint_and_says_what_was_needed(whole, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    one = sum(p.stat().st_size for p in latest_checkpoint(whole).iterdir())
    size_kb = (one * 3 // 2) // 1024 + 64  # room for one checkpoint and the run's small files, not two
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here ({mounted.stderr.strip()[:80]})")
    try:
        run = mount / "run"
        capsys.readouterr()
        assert main(["train", "--preset", "mnist", "--steps", "6", "--checkpoint-every", "2", "--out", str(run),
                     "--no-progress", *TINY]) == 2
        err = capsys.readouterr().err
        assert "no space left on the disk of" in err and "MB are free; step-0000002 is kept, intact" in err
        assert err.count("\n") == 1
        assert latest_checkpoint(run).name == "step-0000002" and not list((run / "checkpoints").glob(".step-*"))
        load_checkpoint(latest_checkpoint(run))  # whole, manifest and all
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ---- writes that fail ---------------------------------------------------------------------------


def test_a_preview_that_cannot_be_written_keeps_the_steps_taken_and_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "samples").write_text("a file where the previews' folder goes")
    command = ["train", "--preset", "mnist", "--steps", "8", "--checkpoint-every", "100", "--out", str(run),
               "--no-progress", *[o for o in TINY if not o.startswith("preview_every")], "preview_every=3",
               "preview_images=4", "preview_steps=2"]
    capsys.readouterr()
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a write failed at step 3 (" in err and "checkpoint step-0000003 is kept" in err
    assert latest_checkpoint(run).name == "step-0000003"  # saved on the way out: no step lost
    load_checkpoint(latest_checkpoint(run))
    (run / "samples").unlink()  # the place mended, the same command goes on from there
    assert main(command) == 0
    assert latest_checkpoint(run).name == "step-0000008"
    assert [r["step"] for r in read_records(run) if "loss" in r] == list(range(1, 9))


@pytest.mark.parametrize("command", [
    ["sample", "--n", "2", "--steps", "2", "--no-progress", "--out", "{blocked}"],
    ["show", "trajectory", "--steps", "2", "--out", "{blocked}/picture.png"],
    ["evaluate", "--n", "8", "--steps", "2", "--no-progress", "--out", "{blocked}/metrics.json"],
])
def test_an_output_that_cannot_be_written_is_one_line(whole, tmp_path, capsys, command):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    blocked = str(blocker / "out")
    capsys.readouterr()
    assert main([*[a.format(blocked=blocked) for a in command], "--run", str(whole)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(blocker) in err and err.startswith(f"pixel-diffusion {command[0]}: error: ")


def test_a_metrics_log_that_cannot_be_read_is_one_line_and_touches_no_checkpoint(whole, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()  # a folder where the log goes
    before = {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    capsys.readouterr()
    assert main(["train", "--preset", "mnist", "--steps", "8", "--checkpoint-every", "2", "--out", str(run),
                 "--no-progress", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.jsonl" in err
    assert {p.name: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == before


# ---- non-finite steps ------------------------------------------------------------------------------


def _nan_at(monkeypatch, calls: set[int], gradients: bool = False):
    real, count = Diffusion.__call__, {"n": 0}

    def faulty(self, denoiser, *args, **kwargs):
        count["n"] += 1
        loss = real(self, denoiser, *args, **kwargs)
        if count["n"] not in calls:
            return loss
        if gradients:  # a finite loss whose gradient is not: d sqrt(u) / du at u = 0 times du/dp = 0
            return loss + torch.sqrt(0 * next(denoiser.parameters()).sum())
        return loss * float("nan")

    monkeypatch.setattr(Diffusion, "__call__", faulty)


def test_skip_nonfinite_skips_such_steps_and_logs_them(tmp_path, monkeypatch):
    _nan_at(monkeypatch, {3, 7})
    train(tiny(steps=8, checkpoint_every=4, skip_nonfinite=1), tmp_path / "loss")
    records = [json.loads(line) for line in (tmp_path / "loss" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "skipped" in r] == [3, 7]
    assert "the loss became nan; step skipped" in records[2]["skipped"]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    assert latest_checkpoint(tmp_path / "loss").name == "step-0000008"


def test_non_finite_gradients_are_skipped_and_too_many_in_a_row_stop(tmp_path, monkeypatch):
    _nan_at(monkeypatch, {2}, gradients=True)
    train(tiny(steps=3, checkpoint_every=3, skip_nonfinite=1), tmp_path / "grads")
    skipped = [json.loads(line) for line in (tmp_path / "grads" / "metrics.jsonl").read_text().splitlines()
               if "skipped" in line]
    assert len(skipped) == 1 and "the gradients became non-finite" in skipped[0]["skipped"]
    for name, value in load_checkpoint(latest_checkpoint(tmp_path / "grads"))["model"].items():
        assert bool(value.isfinite().all()), name
    _nan_at(monkeypatch, {3, 4, 5})
    with pytest.raises(TrainingError, match=r"at step 5 \(3 steps in a row\); training stopped.*step-0000004, is kept"):  # skipped steps count
        train(tiny(steps=8, checkpoint_every=2, skip_nonfinite=2), tmp_path / "stops")


def test_a_skipped_step_changes_no_weight_and_no_optimiser_count(tmp_path, monkeypatch):
    # A fused AdamW skips the update on the device (found_inf); an unfused one is told before it steps.
    for fused in (True, False):
        run = tmp_path / f"fused-{fused}"
        _nan_at(monkeypatch, {3})
        train(tiny(steps=3, checkpoint_every=1, keep_checkpoints=5, skip_nonfinite=1, fused_optimizer=fused), run)
        two, three = (run / "checkpoints" / f"step-000000{k}" for k in (2, 3))
        assert torch.equal(*(torch.cat([t.flatten() for t in load_file(f / "model.safetensors").values()]) for f in (two, three)))
        steps = [load_checkpoint(f)["optimizer"]["state"][0]["step"] for f in (two, three)]
        assert [float(s) for s in steps] == [2.0, 2.0], fused
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "skipped" in r] == [3]


def test_a_non_finite_step_read_late_still_stops_before_the_next_checkpoint(tmp_path, monkeypatch):
    # Verdicts are read once per log window (log_every=10 here) and before every checkpoint.
    _nan_at(monkeypatch, {3})
    with pytest.raises(TrainingError, match=r"the loss became nan at step 3; training stopped.*step-0000002, is kept"):
        train(tiny(steps=8, checkpoint_every=2, log_every=10), tmp_path)
    assert latest_checkpoint(tmp_path).name == "step-0000002"


# ---- messages -----------------------------------------------------------------------------------------


def test_skipped_inputs_are_one_line_and_all_listed_in_the_run(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{k:02d}.png")
    for k in range(7):
        (folder / f"broken-{k}.png").write_bytes(b"not a png")
    done = subprocess.run([sys.executable, "-m", "pixel_diffusion", "train", "--preset", "mnist", "--data", str(folder),
                           "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress", *TINY[1:]],
                          capture_output=True, text=True, timeout=300)  # as a user sees it, not as pytest records it
    assert done.returncode == 0, done.stderr
    err = done.stderr
    warning = [line for line in err.splitlines() if "skipped" in line]
    assert len(warning) == 1 and warning[0].startswith("pixel-diffusion train: warning: skipped 7 of 47 items: ")
    assert "; and 2 more" in warning[0] and ".py:" not in err
    listed = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0].rsplit("/", 1)[-1] for line in listed) == [f"broken-{k}.png" for k in range(7)]


# ---- fuzzing ---------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pixel_diffusion.sources import read_image_file  # noqa: E402

RELEASE = Path(__file__).parent / "fixtures" / "release-0.1.0"
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
BOUNDED = settings(max_examples=100, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def release_copy(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(RELEASE, run)
    return run


def _config_shapes():
    """config.json as a user or a crash might leave it: any JSON, or the real one with a field of
    `model` or `model.network` (or the whole section) replaced by any JSON."""
    saved = json.loads((RELEASE / "config.json").read_text())
    fields = [("model", k) for k in saved["model"]] + [("network", k) for k in saved["model"]["network"]]

    def replaced(choice, value):
        config = json.loads(json.dumps(saved))
        section, name = choice
        (config["model"] if section == "model" else config["model"]["network"])[name] = value
        return config

    return JSON | st.builds(replaced, st.sampled_from(fields), JSON) | st.builds(lambda v: {**saved, "model": v}, JSON)


@BOUNDED
@given(config=_config_shapes())
def test_any_config_json_loads_or_says_what_is_wrong_in_one_line(release_copy, config):
    (release_copy / "config.json").write_text(json.dumps(config))
    try:
        load_run(release_copy)
    except ValueError as error:  # CheckpointError included: what the CLI prints, exit 2
        assert str(error) and "\n" not in str(error)


@pytest.mark.parametrize("field", ["blocks_per_level", "mid_blocks"])
def test_a_network_far_larger_than_its_weights_is_refused_before_it_is_built(release_copy, field):
    config = json.loads((RELEASE / "config.json").read_text())
    config["model"]["network"][field] = 10**6  # a million blocks: minutes to build, even without memory
    (release_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"names \d{7} blocks or more, but its weights hold only \d+ tensors$"):
        load_run(release_copy)


@pytest.fixture(scope="module")
def png_bytes():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


@BOUNDED
@given(data=st.data())
def test_any_image_bytes_decode_or_are_refused_with_a_reason(tmp_path_factory, png_bytes, data):
    raw = data.draw(st.binary(max_size=200) | st.builds(
        lambda at, value, cut: (png_bytes[:at] + bytes([value]) + png_bytes[at + 1:])[:cut],
        st.integers(0, len(png_bytes) - 1), st.integers(0, 255), st.integers(1, len(png_bytes))))
    path = tmp_path_factory.mktemp("bytes") / "image.png"
    path.write_bytes(raw)
    try:
        image = read_image_file(path, "white", 10**6)
    except ValueError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] in (1, 3)


def test_a_second_trainer_is_refused_and_the_first_trains_on_unharmed(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--preset", "mnist", "--steps", "300", "--checkpoint-every", "20", "--out", str(run), "--no-progress",
            *TINY]
    first = subprocess.Popen([sys.executable, "-m", "pixel_diffusion", *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"is being trained by process {first.pid} on " in err and err.count("\n") == 1
        while latest_checkpoint(run) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert main(["sample", "--run", str(run), "--n", "2", "--steps", "2", "--no-progress",
                     "--out", str(tmp_path / "meanwhile")]) == 0  # readers take no lock
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert [p.name for p in checkpoints.list_checkpoints(run)] == ["step-0000260", "step-0000280", "step-0000300"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 301))
