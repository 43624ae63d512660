"""The typed configuration of a training run, saved as config.json with every run.

Every field can be set from a preset, a JSON or TOML file, or `key=value` overrides on the
command line (dotted keys reach nested sections: `data.image_size=32`, `loss.weighting=min-snr`).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .data import DataConfig
from .ema import weights_name
from .logbook import TRACKERS
from .networks import config_from_dict, config_to_dict, network_config
from .objectives import OBJECTIVES, Diffusion, Objective, objective_from_dict
from .samplers import Walk
from .spec import Distilled, ModelSpec, checked_schedule
from .typed import read

BUDGET_FIELDS = ("steps", "epochs", "minutes")
# Fields that may change between a run and its resumption: how long, how often, where.
RESUMABLE_FIELDS = BUDGET_FIELDS + (
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "preview_every",
    "progress",
    "device",
    "kid_every",
    "kid_images",
    "kid_steps",
    "kid_extractor",
    "kid_classifier",
    "kid_inception_weights",
    "compile",
    "channels_last",
    "fused_optimizer",
    "threads",
    "skip_nonfinite",
    "data.workers",
    "guidance",
    "ema_snapshot_every",
    "walk",
    "weights",
    "report_to",
    "preview_images",
    "preview_sampler",
    "preview_steps",
)


@dataclass
class TrainConfig:
    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    # Model: a named network (networks.NETWORKS) with field overrides, schedule and parameterisation.
    network: str = "ddpm-mnist"
    network_options: dict = field(default_factory=dict)
    schedule: str = "linear"
    schedule_options: dict = field(default_factory=dict)
    prediction: str = "noise"
    noise_input: str = "timestep"
    loss: Objective = field(default_factory=Diffusion)  # objectives.OBJECTIVES, picked by loss.kind
    conditional: bool = False  # train on the data's labels (class-conditional)
    label_dropout: float = 0.1  # fraction trained with "no label", for classifier-free guidance
    clusters: int = 0  # k > 0: condition on k k-means clusters of the images instead (clusters.py; no labels needed)
    guidance: float = 1.0  # the classifier-free guidance scale the trained model samples at unless told (its model.json)
    # How the trained model samples unless told (its model.json): fields of samplers.Walk, {} for Walk().
    walk: dict = field(default_factory=dict)
    # Optimisation.
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_warmup: int = 0  # steps of linear warmup
    lr_decay: str = "constant"  # constant | cosine (to min_lr_ratio * lr at the end of the budget)
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    skip_nonfinite: int = 0  # skip a step whose loss or gradients are not finite, stop after this many in a row
    batch_size: int = 128
    accumulation: int = 1  # micro-batches per optimiser step (batch_size is split among them)
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) at optimiser step n
    ema_profiles: tuple[float, ...] = ()  # EDM2 power-function EMA lengths (sigma_rel) kept beside `ema`, e.g. (0.05, 0.1)
    ema_snapshot_every: int = 0  # steps between snapshots of those profiles, for `pixel-diffusion ema` (0: none)
    # The weights the trained model samples with unless told (its model.json): ema (the fixed-decay
    # average), model (the raw weights) or ema-SIGMA, one of ema_profiles (the preset's measured best).
    weights: str = "ema"
    # A run or checkpoint folder whose weights (its model.json's own) the network and its averages
    # start from, instead of a fresh initialisation: a distilled student starts as its teacher.
    init: str | None = None
    # fp32 | bf16 (autocast) | fp16 (autocast + loss scaling, GPU only) | auto (bf16 or fp32, whichever
    # this machine runs the network's training step faster: devices.choose_precision)
    precision: str = "fp32"
    # Speed levers that leave the mathematics alone (docs/performance.md measures each).
    compile: bool = False  # torch.compile the network's forward and backward
    channels_last: bool = False  # NHWC memory layout for the network's weights and activations
    fused_optimizer: bool = False  # one fused kernel for the whole Adam/AdamW update
    threads: int | None = None  # CPU threads for torch (None: torch's default, one per core)
    device: str = "auto"
    seed: int = 0
    # Budget: exactly one of these is used (steps wins over epochs over minutes).
    steps: int | None = None
    epochs: int | None = None
    minutes: float | None = None
    # Bookkeeping.
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    preview_every: int = 500
    preview_images: int = 64
    preview_sampler: str | None = None  # None: the run's walk's
    preview_steps: int | None = None
    progress: bool = True
    # Experiment trackers the log is mirrored to (logbook.TRACKERS: tensorboard, wandb, mlflow); metrics.jsonl always.
    report_to: tuple[str, ...] = ()
    # KID during training (the Keras example's checkpoint rule): every kid_every steps, kid_images
    # samples along the run's walk (with kid_steps steps) against the training data; the best is kept as `best`.
    kid_every: int = 0
    kid_images: int = 500
    kid_steps: int | None = 5  # None: the walk's
    kid_extractor: str = "classifier"  # classifier (kid_classifier: a train-classifier folder) | inception
    kid_classifier: str | None = None
    kid_inception_weights: str | None = None

    def __post_init__(self):
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if isinstance(self.loss, dict):
            self.loss = objective_from_dict(self.loss)
        self.betas = tuple(self.betas)
        self.ema_profiles = tuple(self.ema_profiles)
        self.report_to = tuple(self.report_to)
        if any(name not in TRACKERS for name in self.report_to):
            raise ValueError(f"report_to names trackers among {', '.join(TRACKERS)}; got {list(self.report_to)}")
        checks = [
            ("optimizer", self.optimizer, ("adamw", "adam")),
            ("lr_decay", self.lr_decay, ("constant", "cosine")),
            ("precision", self.precision, ("auto", "fp32", "bf16", "fp16")),
        ]
        for name, value, options in checks:
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(options)}")
        positive = {"batch_size": self.batch_size, "accumulation": self.accumulation, "log_every": self.log_every,
                    "checkpoint_every": self.checkpoint_every, "preview_steps": self.preview_steps or 1,
                    "kid_steps": self.kid_steps or 1}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.batch_size % self.accumulation:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by accumulation {self.accumulation}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay}")
        if not 0 <= self.guidance <= 20:
            raise ValueError(f"guidance must lie in [0, 20]; got {self.guidance}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1); got {self.label_dropout}")
        if not isinstance(self.skip_nonfinite, int) or isinstance(self.skip_nonfinite, bool) or self.skip_nonfinite < 0:
            raise ValueError(f"skip_nonfinite must be 0 (stop at the first non-finite step) or how many to skip in a "
                             f"row; got {self.skip_nonfinite!r}")
        if not isinstance(self.clusters, int) or isinstance(self.clusters, bool) or self.clusters < 0:
            raise ValueError(f"clusters must be 0 (none) or a positive number of clusters; got {self.clusters!r}")
        if self.clusters and self.conditional:
            raise ValueError(f"conditional=true trains on the data's labels and clusters={self.clusters} on clusters "
                             "found in the images; set one of them (clusters=0 to train on the labels)")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None; got {self.threads!r}")
        for sigma_rel in self.ema_profiles:
            if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0 < sigma_rel < 12**-0.5:
                raise ValueError(f"ema_profiles holds EMA lengths sigma_rel in (0, 0.288), such as [0.05, 0.1]; got {sigma_rel!r}")
        if len({round(s, 3) for s in self.ema_profiles}) != len(self.ema_profiles):
            raise ValueError(f"ema_profiles must differ in their first three decimals (they name weights); got {self.ema_profiles}")
        if not isinstance(self.ema_snapshot_every, int) or isinstance(self.ema_snapshot_every, bool) or self.ema_snapshot_every < 0:
            raise ValueError(f"ema_snapshot_every must be 0 (none) or a number of steps; got {self.ema_snapshot_every!r}")
        kept = ("ema", "model", *(weights_name(s) for s in self.ema_profiles))
        if self.weights not in kept:
            raise ValueError(f"weights must be one of the weights every checkpoint keeps: {', '.join(kept)} "
                             f"(an EMA profile is kept when ema_profiles holds it); got {self.weights!r}")
        if self.ema_snapshot_every and not self.ema_profiles:
            raise ValueError("ema_snapshot_every takes snapshots of the ema_profiles; set ema_profiles too, such as [0.05, 0.1]")
        for name in BUDGET_FIELDS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive; got {value}")
        walk = self.sampling_walk()  # checked now, in one line, not at the first preview
        self.walk = {name: getattr(walk, name) for name in self.walk}  # its fields converted (a quoted "5" is 5)
        self.check_model()

    def sampling_walk(self) -> Walk:
        """The walk the trained model samples along unless told (`walk`), guidance left to the model."""
        return Walk.from_dict(self.walk, "walk")

    def model_spec(self, *, normalisation, channels: int, image_size: tuple[int, int], num_classes: int | None = None,
                   class_names: tuple[str, ...] = (), label_prior=None) -> ModelSpec:
        """The description of the model this config trains, given the data's facts (its
        normalisation, channels, size, classes or clusters): what every checkpoint's model.json holds."""
        return ModelSpec(
            network=self.network_config(channels, num_classes), schedule=self.schedule,
            schedule_options=dict(self.schedule_options), prediction=self.prediction, noise_input=self.noise_input,
            normalisation=normalisation, channels=channels, image_size=tuple(image_size), num_classes=num_classes,
            class_names=tuple(class_names), label_prior=None if label_prior is None else tuple(label_prior),
            guidance=self.guidance if num_classes is not None else 1.0, walk=self.sampling_walk(), weights=self.weights,
            distilled=self.distilled(),
        )

    def distilled(self) -> Distilled | None:
        """What a consistency objective makes of the model (None for any other objective)."""
        loss = self.loss
        if loss.kind != "consistency":
            return None
        return Distilled(teacher=loss.teacher or (self.init or ""), guidance=loss.guidance, sigma_min=loss.sigma_min,
                         objective=loss.target)

    def network_config(self, channels: int, num_classes: int | None):
        """The named network adapted to the data, with the config's field overrides (`network_options`)."""
        if not isinstance(self.network_options, dict):
            raise ValueError(f"network_options must be a table of the network's fields; got {self.network_options!r}")
        base = config_to_dict(network_config(self.network, in_channels=channels, num_classes=num_classes))
        return config_from_dict({**base, **self.network_options}, "network_options")

    def check_model(self) -> None:
        """The network's options, the schedule, prediction and objective fit together (one line,
        before any data is read)."""
        network = self.network_config(1, None)
        self.network_options = {name: getattr(network, name) for name in self.network_options}  # converted
        self.schedule_options, schedule = checked_schedule(self.schedule, self.schedule_options, self.prediction)
        self.loss.check(schedule, self.prediction)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A config from its JSON form, every value converted and checked as `typed.read` does."""
        return read(cls, data, readers={"loss": objective_from_dict})


SECTIONS = ("data", "loss", "network_options", "schedule_options", "walk")  # tables a dotted key reaches
OPEN_SECTIONS = ("network_options", "schedule_options", "walk")  # their fields are checked where they are used


def apply_overrides(config: TrainConfig, overrides: list[str] | dict) -> TrainConfig:
    """A new config with `key=value` strings (or a {key: value} dict of parsed values) applied;
    every value, quoted or not, is converted to its field's type by `typed.read`."""
    data = config.to_dict()
    # A file's [data] and [loss] tables change only the fields they name.
    items = flatten(overrides).items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    for key, value in _kind_first(items, data):
        section, _, name = key.rpartition(".")
        target = data
        if section:
            if section not in SECTIONS or not isinstance(data.get(section), dict):
                raise ValueError(f"unknown config section {section!r} in {key!r}; sections are {', '.join(SECTIONS)}")
            target = data[section]
        if section not in OPEN_SECTIONS and name not in target:
            raise ValueError(f"unknown config field {key!r}")
        target[name] = value
    return TrainConfig.from_dict(data)


def _kind_first(items, data: dict) -> list:
    """The overrides without `loss.kind`, which is applied first: another objective starts from
    its own defaults, so that the loss fields set beside it are its own."""
    items = list(items)
    kinds = [value for key, value in items if key == "loss.kind"]
    if kinds and kinds[-1] != data["loss"].get("kind"):
        if not isinstance(kinds[-1], str) or kinds[-1] not in OBJECTIVES:
            raise ValueError(f"loss.kind: unknown objective {kinds[-1]!r}; expected one of {', '.join(OBJECTIVES)}")
        data["loss"] = dataclasses.asdict(OBJECTIVES[kinds[-1]]())
    return [(key, value) for key, value in items if key != "loss.kind"]


def _split(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r} is not key=value (for example lr=3e-4 or data.image_size=32)")
    return key.strip(), value.strip()


def read_config_file(path: Path) -> dict:
    """A JSON or TOML file of config fields (nested tables for data and loss)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ValueError(f"cannot read config file {path} ({error.strerror})") from None
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"config file {path} is not valid {kind}: {error}") from None
    except RecursionError:
        raise ValueError(f"config file {path} is nested too deeply to be a config") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must be a table of config fields (such as lr = 3e-4); got a {type(data).__name__}")
    return data


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in ("data", "loss"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(saved: dict, current: dict, ignore=RESUMABLE_FIELDS) -> list[str]:
    """Fields (dotted) whose values differ between two config dicts, ignoring the resumable ones
    and those a saved config predates (added since, with defaults that keep the old behaviour)."""
    a, b = flatten(saved), flatten(current)
    normalise = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples vs lists)
    return sorted(k for k in set(a) | set(b) if k not in ignore and (k in a or not a)
                  and normalise(a.get(k)) != normalise(b.get(k)))
