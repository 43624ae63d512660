"""Training: `train(config, run_dir)` reads top to bottom as its phases.

    engine -> data -> model -> resume -> budget -> loop (one `train_step` per batch) -> save

Every random draw of a step comes from a generator seeded by (seed, step, ...): the data order
of an epoch, the flips and label dropout of a batch, the times and noise of the loss, and
dropout. A checkpoint therefore needs only the step, the weights, the EMA and the optimiser's
state, and a run resumed from any checkpoint ends bit-identical to one never interrupted.
Multi-GPU and multi-node runs go through Hugging Face accelerate
(`accelerate launch -m pixel_diffusion train ...`): each process takes its share of every global
batch (on tar shards, from shards of its own; loader.py), and the learning rate and EMA advance
once per optimiser step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoints
from .clusters import label_by_clusters
from .config import TrainConfig, differences
from .data import ImageData, load_images
from .devices import choose_precision, describe_device, engine_device, pick_device
from .diffusion import Guided
from .ema import EMA, PowerEMA
from .loader import StepItems, loader_workers
from .logbook import RunLog, make_trackers, tracker_config
from .networks import build_network, config_to_dict, summary
from .runs import load_run, sample_images
from .spec import ModelSpec
from .steps import SKIPPED, Health, Loop, SkippedStep, TrainingError, Window, train_step  # noqa: F401 (TrainingError: callers catch it here)
from .viz import image_grid

# ---- pieces -----------------------------------------------------------------------------------


def learning_rate(config: TrainConfig, step: int, total: int | None, fraction: float | None = None) -> float:
    """Linear warmup over lr_warmup steps, then constant or cosine to min_lr_ratio * lr."""
    if step < config.lr_warmup:
        return config.lr * (step + 1) / config.lr_warmup
    if config.lr_decay == "constant":
        return config.lr
    if fraction is None:
        fraction = (step - config.lr_warmup) / max((total or 1) - config.lr_warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


# ---- phases -----------------------------------------------------------------------------------


def make_engine(config: TrainConfig, run_dir: Path | None = None):
    """Phase 1: the accelerate engine (device, processes, fp16's loss scaling, the trackers the run
    reports to). One process runs on `config.device` by the one device rule (`devices.pick_device`);
    launched processes take a GPU each, as `accelerate launch` assigns them."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    if config.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a GPU (it uses loss scaling); use auto, bf16 or fp32 on the CPU")
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if not single and config.device not in ("auto", device.type):
        raise ValueError(f"device {config.device}: launched processes take a GPU each; choose them with "
                         "accelerate launch --gpu_ids and leave device auto")
    if single:  # a previous run in this interpreter may have fixed accelerate's global state
        AcceleratorState._reset_state(reset_partial_state=True)
    trackers = make_trackers(config.report_to, run_dir) if config.report_to and run_dir is not None else None
    # bf16 is an autocast the loop opens itself (`Loop.precision`, settled once the network exists);
    # only fp16 needs the engine, for its loss scaler.
    with engine_device(device) if single else contextlib.nullcontext():
        accelerator = Accelerator(mixed_precision="fp16" if config.precision == "fp16" else "no",
                                  cpu=device.type == "cpu", log_with=trackers)
    if config.compile and accelerator.device.type == "cpu":
        from torch._inductor import cpp_builder  # torch.compile builds C++ for a CPU: check up front

        try:
            cpp_builder.get_cpp_compiler()
        except Exception:
            raise ValueError("compile=true on a CPU needs a C++ compiler (g++ or clang++ on the PATH, or $CXX); "
                             "install one or set compile=false") from None
    return accelerator


def start_trackers(accelerator, config: TrainConfig) -> None:
    """Start the runs of the trackers in `report_to` with the config as their parameters; a tracker
    that cannot start (its server, its store) stops training in one line before the first step."""
    try:
        accelerator.init_trackers("pixel-diffusion", config=tracker_config(config.to_dict()))
    except Exception as error:  # each tracker's own exceptions: the message is what matters
        said = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"report_to {', '.join(config.report_to)}: a tracker could not start ({said})") from None


@dataclass
class TrainingData:
    """Phase 2's result: the prepared images, what the labels are, and which items each step reads."""

    data: ImageData
    num_classes: int | None  # conditioning classes (data labels or clusters); None: unconditional
    label_prior: list[float] | None  # with clusters: each cluster's share of the training images
    items: StepItems

    @property
    def steps_per_epoch(self) -> int:
        return self.items.steps_per_epoch


SHARDS = "shards.json"  # in a run on tar shards: [name, bytes, samples] of each, checked on resuming


def check_shards(data: ImageData, run_dir: Path, main: bool) -> None:
    """A run on tar shards resumes only on the same shards: the same names, sizes and samples."""
    path = run_dir / SHARDS
    if not data.fingerprint:
        return
    if path.exists():
        then = checkpoints.read_json(path)
        now = data.fingerprint
        if then != now:
            changed = next((f"{a[0]}: {a[2]} samples, {a[1]} bytes then, {b[2]} samples, {b[1]} bytes now"
                            for a, b in zip(then, now) if a != b), f"{len(then)} shards then, {len(now)} now")
            raise ValueError(f"{run_dir} was trained on other shards ({changed}); resume on the same shards "
                             "or choose another --out")
    elif main:
        checkpoints.write_json(path, data.fingerprint)


def inherit_clusters(config: TrainConfig, run_dir: Path, main: bool) -> None:
    """A run started from another's weights (`init`) conditions on that run's clusters: its
    clusters.json is copied in before the first step, so the labels mean what they meant."""
    own = run_dir / "clusters.json"
    if not config.init or own.exists() or not main:
        return
    folder = Path(config.init)
    root = folder.parent.parent if folder.parent.name == checkpoints.CHECKPOINTS else folder
    if (root / "clusters.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.write_json(own, checkpoints.read_json(root / "clusters.json"))


def prepare_data(config: TrainConfig, run_dir: Path, world: int, main: bool, rank: int = 0) -> TrainingData:
    """Phase 2: open the data (decoded into memory, or streamed), attach labels or clusters,
    and fix which items each step reads."""
    data = load_images(config.data, progress=config.progress and main)
    if main and data.skipped:  # the warning names the first few; the run keeps them all
        checkpoints.atomic_write_text(run_dir / SKIPPED, "".join(f"{name}\t{why}\n" for name, why in data.skipped))
        print(f"{run_dir / SKIPPED} lists all {len(data.skipped)} items left out, and why")
    check_shards(data, run_dir, main)
    if config.conditional and data.labels is None:
        raise ValueError(f"conditional training needs labels, and {config.data.source!r} has none")
    num_classes = int(data.labels.max()) + 1 if config.conditional else None
    label_prior = None
    if config.clusters:
        inherit_clusters(config, run_dir, main)
        data, label_prior = label_by_clusters(data, config.clusters, seed=config.seed, sample=config.data.stream_sample,
                                              path=run_dir / "clusters.json", write=main, progress=config.progress and main)
        num_classes = config.clusters
    if config.batch_size % (world * config.accumulation):
        raise ValueError(f"batch_size {config.batch_size} must be divisible by processes x accumulation "
                         f"({world} x {config.accumulation})")
    items = StepItems(data, seed=config.seed, batch_size=config.batch_size, rank=rank, world=world)
    return TrainingData(data, num_classes, label_prior, items)


@dataclass
class Model:
    """Phase 3's result: the description, the network, its EMA and the optimiser."""

    spec: ModelSpec
    net: torch.nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    profiles: PowerEMA | None = None  # EDM2's power-function EMA profiles (ema_profiles)
    parts: dict = dataclasses.field(default_factory=dict)  # what the objective needs besides them (`needs`): a frozen teacher

    def named_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The profiles' weights by name (ema-0.050, ...), saved beside model and ema."""
        if self.profiles is None:
            return {}
        return {name: net.state_dict() for name, net in zip(self.profiles.names(), self.profiles.nets)}

    def averages_to(self, device) -> None:
        for net in [self.ema.net, *(self.profiles.nets if self.profiles is not None else ())]:
            net.to(device)
        for part in self.parts.values():
            part.to(device)


def build_model(config: TrainConfig, prepared: TrainingData) -> Model:
    """Phase 3: the model description (saved with every checkpoint), network, EMA, optimiser."""
    data = prepared.data
    spec = config.model_spec(normalisation=data.normalisation, channels=data.channels, image_size=tuple(data.size),
                             num_classes=prepared.num_classes, class_names=tuple(data.class_names),
                             label_prior=prepared.label_prior)
    torch.manual_seed(config.seed)
    net = build_network(spec.network)
    if config.init:
        start_from(net, spec, config.init)
    ema = EMA(net, config.ema_decay, config.ema_warmup)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(net.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                                **({"fused": True} if config.fused_optimizer else {}))
    return Model(spec, net, ema, optimizer, PowerEMA(net, config.ema_profiles) if config.ema_profiles else None,
                 parts={"teacher": frozen_teacher(config, spec)} if "teacher" in config.loss.needs else {})


def start_from(net: torch.nn.Module, spec: ModelSpec, folder: str) -> None:
    """Load another run's weights (its model.json's own) into `net`: the same network, or one line."""
    trained = load_run(Path(folder))
    if config_to_dict(trained.spec.network) != config_to_dict(spec.network):
        raise ValueError(f"init: {folder} trained another network than this run's; start from a run of the same network")
    net.load_state_dict(trained.denoiser.net.state_dict())


def frozen_teacher(config: TrainConfig, spec: ModelSpec) -> torch.nn.Module:
    """The teacher of a distillation (`loss.teacher`), frozen, with its guidance at the objective's
    scale: it must draw what this run trains on (its image shape, normalisation and classes)."""
    teacher = load_run(Path(config.loss.teacher))
    own = teacher.spec
    for what, theirs, ours in (("image shape", own.shape, spec.shape), ("normalisation", own.normalisation, spec.normalisation),
                               ("classes", own.num_classes, spec.num_classes)):
        if theirs != ours:
            raise ValueError(f"loss.teacher {config.loss.teacher} was trained with another {what} ({theirs}) than this "
                             f"run's data gives ({ours}); distil on the teacher's own data")
    denoiser = teacher.denoiser.requires_grad_(False)
    if own.num_classes is None or config.loss.guidance == 1:
        return denoiser
    return Guided(denoiser, config.loss.guidance, null_label=own.num_classes)


def resume(config: TrainConfig, run_dir: Path, model: Model) -> tuple[int, float, str | None]:
    """Phase 4: load the newest checkpoint into the model, if there is one. Returns (step,
    training seconds before this process, the precision it trained in where it says)."""
    candidates = checkpoints.newest_first(run_dir)
    if not candidates:
        return 0, 0.0, None
    saved = checkpoints.read_json(run_dir / "config.json")
    changed = differences(saved.get("train", {}) if isinstance(saved, dict) else {}, config.to_dict())
    if changed:
        raise ValueError(f"{run_dir} was trained with other settings ({', '.join(changed)} differ); "
                         "resume with the same settings or choose another --out")
    for folder in candidates:  # the newest intact one; a damaged one is said and passed over
        try:
            state = checkpoints.load_checkpoint(folder)
            break
        except checkpoints.CheckpointError as error:
            print(f"{run_dir}: not resuming from {folder.name}: {error}")
    else:
        raise checkpoints.CheckpointError(f"{run_dir}: every checkpoint is damaged; move {run_dir / checkpoints.CHECKPOINTS} "
                              "aside to train from the start")
    model.net.load_state_dict(state["model"])
    model.ema.net.load_state_dict(state["ema"])
    for name, net in zip(model.profiles.names(), model.profiles.nets) if model.profiles is not None else ():
        if name not in state["named"]:
            raise checkpoints.CheckpointError(f"{folder} holds no {name} weights to resume the EMA profile from")
        net.load_state_dict(state["named"][name])
    model.optimizer.load_state_dict(state["optimizer"])
    return int(state["state"]["step"]), float(state["state"].get("elapsed_s", 0.0)), state["state"].get("precision")


def settle_precision(config: TrainConfig, model: Model, prepared: TrainingData, accelerator,
                     resumed: str | None) -> tuple[str, str]:
    """(precision, how it was chosen): the config's, or for `auto` the resumed checkpoint's (a run
    keeps its arithmetic) or the faster of bf16 and fp32 for this network's training step on this
    machine (`devices.choose_precision`, measured by the main process and cached)."""
    if config.precision != "auto":
        return config.precision, config.precision
    if resumed in ("fp32", "bf16"):
        return resumed, f"{resumed} (this run's own, from its checkpoint)"
    device, processes, chosen = accelerator.device, accelerator.num_processes, [None]
    if accelerator.is_main_process:
        step = _probe_step(config, model, prepared, device, processes)
        chosen = [choose_precision(step, device, config_to_dict(model.spec.network),
                                   _probe_shape(config, prepared, processes))]
    if processes > 1:
        from accelerate.utils import broadcast_object_list

        chosen = broadcast_object_list(chosen)
    return chosen[0]


def _probe_shape(config: TrainConfig, prepared: TrainingData, processes: int) -> tuple[int, ...]:
    """(micro-batch, channels, height, width) of one process's forward pass."""
    micro = config.batch_size // processes // config.accumulation
    return (micro, prepared.data.channels, *prepared.data.size)


def _probe_step(config: TrainConfig, model: Model, prepared: TrainingData, device, processes: int = 1):
    """One micro-batch's forward and backward pass of the loss on noise images, leaving no
    gradient and no trace in the random streams: what precision=auto times."""
    micro, channels, height, width = _probe_shape(config, prepared, processes)
    denoiser = model.spec.build_denoiser(model.net)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    classes = prepared.num_classes

    def step() -> None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(micro, channels, height, width, generator=generator).to(device, memory_format=layout)
            labels = None if classes is None else torch.randint(0, classes + 1, (micro,), generator=generator).to(device)
            config.loss(denoiser, x, labels, generator=generator, **model.parts).mean().backward()
        model.net.zero_grad(set_to_none=True)

    return step


@dataclass
class Budget:
    """Phase 5: how long to train, in steps or in minutes of training (earlier processes count)."""

    total: int | None  # steps, or None for a minutes budget
    seconds: float | None

    @classmethod
    def of(cls, config: TrainConfig, steps_per_epoch: int) -> Budget:
        total = config.steps or (config.epochs * steps_per_epoch if config.epochs else None)
        if total is None and config.minutes is None:
            raise ValueError("no budget: set steps, epochs or minutes")
        return cls(total, 60 * config.minutes if total is None else None)

    def fraction(self, step: int, elapsed_s) -> float:
        """The share of the budget used; `elapsed_s()` (training seconds) is asked only for minutes."""
        return step / self.total if self.total is not None else elapsed_s() / self.seconds


class KIDSelection:
    """KID during training (the Keras example's checkpoint rule): every kid_every steps, KID of
    kid_images EMA samples (the run's walk, kid_steps steps) against the training data, logged; the weights
    with the lowest KID so far are kept as checkpoints/best."""

    def __init__(self, config: TrainConfig, device):
        from .features import load_extractor
        from .metrics import reference_features

        try:
            self.extractor = load_extractor(config.kid_extractor, classifier=config.kid_classifier,
                                            inception_weights=config.kid_inception_weights, device=device)
        except ValueError as error:
            raise ValueError(f"KID during training: {error}; or turn it off with kid_every=0") from None
        reference_data = dataclasses.replace(config.data, flip=False, validation_fraction=0.0)
        cache = Path.home() / ".cache" / "pixel-diffusion" / "reference"
        self.reference = reference_features(self.extractor, reference_data, cache, progress=config.progress)
        self.config = config

    @torch.no_grad()
    def __call__(self, spec: ModelSpec, ema_net, step: int, run_dir: Path, log: RunLog, *, model: dict) -> float:
        from .metrics import kid

        config = self.config
        images = sample_images(spec.build_denoiser(ema_net), spec, config.kid_images, spec.walk.replace(steps=config.kid_steps),
                               seed=config.seed + 1, progress=False, device=next(ema_net.parameters()).device)
        features, _ = self.extractor(images)
        value, spread = kid(self.reference, features, subsets=20, subset_size=min(1000, len(images)))
        log.write({"step": step, "kid": value, "kid_std": spread})
        best = checkpoints.best_metrics(run_dir)
        if best is None or value < best["kid"]:
            checkpoints.save_best(run_dir, step, model=model, ema=ema_net.state_dict(),
                                  metrics={"kid": value, "kid_std": spread}, description=spec.to_dict())
        return value


@torch.no_grad()
def preview(config: TrainConfig, spec: ModelSpec, net: torch.nn.Module, run_dir: Path, step: int) -> Path:
    """A grid from the same fixed noise at every preview, so progress is comparable."""
    walk = spec.walk.replace(sampler=config.preview_sampler, steps=config.preview_steps)
    images = sample_images(spec.build_denoiser(net), spec, config.preview_images, walk, seed=config.seed, progress=False,
                           device=next(net.parameters()).device)
    path = run_dir / "samples" / f"{checkpoints.step_name(step)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 64 // images.shape[1])
    image_grid(images, columns=int(math.ceil(math.sqrt(len(images)))), scale=scale).save(path)
    return path


# ---- the run ----------------------------------------------------------------------------------


def train(config: TrainConfig, run_dir: Path) -> Path:
    """Train (or continue training) the run in `run_dir`; returns the last checkpoint folder."""
    run_dir = Path(run_dir)
    accelerator = make_engine(config, run_dir)
    main = accelerator.is_main_process
    with checkpoints.run_lock(run_dir) if main else contextlib.nullcontext():  # before anything is written
        return _train(config, run_dir, accelerator)


def _begin(config: TrainConfig, run_dir: Path, model: Model, prepared: TrainingData, step: int, log: RunLog,
           arithmetic: str) -> None:
    """The main process's start: config.json written, the log cut back to `step`, the trackers
    started, one line said (what trains on what, where, in which precision)."""
    checkpoints.write_json(run_dir / "config.json", {"train": config.to_dict(), "model": model.spec.to_dict()})
    log.truncate(step)
    if log.accelerator is not None:  # the run reports to trackers
        start_trackers(log.accelerator, config)
    if config.progress:
        data = prepared.data
        workers = loader_workers(data, config.data.workers)
        print(f"{run_dir}: {summary(model.net)}; {len(data.train)} training images of "
              f"{data.size[0]}x{data.size[1]}x{data.channels}, {data.describe()}"
              + (f", {workers} decoding workers" if workers else "") + f"; on {arithmetic}"
              + (f"; resuming at step {step}" if step else ""))


def _set_up(config: TrainConfig, run_dir: Path, accelerator) -> tuple[Loop, int, float, RunLog]:
    """Phases 2 to 4 and the start: data, model, resume, precision, the first line, the engine's
    wrapping. Returns the loop, the step and training seconds it resumes from, and the log."""
    main, device = accelerator.is_main_process, accelerator.device
    prepared = prepare_data(config, run_dir, accelerator.num_processes, main, accelerator.process_index)
    model = build_model(config, prepared)
    step, trained_s, resumed = resume(config, run_dir, model)
    model.net.to(device)
    precision, said = settle_precision(config, model, prepared, accelerator, resumed)  # before DDP wraps the network
    log = RunLog(run_dir, enabled=main, accelerator=accelerator)
    if main:
        _begin(config, run_dir, model, prepared, step, log, f"{describe_device(device)} in {said}")
    model.net, model.optimizer = accelerator.prepare(model.net, model.optimizer)  # DDP under accelerate
    if config.compile:  # in place, so state_dict keys stay those of the plain network
        accelerator.unwrap_model(model.net).compile()
    model.averages_to(device)
    loop = Loop(config, accelerator, model, prepared, model.spec.build_denoiser(model.net), run_dir,
                Health(config, model.optimizer, run_dir), precision)
    return loop, step, trained_s, log


def _write_failed(error: OSError, step: int, save, run_dir: Path) -> TrainingError:
    """A write failed mid-training (metrics, a preview, an EMA snapshot): the steps taken are saved
    where the disk still takes them, and training stops in one line naming what failed and what is kept."""
    try:
        kept = save()
    except (OSError, ValueError):
        kept = None
    kept = kept or checkpoints.latest_checkpoint(run_dir)
    what = f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    return TrainingError(f"a write failed at step {step} ({what}); "
                         + (f"checkpoint {kept.name} is kept" if kept else "no checkpoint was written yet"))


def _marked(write):
    """`write` whose OSError is marked as a checkpoint's own (said as it is, never retried)."""
    def marked(*args, **kwargs):
        try:
            return write(*args, **kwargs)
        except OSError as error:
            error.checkpoint_write = True
            raise
    return marked


def _train(config: TrainConfig, run_dir: Path, accelerator) -> Path:
    main, world, device = accelerator.is_main_process, accelerator.num_processes, accelerator.device
    loop, step, trained_s, log = _set_up(config, run_dir, accelerator)
    model, prepared = loop.model, loop.prepared
    kid = KIDSelection(config, device) if config.kid_every and main else None
    budget = Budget.of(config, prepared.steps_per_epoch)
    started = time.perf_counter()

    def elapsed() -> float:  # training seconds of the run, this process's and the earlier ones'
        return trained_s + time.perf_counter() - started

    def agreed(value: float) -> float:  # one number on every process (the mean), so all stop together
        if world == 1:
            return value
        return accelerator.reduce(torch.tensor([value], dtype=torch.float64, device=device), "mean").item()

    def save(at: int) -> Path | None:
        accelerator.wait_for_everyone()
        if not main:
            return None
        optimizer = model.optimizer
        return _marked(checkpoints.save_checkpoint)(
            run_dir, at, model=accelerator.unwrap_model(model.net).state_dict(), ema=model.ema.net.state_dict(),
            optimizer=(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer).state_dict(),
            state={"epoch": at // prepared.steps_per_epoch, "images_seen": at * config.batch_size,
                   "elapsed_s": elapsed(), "precision": loop.precision},
            keep=config.keep_checkpoints, description=model.spec.to_dict(), named=model.named_weights())

    with _stop_on_signals() as stop, _progress(config, budget, step, main) as bar, contextlib.closing(log):
        last, window = None, Window()

        def settle() -> None:  # read the steps' verdicts: skipped ones logged, too many in a row stop
            for skipped in loop.health.read():
                log.write(skipped)

        try:
            while (fraction := budget.fraction(step, lambda: agreed(elapsed()))) < 1:
                lr = learning_rate(config, step, budget.total, None if budget.total is not None else fraction)
                try:
                    loss, norm, verdict = train_step(loop, step, lr)
                    window.add(loss, norm, verdict)
                except SkippedStep as skipped:
                    log.write({"step": step + 1, "skipped": str(skipped)})
                step += 1
                bar.advance(step, elapsed())
                if window.steps and (step % config.log_every == 0 or step == budget.total):
                    settle()
                    record = window.record(loop, step, lr, elapsed())
                    if record is not None:
                        bar.show(record)
                        log.write(record)
                    window = Window()
                if kid is not None and step % config.kid_every == 0:
                    kid(model.spec, model.ema.net, step, run_dir, log, model=accelerator.unwrap_model(model.net).state_dict())
                if config.preview_every and step % config.preview_every == 0 and main:
                    preview(config, model.spec, model.ema.net, run_dir, step)
                if step % config.checkpoint_every == 0:
                    settle()  # no checkpoint after a step that should stop training
                    last = save(step)
                if config.ema_snapshot_every and step % config.ema_snapshot_every == 0 and main:
                    checkpoints.save_snapshot(run_dir, step, model.named_weights(), model.profiles.sigma_rel_names())
                if agreed(float(stop["signal"] is not None)) > 0:  # a signal to any process stops them all
                    break
        except OSError as error:  # not a checkpoint's write (a full disk there is its own line): keep the steps taken
            if getattr(error, "checkpoint_write", False):
                raise
            raise _write_failed(error, step, lambda: save(step) if world == 1 else None, run_dir) from None
        settle()
        if last is None or int(last.name.split("-")[1]) != step:
            last = save(step)
        if main and config.preview_every and step % config.preview_every:
            preview(config, model.spec, model.ema.net, run_dir, step)  # the final state, unless just drawn
    if stop["signal"] is not None:
        raise KeyboardInterrupt(f"stopped by signal {stop['signal']} at step {step}; checkpoint {last.name if last else ''} saved")
    return last


@contextlib.contextmanager
def _stop_on_signals():
    """Ctrl-C or SIGTERM sets stop["signal"]: the loop finishes its step, checkpoints and leaves."""
    stop = {"signal": None}
    previous = {s: signal.signal(s, lambda number, frame: stop.update(signal=number)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _progress:
    """The training bar: steps of a steps budget, or minutes used and left of a minutes budget."""

    def __init__(self, config: TrainConfig, budget: Budget, step: int, main: bool):
        from tqdm.auto import tqdm

        self.minutes = budget.total is None
        disable = not (config.progress and main)
        if self.minutes:
            # tqdm puts ", " before a postfix; the text after the bar is the description instead.
            self.bar = tqdm(total=round(budget.seconds), desc="", disable=disable,
                            bar_format="training: {percentage:3.0f}%|{bar}| {desc}")
            self.total_s, self.used = budget.seconds, ""
        else:
            self.bar = tqdm(total=budget.total, initial=step, desc="training", unit="step", disable=disable)
        self.step, self.latest = step, ""

    def advance(self, step: int, elapsed_s: float) -> None:
        if self.minutes:  # the run's training time, earlier processes' included
            used = min(elapsed_s, self.total_s)
            self.bar.n = round(used)
            self.used = f"{_clock(used)} used, {_clock(self.total_s - used)} left, step {step}"
            self.bar.set_description_str(f"{self.used}, {self.latest}" if self.latest else self.used)
        else:
            self.bar.update(step - self.step)
        self.step = step

    def show(self, record: dict) -> None:
        self.latest = f"loss={record['loss']:.4f}, img_s={record['images_per_s']:.0f}"
        if self.minutes:
            self.bar.set_description_str(f"{self.used}, {self.latest}")
        else:
            self.bar.set_postfix_str(self.latest)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"
