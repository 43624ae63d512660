"""A run's log: one JSON line per record in metrics.jsonl, the source of truth, mirrored to the
experiment trackers the run reports to (`report_to`: TensorBoard, W&B, MLflow, through accelerate).

`LOGGED` is the registry of what training logs: each key's title and axis scale, which `show
curves` draws and the trackers receive. To log a new metric in training, compute it where
training does (the loop's record, or an evaluation such as KID), write it with `RunLog.write`,
and add its entry here. `TRACKERS` is the registry of trackers: to add one, name the package it
needs and how accelerate's tracker for it is made.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoints import atomic_write_text

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class Logged:
    """How a logged metric is shown: its title, its axis scale, whether as points (sparse)."""

    title: str
    scale: str = "linear"
    points: bool = False
    curve: bool = True  # drawn by `show curves`


LOGGED: dict[str, Logged] = {
    "loss": Logged("training loss", "log"),
    "lr": Logged("learning rate"),
    "grad_norm": Logged("gradient norm (before clipping)", "log"),
    "images_per_s": Logged("images per second", curve=False),
    "kid": Logged("KID", points=True),
}


@dataclass(frozen=True)
class Tracker:
    """An experiment tracker a run can report to: the package it needs and its accelerate tracker
    for a run folder (where it writes, and under which names)."""

    package: str
    make: Callable[[Path], object]


def _tensorboard(run_dir: Path):
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker("tensorboard", run_dir)  # RUN/tensorboard


def _wandb(run_dir: Path):  # project from $WANDB_PROJECT; offline with WANDB_MODE=offline; files in RUN/wandb
    from accelerate.tracking import WandBTracker

    return WandBTracker(os.environ.get("WANDB_PROJECT", "pixel-diffusion"), name=run_dir.name, dir=str(run_dir))


def _mlflow(run_dir: Path):  # where from $MLFLOW_TRACKING_URI (MLflow's default otherwise)
    from accelerate.tracking import MLflowTracker

    return MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", "pixel-diffusion"), run_name=run_dir.name)


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker("tensorboard", _tensorboard),
    "wandb": Tracker("wandb", _wandb),
    "mlflow": Tracker("mlflow", _mlflow),
}


def check_trackers(names) -> None:
    """One line for a tracker that is unknown or whose package is missing, before training starts."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {name!r}; expected some of {', '.join(TRACKERS)} (or none)")
        package = TRACKERS[name].package
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"report_to {name} needs the {package} package: pip install {package}")


def make_trackers(names, run_dir: Path) -> list:
    """accelerate's trackers for `names`, writing beside the run (`Accelerator(log_with=...)`)."""
    check_trackers(names)
    return [TRACKERS[name].make(Path(run_dir)) for name in names]


def tracker_config(config: dict, prefix: str = "") -> dict:
    """A nested config as flat scalars (dotted keys), as every tracker stores a run's parameters."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(tracker_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return flat


def read_records(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order ([] when there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Appends records to RUN/metrics.jsonl and passes the LOGGED values on to the trackers of
    `accelerator` (`Accelerator(log_with=make_trackers(...))`), which `close` ends. Only the main
    process of a run writes (`enabled`)."""

    def __init__(self, run_dir: Path, enabled: bool = True, accelerator=None):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.accelerator = accelerator if accelerator is not None and accelerator.log_with else None

    def truncate(self, step: int) -> None:
        """Drop records past the step a run resumes from (they will be logged again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        """One record: a dict with `step` and any of the LOGGED keys (others are kept, not plotted)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        values = {f"train/{key}": record[key] for key in LOGGED if key in record}
        if self.accelerator is not None and values:
            try:
                self.accelerator.log(values, step=record["step"])
            except Exception as error:  # the tracker's own (its server, its store): training goes on without it
                said = (str(error).strip().splitlines() or [type(error).__name__])[0]
                warnings.warn(f"the trackers stopped taking metrics at step {record['step']} ({said}); training goes on "
                              f"and {self.path} keeps every record", stacklevel=2)
                self.close(quietly=True)

    def close(self, quietly: bool = False) -> None:
        """End the trackers' runs (finished and flushed); a tracker that cannot is a warning, or
        nothing `quietly` (after one already said it failed)."""
        if self.accelerator is not None:
            accelerator, self.accelerator = self.accelerator, None
            try:
                accelerator.end_training()
            except Exception as error:
                said = (str(error).strip().splitlines() or [type(error).__name__])[0]
                if not quietly:
                    warnings.warn(f"the trackers could not finish their runs ({said}); {self.path} keeps every record",
                                  stacklevel=2)
