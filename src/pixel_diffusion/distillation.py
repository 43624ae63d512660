"""One- and two-step generation: a trained run distilled into a consistency model.

    config = student_config("runs/cifar10-conditional", minutes=15)
    train(config, Path("runs/cifar10-consistency"))      # a run like any other: resumes, exports
    load_run("runs/cifar10-consistency").sample(64)       # two evaluations an image

The student is the teacher's network, started from the teacher's weights and trained on the
teacher's data by the consistency objective (objectives.Consistency): by default consistency
distillation along the teacher's probability-flow ODE, with the teacher's own guidance scale folded
in, so that a class-conditional student draws in one evaluation a step; `target="data"` tunes
without the teacher (consistency training from its weights, as ECT does). Its model description
says it is a consistency model (`ModelSpec.distilled`) and its walk is the multistep consistency
sampler at the intermediate noise levels measured best (docs/samplers.md).
"""

from __future__ import annotations

from pathlib import Path

from . import checkpoints
from .config import TrainConfig, apply_overrides
from .runs import find_checkpoint, load_run

# The student's walk: two steps, the second from sigma/alpha 2 (the best of 0.4, 0.821 and 2 on CIFAR-10, docs/distillation.md).
STUDENT_WALK = {"sampler": "consistency", "steps": 2, "sigmas": [80.0, 2.0]}
# What the student changes of its teacher's training config besides the objective.
STUDENT = {"lr": 3e-4, "lr_warmup": 0, "lr_decay": "constant", "ema_profiles": [0.05], "weights": "ema-0.050",
           "ema_snapshot_every": 0, "guidance": 1.0, "kid_every": 0, "preview_sampler": None, "preview_steps": None,
           "walk": STUDENT_WALK, "steps": 2000, "epochs": None, "minutes": None}


def student_config(teacher: str | Path, *, target: str = "teacher", guidance: float | None = None,
                   overrides: dict | list[str] | None = None) -> TrainConfig:
    """The training config of a consistency student of `teacher` (a run folder or one of its
    checkpoint folders): the teacher's own config (data, network, schedule, batch) with the
    consistency objective, its weights as the start (`init`), and the student's defaults
    (`STUDENT`), then `overrides` (KEY=VALUE strings or a dict, as `train` takes them)."""
    folder = find_checkpoint(Path(teacher), "latest")
    trained = load_run(folder)
    if trained.spec.distilled is not None:
        raise ValueError(f"{teacher} is a consistency model already; distil the diffusion run it came from")
    if not trained.training:
        raise ValueError(f"{teacher} has no training config (a diffusers folder or a checkpoint copied on its own); "
                         "distil a run folder trained here")
    base = TrainConfig.from_dict(trained.training)
    scale = trained.spec.guidance if guidance is None else guidance
    objective = {"loss.kind": "consistency", "loss.target": target, "loss.guidance": scale,
                 "loss.teacher": str(folder) if target == "teacher" else ""}
    config = apply_overrides(base, {**STUDENT, **objective, "init": str(folder), "preset": f"{base.preset}-consistency"})
    return apply_overrides(config, overrides or {})


def teacher_of(run_dir: Path) -> Path | None:
    """The checkpoint folder a student was distilled from (None for a run that is not a student)."""
    saved = checkpoints.read_json(Path(run_dir) / "config.json")
    init = saved.get("train", {}).get("init") if isinstance(saved, dict) else None
    return Path(init) if init else None
