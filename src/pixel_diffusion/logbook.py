"""A run's log: one JSON line per record in metrics.jsonl, mirrored to TensorBoard when installed.

`LOGGED` is the registry of what training logs: each key's title and axis scale, which `show
curves` draws and TensorBoard receives. To log a new metric in training, compute it where
training does (the loop's record, or an evaluation such as KID), write it with `RunLog.write`,
and add its entry here.
"""

from __future__ import annotations

import json
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


def read_records(run_dir: Path) -> list[dict]:
    """Every record of a run's metrics.jsonl, in order ([] when there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLog:
    """Appends records to RUN/metrics.jsonl and, with the tensorboard package, to RUN/tensorboard.
    Only the main process of a run writes (`enabled`)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._writer = None

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
        writer = self._tensorboard()
        if writer is not None:
            for key in LOGGED:
                if key in record:
                    writer.add_scalar(f"train/{key}", record[key], record["step"])
            writer.flush()

    def _tensorboard(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._writer = False
            else:
                self._writer = SummaryWriter(str(self.path.parent / "tensorboard"))
        return self._writer or None

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None
