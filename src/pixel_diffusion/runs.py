"""Trained models on disk: what a model is, loading one from a run, and sampling from it.

    run = load_run("runs/mnist", checkpoint="best", weights="ema", device="cpu")
    images = run.sample(64, seed=0)                     # uint8 (64, H, W, C), along the run's own walk
    images = run.sample(64, sampler="ddim", steps=50)   # another walk: Walk fields or sampler options

`ModelSpec` (spec.py) is the typed description of a trained model: its network, schedule,
parameterisation, noise input, normalisation, image shape, classes and label prior. Training
writes it into config.json and, as model.json, into every checkpoint folder, so a checkpoint
folder copied anywhere loads on its own. Runs from before model.json load from config.json.
Everything that uses a trained model (pictures, editing, metrics commands, benchmarks) goes
through `load_run` and `Run`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoints, diffusers_io, ema
from .checkpoints import CheckpointError
from .data import DataConfig, load_images
from .diffusion import Denoiser, Guided
from .networks import build_network, config_from_dict, summary
from .samplers import Walk, sample
from .spec import ModelSpec

MODEL_FILE = "model.json"  # the model description inside a checkpoint folder
WEIGHTS = ("ema", "model")


@torch.no_grad()
def sample_images(
    denoiser, spec: ModelSpec, n: int, walk: Walk | None = None, *, seed: int = 0, labels: torch.Tensor | None = None,
    batch_size: int = 64, progress: bool = True, device: str | torch.device = "cpu", precision: str = "fp32",
    report: dict | None = None, callback=None,
) -> np.ndarray:
    """n uint8 images (n, H, W, C) from a model's denoiser along `walk` (default: the model's own,
    `spec.walk`), clipped to the data range. With precision "bf16" the network runs under bf16
    autocast; the sampler's arithmetic stays float32. Unless `labels` name them, a model on labels
    draws its classes in turn and one on clusters each sample's cluster by its share; the walk's
    guidance None is the model's own scale (`spec.guidance`)."""
    walk = spec.walk if walk is None else walk
    if labels is None:
        labels = spec.default_labels(n, seed)
    guidance = spec.guidance_for(walk.guidance, labels)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown sampling precision {precision!r}; expected fp32 or bf16")
    if labels is not None:
        spec.check_labels(labels, n)
        denoiser = Guided(denoiser, guidance, spec.num_classes)
    data_range = spec.data_range(device) if spec.clip else None
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        x = sample(denoiser, spec.shape, n, walk, seed=seed, labels=labels, data_range=data_range,
                   batch_size=batch_size, progress=progress, device=device, report=report, callback=callback)
    return spec.normalisation.to_uint8(x)


@dataclass
class Run:
    """A trained model loaded from one checkpoint: its denoiser (in eval mode, on `device`), its
    description, and where it came from."""

    denoiser: Denoiser
    spec: ModelSpec
    checkpoint: Path  # the checkpoint folder the weights were read from
    weights: str  # "ema" or "model"
    device: torch.device
    step: int | None = None  # the optimiser step the weights are from
    directory: Path | None = None  # the run directory, when the checkpoint sits in one
    training: dict = field(default_factory=dict)  # the run's saved TrainConfig (config.json `train`)

    def sample(self, n: int, walk: Walk | None = None, *, seed: int = 0, labels: torch.Tensor | None = None,
               batch_size: int = 64, progress: bool = True, precision: str = "fp32", report: dict | None = None,
               callback=None, **changes) -> np.ndarray:
        """n uint8 images (n, H, W, C) along `walk` (default: the model's own) with `changes` to it:
        its fields (sampler="ddim", steps=50, guidance=2) or the sampler's options (eta=0.5)."""
        walk = self.walk(walk, **changes)
        return sample_images(self.denoiser, self.spec, n, walk, seed=seed, labels=labels, batch_size=batch_size,
                             progress=progress, device=self.device, precision=precision, report=report, callback=callback)

    def walk(self, walk: Walk | None = None, **changes) -> Walk:
        """`walk` (default: the model's own) with `changes`: Walk fields, or the sampler's own options.
        A new sampler starts from its own options."""
        walk = self.spec.walk if walk is None else walk
        fields = {f.name for f in dataclasses.fields(Walk)}
        options = {k: v for k, v in changes.items() if k not in fields and v is not None}
        changes = {k: v for k, v in changes.items() if k in fields}
        if options:
            same = changes.get("sampler") in (None, walk.sampler)
            changes["options"] = {**(walk.options if same else {}), **changes.get("options", {}), **options}
        return walk.replace(**changes)

    def sample_labels(self, n: int, label: int | None = None) -> torch.Tensor | None:
        """The labels `evaluate` and `show grid` sample with: `label` for all n, else each class in
        turn for a model on labels, else None (clusters are drawn by their share)."""
        if label is not None:
            self.spec.check_label(label)
            return torch.full((n,), label, dtype=torch.long)
        return self.spec.classes_in_turn(n)

    @property
    def data(self):
        """The run's training data source as a DataConfig, or None when the checkpoint stands alone."""
        return DataConfig(**self.training["data"]) if "data" in self.training else None

    def data_images(self, n: int, source: str | None = None) -> np.ndarray:
        """n uint8 images (n, H, W, C) spread over a data source fitted to the model (default: the
        run's training data), for pictures and editing."""
        if source is None and self.data is None:
            raise ValueError(f"{self.checkpoint} stands alone (no run's config.json beside it); name images with --input")
        config = (dataclasses.replace(self.data, flip=False, validation_fraction=0.0) if source is None else
                  DataConfig(source, image_size=self.spec.image_size[0], channels=str(self.spec.channels)))
        loaded = load_images(config, progress=False)
        picks = np.linspace(0, len(loaded) - 1, n).round().astype(int)
        return loaded.uint8(picks).permute(0, 2, 3, 1).numpy()

    def describe(self) -> dict:
        """A JSON-ready summary: where the weights are from and how the model was trained."""
        return {
            "checkpoint": str(self.checkpoint), "step": self.step, "weights": self.weights,
            "preset": self.training.get("preset"), "data": (self.training.get("data") or {}).get("source"),
            "network": summary(self.denoiser.net), "image_shape": list(self.spec.shape),
            "classes": self.spec.num_classes, "on_clusters": self.spec.on_clusters,
            "class_names": list(self.spec.class_names),
        }


def generation_parameters(run: Run, named: str, walk: Walk, *, seed: int, label: int | None, guidance: float,
                          precision: str) -> dict:
    """How a set of samples was drawn, as every PNG of it carries it (`pixel-diffusion info`)."""
    return {"command": "sample", "run": named, "checkpoint": str(run.checkpoint), "step": run.step,
            "weights": run.weights, "sampler": walk.sampler, "steps": walk.steps, "seed": seed, "label": label,
            "guidance": guidance, "precision": precision, **walk.options,
            **({} if walk.clip else {"clip": None}), **({"sigma_max": walk.sigma_max} if walk.sigma_max is not None else {}),
            "spacing": None if walk.entry.adaptive else walk.spacing_used}


def is_checkpoint_folder(path: Path) -> bool:
    path = Path(path)
    return (path / "state.json").is_file() and any((path / f"{w}.safetensors").is_file() for w in WEIGHTS)


def find_checkpoint(run_dir: Path, checkpoint: str | int = "latest") -> Path:
    """The checkpoint folder of a run that `checkpoint` names: "latest", "best", a step (1200 or
    "step-0001200"); a checkpoint folder given as `run_dir` is itself."""
    run_dir = Path(run_dir)
    if is_checkpoint_folder(run_dir):
        return run_dir
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} is not a run directory (no config.json) nor a checkpoint folder; "
                         "train one with pixel-diffusion train")
    name = str(checkpoint)
    if name == "latest":
        found = checkpoints.latest_checkpoint(run_dir)
        if found is None:
            raise ValueError(f"{run_dir} has no checkpoint yet; train it first or wait for its first checkpoint")
        return found
    if name == checkpoints.BEST:
        found = run_dir / checkpoints.CHECKPOINTS / checkpoints.BEST
        if not is_checkpoint_folder(found):
            raise ValueError(f"{run_dir} has no best checkpoint; it is kept by KID during training (kid_every=N)")
        return found
    digits = name.removeprefix("step-")
    if not digits.isdigit():
        raise ValueError(f"checkpoint must be latest, best or a step number; got {name!r}")
    found = run_dir / checkpoints.CHECKPOINTS / checkpoints.step_name(int(digits))
    if not is_checkpoint_folder(found):
        kept = [int(p.name.split("-")[1]) for p in checkpoints.list_checkpoints(run_dir)]
        raise ValueError(f"{run_dir} has no checkpoint at step {int(digits)}; it keeps steps "
                         f"{', '.join(map(str, kept)) or 'none'}")
    return found


def read_spec(folder: Path, run_dir: Path | None) -> ModelSpec:
    """The model description of a checkpoint folder: its model.json, or (runs from before it)
    the run's config.json."""
    own = folder / MODEL_FILE
    if own.exists():
        return ModelSpec.from_dict(checkpoints.read_json(own), str(own))
    if run_dir is None:
        raise ValueError(f"{folder} holds no {MODEL_FILE}; copy the whole run directory, or load it from there")
    config = checkpoints.read_json(run_dir / "config.json")
    where = f"{run_dir / 'config.json'} `model`"
    return ModelSpec.from_dict(config.get("model") if isinstance(config, dict) else config, where)


def load_run(run_dir: Path, checkpoint: str | int = "latest", weights: str | None = None,
             device: str | torch.device = "cpu") -> Run:
    """A trained model from a run directory (or a checkpoint folder on its own): `checkpoint` is
    "latest", "best" or a step; `weights` "ema", "model" or another name the checkpoint holds (an
    EMA profile such as ema-0.100, kept in training or rebuilt by `pixel-diffusion ema`), None for
    the model's own (`ModelSpec.weights`, its preset's measured best). Never runs code from a file."""
    if weights is not None:
        checkpoints.check_weights_name(weights)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this machine has no CUDA GPU; use --device cpu")
    if diffusers_io.is_pipeline_folder(run_dir):
        if weights not in (None, *WEIGHTS):
            raise ValueError(f"{run_dir} is a diffusers pipeline folder with one set of weights; drop --weights")
        return _load_pipeline(Path(run_dir), checkpoint, torch.device(device))
    folder = find_checkpoint(run_dir, checkpoint)
    run_root = folder.parent.parent if folder.parent.name == checkpoints.CHECKPOINTS else None
    if run_root is not None and not (run_root / "config.json").exists():
        run_root = None
    _check_intact(folder, run_root, reads=("state.json", MODEL_FILE))
    spec = read_spec(folder, run_root)
    weights = spec.weights if weights is None else weights  # the model's own unless told
    _check_intact(folder, run_root, reads=(f"{weights}.safetensors",))
    if weights not in WEIGHTS and not (folder / f"{weights}.safetensors").is_file():
        raise ValueError(f"{folder} holds no {weights} weights; it holds {', '.join(checkpoints.weights_names(folder))}")
    tensors = checkpoints.load_weights(folder / f"{weights}.safetensors")
    net = _build(spec, folder, {k: tuple(v.shape) for k, v in tensors.items()})
    net.load_state_dict(tensors)
    state = checkpoints.read_json(folder / "state.json")
    training = checkpoints.read_json(run_root / "config.json").get("train", {}) if run_root else {}
    device = torch.device(device)
    return Run(spec.build_denoiser(net.eval().to(device)), spec, folder, weights, device,
               step=state.get("step") if isinstance(state, dict) else None, directory=run_root,
               training=training if isinstance(training, dict) else {})


def _build(spec: ModelSpec, folder: Path, shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """The network a model description names, built first without memory (on the meta device) and
    checked against the shapes of the weights to load into it, so that a description that does not
    fit them is one line before anything is allocated."""
    try:
        config = config_from_dict(spec.network) if isinstance(spec.network, dict) else spec.network
        if getattr(config, "least_blocks", 0) > len(shapes):  # building would take minutes
            raise CheckpointError(f"{folder}: its model description names {config.least_blocks} blocks or more, "
                                  f"but its weights hold only {len(shapes)} tensors")
        with torch.device("meta"):
            wanted = {k: tuple(v.shape) for k, v in build_network(spec.network).state_dict().items()}
        if wanted != shapes:
            differ = sorted(set(wanted) ^ set(shapes)) or [k for k in wanted if wanted[k] != shapes[k]]
            raise CheckpointError(f"{folder}: the weights do not fit the network its model description names "
                                  f"({len(differ)} tensors differ, first {differ[0]})")
        return build_network(spec.network)
    except CheckpointError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as error:
        raise CheckpointError(f"{folder}: its model description names a network that cannot be built "
                              f"({str(error).splitlines()[0][:120] if str(error) else type(error).__name__})") from None


def _check_intact(folder: Path, run_root: Path | None, reads=None) -> None:
    """Refuse a damaged checkpoint folder in one line that names the newest intact one; `reads`:
    the files the caller reads, the only ones hashed."""
    try:
        checkpoints.verify_checkpoint(folder, reads)
    except CheckpointError as error:
        other = checkpoints.newest_intact(run_root, besides=folder) if run_root is not None else None
        hint = (f"; the newest intact checkpoint is {other.name} (--checkpoint {int(other.name.split('-')[1])})"
                if other is not None else "; the run has no intact checkpoint")
        raise CheckpointError(f"{error}{hint}") from None


def _load_pipeline(folder: Path, checkpoint, device: torch.device) -> Run:
    """A diffusers pipeline folder (diffusers_io) as a Run: one set of weights, no training record."""
    if str(checkpoint) != "latest":
        raise ValueError(f"{folder} is a diffusers pipeline folder with one set of weights; drop --checkpoint")
    description, state = diffusers_io.read_pipeline(folder)
    spec = ModelSpec.from_dict(description, f"{folder} (diffusers pipeline)")
    net = _build(spec, folder, {k: tuple(v.shape) for k, v in state.items()})
    net.load_state_dict(state)
    return Run(spec.build_denoiser(net.eval().to(device)), spec, folder, "model", device)


def export_diffusers(run: Run, out: Path) -> Path:
    """Write `run`'s model as a diffusers pipeline folder (diffusers_io.write_pipeline) with a model card."""
    if run.spec.distilled is not None:
        raise ValueError(f"{run.checkpoint} is a consistency model: diffusers' DDPM and DDIM schedulers would walk it as a "
                         "diffusion model and draw something else; sample it here (pixel-diffusion sample)")
    diffusers_io.write_pipeline(out, run.spec.to_dict(), run.spec.network, run.denoiser.net.state_dict(),
                                model_card(run, Path(out).name))
    return Path(out)


def model_card(run: Run, name: str) -> str:
    """The README.md of an exported pipeline: Hugging Face front matter, how it was trained, how to use it."""
    about, spec = run.describe(), run.spec
    kind = "colour" if spec.channels == 3 else "grayscale"
    labels = (f"Class-conditional: labels 0..{spec.num_classes - 1} ({', '.join(map(spec.class_label, range(spec.num_classes)))}), "
              f"label {spec.num_classes} meaning none; pass `class_labels` to the UNet (the stock pipelines pass none)."
              if spec.num_classes else "Unconditional.")
    rows = [("preset", about["preset"]), ("training data", about["data"]), ("optimiser steps", about["step"]),
            ("weights", about["weights"]), ("network", about["network"]),
            ("schedule", f"{spec.schedule} {spec.schedule_options if spec.schedule != 'betas' else '(table)'}"),
            ("prediction", spec.prediction), ("image size", f"{spec.image_size[0]}x{spec.image_size[1]}, {kind}")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)
    return f"""---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags:
- pytorch
- diffusers
- unconditional-image-generation
- pixel-diffusion
---

# {name}

A denoising diffusion model of {spec.image_size[0]}x{spec.image_size[1]} {kind} images, trained with
pixel-diffusion and exported as a diffusers pipeline. {labels}

| | |
|---|---|
{table}

## Use

```python
from diffusers import DDIMPipeline

pipeline = DDIMPipeline.from_pretrained("{name}")
images = pipeline(batch_size=16, num_inference_steps=50).images
```

or, with any of pixel-diffusion's samplers: `pixel-diffusion sample --run {name} --sampler dpmpp-2m --steps 10`.
"""


def write_posthoc_ema(run_dir: Path, sigma_rels, checkpoint: str | int = "latest") -> list[tuple[str, int]]:
    """Rebuild the power-function EMA of each length in `sigma_rels` at a checkpoint, from the run's
    snapshots before it and the profiles the checkpoint keeps (EDM2's post-hoc EMA, ema.py), and
    write it into the checkpoint as named weights (ema-0.200). Returns (name, profiles combined)."""
    folder = find_checkpoint(run_dir, checkpoint)
    if folder.parent.name != checkpoints.CHECKPOINTS or folder.name == checkpoints.BEST:
        raise ValueError(f"{folder} is not one of a run's step checkpoints; post-hoc EMA needs the run's snapshots")
    root = folder.parent.parent
    _check_intact(folder, root)
    step = int(checkpoints.read_json(folder / "state.json")["step"])
    train = checkpoints.read_json(root / "config.json").get("train", {}) if (root / "config.json").exists() else {}
    kept = {ema.weights_name(s): float(s) for s in train.get("ema_profiles", ())}
    if not kept:
        raise ValueError(f"{root} kept no EMA profiles to rebuild from; train with ema_profiles=[0.05,0.1] "
                         "and ema_snapshot_every=N (steps)")
    pieces = [(path, at, name, s) for path in checkpoints.list_snapshots(root)
              for at, rels in [checkpoints.snapshot_info(path)] if at < step for name, s in rels.items()]
    pieces += [(folder / f"{name}.safetensors", step, name, s) for name, s in kept.items()]
    written = []
    for sigma_rel in sigma_rels:
        name = ema.weights_name(sigma_rel)
        if name in kept:
            raise ValueError(f"{name} is kept by training in {folder.name}; ask for other lengths")
        x = ema.posthoc_coefficients([(at, ema.sigma_rel_to_gamma(s)) for _, at, _, s in pieces], step, sigma_rel)
        loads = (checkpoints.snapshot_weights(path, n) if at < step else checkpoints.load_weights(path)
                 for path, at, n, _ in pieces)
        checkpoints.add_weights(folder, name, ema.combine(loads, x))
        written.append((name, len(pieces)))
    return written
