"""What a trained model is: `ModelSpec`, the one description of a model that training writes
(config.json's `model`, every checkpoint's model.json) and everything that samples reads.

Its network config, schedule and its options, parameterisation, noise input, normalisation,
image shape, classes, label prior, guidance scale and walk; `TrainConfig.model_spec` makes it
from a config and the data's facts, `ModelSpec.from_dict` reads it back (`typed.read`, one line
for any field that does not fit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from .checkpoints import CheckpointError, check_weights_name
from .clusters import draw_clusters
from .data import Normalisation
from .diffusion import NOISE_INPUTS, PREDICTIONS, Denoiser, check_variance_preserving
from .networks import build_network, config_from_dict, config_to_dict
from .samplers import Walk
from .schedules import SCHEDULES, make_schedule
from .typed import read, read_call


def checked_schedule(name: str, options, prediction: str):
    """(options, schedule): a schedule of the registry by name, its options read by their types
    (`typed.read_call`), checked against the prediction; one line for what does not fit."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    options = read_call(SCHEDULES[name], options, "schedule_options", {"shift": float})
    schedule = make_schedule(name, **options)
    check_variance_preserving("prediction", prediction, schedule)
    return options, schedule


@dataclass(frozen=True)
class Distilled:
    """What a consistency model was distilled or tuned from: the teacher run, the guidance scale
    folded into it, its boundary (the smallest noise level sigma/alpha, where its image estimate
    is x_t / alpha exactly), and the step counts its walks were measured for."""

    teacher: str
    guidance: float = 1.0
    sigma_min: float = 0.002
    steps: tuple[int, ...] = (1, 2, 4)
    objective: str = "teacher"  # teacher: consistency distillation; data: consistency training from the teacher's weights

    def __post_init__(self):
        if not 0 < self.sigma_min < 1:
            raise ValueError(f"distilled.sigma_min must lie in (0, 1); got {self.sigma_min!r}")
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"distilled.steps must be positive step counts; got {list(self.steps)}")


@dataclass(frozen=True)
class ModelSpec:
    """A trained model's description: everything needed to rebuild and sample it."""

    network: object  # a network config dataclass (networks.UNetConfig, BasicUNetConfig)
    schedule: str
    schedule_options: dict
    prediction: str
    noise_input: str
    normalisation: Normalisation
    channels: int
    image_size: tuple[int, int]
    num_classes: int | None = None  # labels 0..K-1 (K is the "no label" index)
    class_names: tuple[str, ...] = ()
    label_prior: tuple[float, ...] | None = None  # a run on clusters: each cluster's share of the data
    clip: bool = True  # samplers clip the image estimate to the data range (diffusers' clip_sample)
    guidance: float = 1.0  # the classifier-free guidance scale sampling uses unless told (the preset's measured best)
    walk: Walk = field(default_factory=Walk)  # how it samples unless told (its preset's measured best)
    weights: str = "ema"  # the weights it samples with unless told (ema, model, ema-SIGMA: its preset's measured best)
    distilled: Distilled | None = None  # a consistency model: what it was distilled from (None: a diffusion model)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, *self.image_size)

    @property
    def on_clusters(self) -> bool:
        return bool(self.label_prior)

    def to_dict(self) -> dict:
        """The JSON form, as config.json's `model` section holds it."""
        return {
            "network": config_to_dict(self.network), "schedule": self.schedule,
            "schedule_options": dict(self.schedule_options), "prediction": self.prediction,
            "noise_input": self.noise_input, "normalisation": dataclasses.asdict(self.normalisation),
            "channels": self.channels, "image_size": list(self.image_size), "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "label_prior": None if self.label_prior is None else list(self.label_prior), "clip": self.clip,
            "guidance": self.guidance, "walk": self.walk.to_dict(), "weights": self.weights,
            "distilled": None if self.distilled is None else dataclasses.asdict(self.distilled),
        }

    def __post_init__(self):
        """What the fields mean: one line for the first that does not fit."""
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {self.channels!r}")
        if len(self.image_size) != 2 or not all(side > 0 for side in self.image_size):
            raise ValueError(f"image_size must be [height, width], both positive; got {list(self.image_size)}")
        for name, registry in (("prediction", PREDICTIONS), ("noise_input", NOISE_INPUTS)):
            if getattr(self, name) not in registry:
                raise ValueError(f"{name} must be one of {', '.join(registry)}; got {getattr(self, name)!r}")
        object.__setattr__(self, "schedule_options", checked_schedule(self.schedule, self.schedule_options, self.prediction)[0])
        if not 0 <= self.guidance <= 20:
            raise ValueError(f"guidance must be a number in [0, 20]; got {self.guidance!r}")
        check_weights_name(self.weights)
        if self.label_prior is not None and (not self.label_prior or min(self.label_prior) < 0):
            raise ValueError(f"label_prior must be a list of non-negative shares; got {list(self.label_prior)}")

    @classmethod
    def from_dict(cls, data, where: str = "model description") -> ModelSpec:
        """Read the JSON form (`typed.read`); a missing or wrong field is a one-line CheckpointError."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} must be a JSON object; got {type(data).__name__}")
        data = {**data, "schedule_options": data.get("schedule_options") or {}}  # optional in older descriptions
        try:
            return read(cls, data, readers={"network": config_from_dict})
        except ValueError as error:
            raise CheckpointError(f"{where}: {error}") from None

    def build_denoiser(self, net: torch.nn.Module | None = None) -> Denoiser:
        """The Denoiser of this model around `net` (a fresh network when None)."""
        net = net if net is not None else build_network(self.network)
        schedule = make_schedule(self.schedule, **self.schedule_options)
        boundary = None if self.distilled is None else self.distilled.sigma_min
        return Denoiser(net, schedule, self.prediction, self.noise_input, boundary)

    def data_range(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of model inputs, (C, 1, 1) each: what samples are clipped to."""
        low, high = self.normalisation.data_range(self.channels)
        return low.to(device), high.to(device)

    def class_label(self, k: int) -> str:
        """The name of class k (its folder's name, or the number)."""
        return self.class_names[k] if k < len(self.class_names) else str(k)

    def check_label(self, label: int) -> None:
        if self.num_classes is None:
            raise ValueError("this run was trained without labels; drop --label")
        if not 0 <= label < self.num_classes:
            raise ValueError(f"--label must lie in 0..{self.num_classes - 1}; got {label}")

    def check_labels(self, labels: torch.Tensor, n: int) -> None:
        """Refuse, in one line, labels that are not n integers in 0..K (K: no label); the network
        takes them unchecked."""
        if self.num_classes is None:
            raise ValueError("this run was trained without labels; drop --label")
        labels = torch.as_tensor(labels)
        if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be {n} integers; got {labels.dtype} of shape {tuple(labels.shape)}")
        if n and not 0 <= int(labels.min()) <= int(labels.max()) <= self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1} ({self.num_classes}: no label); "
                             f"got {int(labels.min())}..{int(labels.max())}")

    def classes_in_turn(self, n: int) -> torch.Tensor | None:
        """Labels 0, 1, ..., K-1, 0, ... for n samples of a model trained on its data's K labels,
        so each class is drawn equally often (and a classifier's accuracy can be measured); None
        for an unconditional model and for one on clusters (drawn by their share instead)."""
        return None if self.num_classes is None or self.on_clusters else torch.arange(n) % self.num_classes

    def drawn_clusters(self, n: int, seed: int) -> torch.Tensor | None:
        """For a model trained on clusters: n clusters drawn by their share of the training
        images (sample i keeps its cluster for a seed whatever n is); None for any other."""
        return draw_clusters(list(self.label_prior), n, seed=seed) if self.on_clusters else None

    def default_labels(self, n: int, seed: int) -> torch.Tensor | None:
        """What n samples are drawn with when no label is named: each class in turn for a model on
        labels, clusters by their share for one on clusters, None for an unconditional model."""
        return self.classes_in_turn(n) if not self.on_clusters else self.drawn_clusters(n, seed)

    def guidance_for(self, guidance: float | None, labels: torch.Tensor | None) -> float:
        """The guidance scale a walk uses: the one asked for, else this model's own for a
        conditional draw; 1 (none) for an unconditional one."""
        if guidance is not None:
            return guidance
        return self.guidance if labels is not None else 1.0
