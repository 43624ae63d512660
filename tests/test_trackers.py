"""Experiment trackers (`report_to`): what a run logs to metrics.jsonl reaches TensorBoard, MLflow
and W&B through accelerate, read back from the files each writes (MLflow's local file store,
W&B's offline mode, TensorBoard's event files), never a mock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixel_diffusion.cli import build_parser
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.logbook import TRACKERS, check_trackers, read_records
from pixel_diffusion.presets import preset
from pixel_diffusion.training import train
from test_training import TINY


def _train(run: Path, *trackers: str) -> list[dict]:
    config = apply_overrides(apply_overrides(preset("mnist"), TINY), {"steps": 4, "log_every": 1, "report_to": list(trackers)})
    train(config, run)
    return [r for r in read_records(run) if "loss" in r]


def test_mlflow_file_store_holds_the_logged_losses_and_the_config(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "trackers-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this switch
    records = _train(tmp_path / "run", "mlflow")
    client = mlflow.tracking.MlflowClient(store)
    experiment = client.get_experiment_by_name("trackers-test")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert [m.step for m in history] == [r["step"] for r in records]
    assert [m.value for m in history] == pytest.approx([r["loss"] for r in records])
    assert float(found.data.params["lr"]) == pytest.approx(apply_overrides(preset("mnist"), TINY).lr)


def test_wandb_offline_run_holds_every_logged_loss_and_the_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    records = _train(tmp_path / "run", "wandb")
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    # The offline run's transaction log (what `wandb sync` uploads): protobuf records, uncompressed,
    # each logged value held as its key and its JSON text.
    raw = log.read_bytes()
    assert b"train/loss" in raw and b"data.source" in raw
    for record in records:
        assert json.dumps(record["loss"]).encode() in raw, record


def test_tensorboard_events_hold_every_logged_loss(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _train(tmp_path / "run", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [r["step"] for r in records]
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in records], rel=1e-6)  # stored as float32


def test_unknown_or_missing_trackers_are_one_line_before_training(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="report_to names trackers among tensorboard, wandb, mlflow; got"):
        apply_overrides(preset("mnist"), {"report_to": ["comet"]})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"^report_to wandb needs the wandb package: pip install wandb$"):
        check_trackers(["wandb"])
    with pytest.raises(ValueError, match="needs the wandb package"):
        _train(tmp_path / "run", "wandb")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_command_line_offers_every_tracker():
    parser = build_parser()
    train = next(a for a in parser._actions if a.dest == "command" or hasattr(a, "choices") and isinstance(a.choices, dict))
    option = next(a for a in train.choices["train"]._actions if a.dest == "report_to")
    assert set(option.choices) == {*TRACKERS, "none"}


def test_a_tracker_that_fails_mid_run_is_one_warning_and_the_log_goes_on(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import shutil
    import warnings

    from pixel_diffusion.logbook import RunLog
    from pixel_diffusion.training import make_engine, start_trackers

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = apply_overrides(apply_overrides(preset("mnist"), TINY), {"report_to": ["mlflow"]})
    run = tmp_path / "run"
    accelerator = make_engine(config, run)
    assert accelerator.log_with  # the real MLflow tracker, on its file store
    start_trackers(accelerator, config)
    log = RunLog(run, accelerator=accelerator)
    log.write({"step": 1, "loss": 0.5})
    shutil.rmtree(store)  # the store goes away mid-run, as a server would
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        log.write({"step": 2, "loss": 0.25})
        log.write({"step": 3, "loss": 0.125})
        log.close()
    assert len(said) == 1 and "the trackers stopped taking metrics at step 2" in str(said[0].message)
    assert [r["step"] for r in read_records(run)] == [1, 2, 3]  # metrics.jsonl keeps every record
