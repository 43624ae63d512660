"""Training: `train(config, run_dir)` reads top to bottom.

Every random draw of a step comes from a generator seeded by (seed, step, ...): the data order
of an epoch, the flips and label dropout of a batch, the times and noise of the loss, and
dropout. A checkpoint therefore needs only the step, the weights, the EMA and the optimiser's
state, and a run resumed from any checkpoint ends bit-identical to one never interrupted.
Multi-GPU and multi-node runs go through Hugging Face accelerate
(`accelerate launch -m pixel_diffusion train ...`): each process takes its share of every global
batch, and the learning rate and EMA advance once per optimiser step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoints
from .config import TrainConfig, differences
from .clusters import drawn_clusters
from .data import Normalisation, load_images
from .diffusion import Denoiser, Guided
from .networks import build_network, config_from_dict, config_to_dict, network_config, summary
from .samplers import _combine, get_sampler, sample
from .schedules import make_schedule
from .viz import image_grid


class TrainingError(RuntimeError):
    """Training stopped; the message says why and what was kept."""


# ---- model ------------------------------------------------------------------------------------


def resolve_network(config: TrainConfig, channels: int, num_classes: int | None) -> dict:
    """The named network adapted to the data, with the config's field overrides, as a dict."""
    base = config_to_dict(network_config(config.network, in_channels=channels, num_classes=num_classes))
    base.update(config.network_options)
    return config_to_dict(config_from_dict(base))  # validates the overrides


def build_denoiser(model_config: dict, net: torch.nn.Module | None = None) -> Denoiser:
    """A Denoiser from the `model` section of a run's config.json."""
    net = net if net is not None else build_network(model_config["network"])
    schedule = make_schedule(model_config["schedule"], **model_config["schedule_options"])
    return Denoiser(net, schedule, model_config["prediction"], model_config["noise_input"])


class EMA:
    """Exponential moving average of a network's parameters (buffers are copied)."""

    def __init__(self, net: torch.nn.Module, decay: float, warmup: bool):
        self.net = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        """After optimiser step `step` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        ema, live = list(self.net.parameters()), list(net.parameters())
        torch._foreach_lerp_(ema, live, 1 - decay)
        for ema_buffer, buffer in zip(self.net.buffers(), net.buffers()):
            ema_buffer.copy_(buffer)


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


def _check_cpu_compiler() -> None:
    """torch.compile builds C++ for a CPU: say so before training rather than fail at its first step."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception:
        raise ValueError("compile=true on a CPU needs a C++ compiler (g++ or clang++ on the PATH, or $CXX); "
                         "install one or set compile=false") from None


def _clusters(config: TrainConfig, data, run_dir: Path, main: bool) -> torch.Tensor:
    """The k-means cluster of every item (int64, indexed like the data), found once and kept in
    the run (clusters.json), so that a resumed run trains on the same labels."""
    from .clusters import cluster_labels, pixel_features

    path = run_dir / "clusters.json"
    items = len(data)
    if config.clusters > len(data.train):
        raise ValueError(f"clusters={config.clusters} needs at least as many training images; the data has "
                         f"{len(data.train)} (set fewer clusters, or clusters=0)")
    if path.exists():
        saved = checkpoints.read_json(path)
        if saved["k"] == config.clusters and len(saved["labels"]) == items:
            return torch.tensor(saved["labels"], dtype=torch.long)
    # Pixel features a chunk at a time, so a set that streams from disk is never in memory whole.
    features = torch.cat([pixel_features(data.uint8(np.arange(start, min(start + 1024, items))))
                          for start in range(0, items, 1024)])
    labels = cluster_labels(features, config.clusters, seed=config.seed)
    if main:
        checkpoints.write_json(path, {"k": config.clusters, "labels": labels.tolist()})
    return labels


def _generator(*key: int) -> torch.Generator:
    seed = int(key[0])
    for part in key[1:]:
        seed = _combine(seed, int(part))
    return torch.Generator().manual_seed(seed)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The permutation of the training split used in `epoch`."""
    return torch.randperm(count, generator=_generator(seed, 1, epoch))


# ---- the run ----------------------------------------------------------------------------------


def train(config: TrainConfig, run_dir: Path) -> Path:
    """Train (or continue training) the run in `run_dir`; returns the last checkpoint folder."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    # 1. The engine: device, processes and mixed precision.
    if config.precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("precision fp16 needs a GPU (it uses loss scaling); use bf16 or fp32 on the CPU")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # One process: a previous run in this interpreter may have fixed accelerate's global state.
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[config.precision],
        cpu=config.device == "cpu",
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    if config.compile and device.type == "cpu":
        _check_cpu_compiler()

    # 2. Data.
    data = load_images(config.data, progress=config.progress and accelerator.is_main_process)
    if config.conditional and data.labels is None:
        raise ValueError(f"conditional training needs labels, and {config.data.source!r} has none")
    num_classes = int(data.labels.max()) + 1 if config.conditional else None
    label_prior = None  # with clusters: each cluster's share of the training images, which sampling draws from
    if config.clusters:
        data = dataclasses.replace(data, labels=_clusters(config, data, run_dir, accelerator.is_main_process),
                                   class_names=[])
        num_classes = config.clusters
        counts = torch.bincount(data.labels[torch.as_tensor(data.train)], minlength=num_classes)
        label_prior = (counts / counts.sum()).tolist()
    global_batch = config.batch_size
    if global_batch % (world * config.accumulation):
        raise ValueError(f"batch_size {global_batch} must be divisible by processes x accumulation ({world} x {config.accumulation})")
    steps_per_epoch = len(data.train) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {global_batch} is larger than the {len(data.train)} training images")

    # 3. Model, EMA, optimiser; the full description goes into config.json.
    model_config = {
        "network": resolve_network(config, data.channels, num_classes),
        "schedule": config.schedule,
        "schedule_options": config.schedule_options,
        "prediction": config.prediction,
        "noise_input": config.noise_input,
        "normalisation": dataclasses.asdict(data.normalisation),
        "channels": data.channels,
        "image_size": list(data.size),
        "num_classes": num_classes,
        "class_names": data.class_names,
        "label_prior": label_prior,
    }
    torch.manual_seed(config.seed)
    net = build_network(model_config["network"])
    ema = EMA(net, config.ema_decay, config.ema_warmup)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(net.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                                **({"fused": True} if config.fused_optimizer else {}))

    # 4. Resume from the newest checkpoint, if the run directory has one.
    step, trained_s = 0, 0.0  # trained_s: training seconds before this process, for a minutes budget
    saved_config = run_dir / "config.json"
    latest = checkpoints.latest_checkpoint(run_dir)
    if latest is not None:
        saved = checkpoints.read_json(saved_config)
        changed = differences(saved.get("train", {}), config.to_dict())
        if changed:
            raise ValueError(
                f"{run_dir} was trained with other settings ({', '.join(changed)} differ); "
                "resume with the same settings or choose another --out"
            )
        state = checkpoints.load_checkpoint(latest)
        net.load_state_dict(state["model"])
        ema.net.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["state"]["step"])
        trained_s = float(state["state"].get("elapsed_s", 0.0))
    if accelerator.is_main_process:
        checkpoints.write_json(saved_config, {"train": config.to_dict(), "model": model_config})
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        if config.progress:
            print(f"{run_dir}: {summary(net)}; {len(data.train)} training images of "
                  f"{data.size[0]}x{data.size[1]}x{data.channels}" + (f"; resuming at step {step}" if step else ""))

    net, optimizer = accelerator.prepare(net, optimizer)  # DDP wraps the network under accelerate
    if config.compile:  # in place, so state_dict keys stay those of the plain network
        accelerator.unwrap_model(net).compile()
    denoiser = build_denoiser(model_config, net)
    ema.net.to(device)

    # KID during training: the extractor and the reference features (cached) are ready up front.
    kid_setup = None
    if config.kid_every and accelerator.is_main_process:
        from .features import load_extractor
        from .metrics import reference_features

        try:
            extractor = load_extractor(config.kid_extractor, classifier=config.kid_classifier,
                                       inception_weights=config.kid_inception_weights, device=device)
        except ValueError as error:
            raise ValueError(f"KID during training: {error}; or turn it off with kid_every=0") from None
        reference_data = dataclasses.replace(config.data, flip=False, validation_fraction=0.0)
        cache = Path.home() / ".cache" / "pixel-diffusion" / "reference"
        kid_setup = (extractor, reference_features(extractor, reference_data, cache, progress=config.progress))

    # 5. Budget.
    total = config.steps or (config.epochs * steps_per_epoch if config.epochs else None)
    if total is None and config.minutes is None:
        raise ValueError("no budget: set steps, epochs or minutes")
    budget_s = 60 * config.minutes if total is None else None  # counts the time of earlier processes too

    # 6. Stop cleanly on Ctrl-C or SIGTERM: finish the step, checkpoint, leave.
    stop = {"signal": None}
    previous = {s: signal.signal(s, lambda number, frame: stop.update(signal=number)) for s in (signal.SIGINT, signal.SIGTERM)}

    def save(at: int) -> Path | None:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return None
        return checkpoints.save_checkpoint(
            run_dir, at,
            model=accelerator.unwrap_model(net).state_dict(),
            ema=ema.net.state_dict(),
            optimizer=optimizer.optimizer.state_dict() if hasattr(optimizer, "optimizer") else optimizer.state_dict(),
            state={"epoch": at // steps_per_epoch, "images_seen": at * global_batch, "elapsed_s": elapsed()},
            keep=config.keep_checkpoints,
        )

    # 7. The loop: one optimiser step per global batch.
    micro = global_batch // world // config.accumulation
    loss_fn = config.loss
    window_loss, window_grad, window_start, window_steps = 0.0, None, time.perf_counter(), 0
    started = window_start

    def elapsed() -> float:  # training seconds of the run, this process's and the earlier ones'
        return trained_s + time.perf_counter() - started

    def agreed(value: float) -> float:  # one number on every process (the mean), so all stop together
        if world == 1:
            return value
        return accelerator.reduce(torch.tensor([value], dtype=torch.float64, device=device), "mean").item()

    bar = tqdm(total=total, initial=step, desc="training", unit="step", disable=not (config.progress and accelerator.is_main_process))
    last = None
    try:
        while True:
            fraction = None if total is not None else agreed(elapsed()) / budget_s  # of a minutes budget
            if (step >= total) if total is not None else (fraction >= 1):
                break
            epoch, index = divmod(step, steps_per_epoch)
            order = epoch_order(config.seed, epoch, len(data.train))
            batch = torch.as_tensor(data.train)[order[index * global_batch : (index + 1) * global_batch]]
            mine = batch[rank * (global_batch // world) : (rank + 1) * (global_batch // world)]
            lr = learning_rate(config, step, total, fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(_combine(config.seed, _combine(step, rank)))  # dropout
            step_loss = 0.0
            for k in range(config.accumulation):
                indices = mine[k * micro : (k + 1) * micro]
                generator = _generator(config.seed, 2, step, rank, k)
                x, labels = data.serve(indices, generator=generator)
                if labels is not None and (config.conditional or config.clusters):
                    dropped = torch.rand(len(labels), generator=generator) < config.label_dropout
                    labels = torch.where(dropped, torch.full_like(labels, num_classes), labels).to(device)
                else:
                    labels = None
                x = x.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
                with accelerator.autocast():
                    loss = loss_fn(denoiser, x, labels, generator=generator).mean() / config.accumulation
                if not torch.isfinite(loss):
                    kept = checkpoints.latest_checkpoint(run_dir)
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {step + 1}; training stopped. "
                        + (f"The last good checkpoint, {kept.name}, is kept. " if kept else "No checkpoint was written yet. ")
                        + "Try a lower lr, grad_clip, or fp32."
                    )
                with accelerator.no_sync(net) if k < config.accumulation - 1 else contextlib.nullcontext():
                    accelerator.backward(loss)
                step_loss += loss.item()
            if config.grad_clip:  # the norm before clipping is logged (its window mean)
                norm = accelerator.clip_grad_norm_(net.parameters(), config.grad_clip)
                if norm is not None:  # None where the engine clips by itself (DeepSpeed)
                    window_grad = norm if window_grad is None else window_grad + norm
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            ema.update(accelerator.unwrap_model(net), step)

            # Bookkeeping: metrics, previews, checkpoints.
            window_loss += step_loss
            window_steps += 1
            bar.update(1)
            if step % config.log_every == 0 or step == total:
                seconds = time.perf_counter() - window_start
                mean_loss = accelerator.reduce(torch.tensor(window_loss / window_steps, device=device), "mean").item()
                record = {"step": step, "loss": mean_loss, "lr": lr,
                          "images_per_s": window_steps * global_batch / seconds, "epoch": step / steps_per_epoch,
                          "elapsed_s": elapsed()}
                if window_grad is not None:
                    record["grad_norm"] = float(window_grad / window_steps)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
                if accelerator.is_main_process:
                    with open(run_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    _tensorboard(run_dir, record)
                window_loss, window_grad, window_start, window_steps = 0.0, None, time.perf_counter(), 0
            if kid_setup is not None and step % config.kid_every == 0:
                measure_kid(config, model_config, ema.net, run_dir, step, *kid_setup,
                            model=accelerator.unwrap_model(net).state_dict())
            if config.preview_every and step % config.preview_every == 0 and accelerator.is_main_process:
                preview(config, model_config, ema.net, run_dir, step)
            if step % config.checkpoint_every == 0:
                last = save(step)
            if agreed(float(stop["signal"] is not None)) > 0:  # a signal to any process stops them all
                break
        if last is None or int(last.name.split("-")[1]) != step:
            last = save(step)
        if accelerator.is_main_process and config.preview_every and step % config.preview_every:
            preview(config, model_config, ema.net, run_dir, step)  # the final state, unless just drawn
    finally:
        bar.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    if stop["signal"] is not None:
        raise KeyboardInterrupt(f"stopped by signal {stop['signal']} at step {step}; checkpoint {last.name if last else ''} saved")
    return last


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the step a run resumes from (they will be logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    checkpoints.atomic_write_text(path, "".join(line + "\n" for line in kept))


@torch.no_grad()
def measure_kid(config, model_config, net, run_dir: Path, step: int, extractor, reference, *, model: dict) -> float:
    """KID of kid_images EMA samples (kid_steps DDIM steps) against the training data; logged to
    metrics.jsonl, and the weights kept as checkpoints/best when it is the lowest so far."""
    from .metrics import kid

    denoiser = build_denoiser(model_config, net)
    images = sample_images(denoiser, model_config, config.kid_images, sampler="ddim", steps=config.kid_steps,
                           seed=config.seed + 1, progress=False, device=next(net.parameters()).device)
    features, _ = extractor(images)
    value, spread = kid(reference, features, subsets=20, subset_size=min(1000, len(images)))
    record = {"step": step, "kid": value, "kid_std": spread}
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    _tensorboard(run_dir, record)
    best = checkpoints.best_metrics(run_dir)
    if best is None or value < best["kid"]:
        checkpoints.save_best(run_dir, step, model=model, ema=net.state_dict(), metrics={"kid": value, "kid_std": spread})
    return value


_writers: dict = {}


def _tensorboard(run_dir: Path, record: dict) -> None:
    """Scalars to TensorBoard when the tensorboard package is installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    writer = _writers.get(run_dir) or _writers.setdefault(run_dir, SummaryWriter(str(run_dir / "tensorboard")))
    for key in ("loss", "lr", "images_per_s", "kid"):
        if key in record:
            writer.add_scalar(f"train/{key}", record[key], record["step"])
    writer.flush()


@torch.no_grad()
def preview(config: TrainConfig, model_config: dict, net: torch.nn.Module, run_dir: Path, step: int) -> Path:
    """A grid from the same fixed noise at every preview, so progress is comparable."""
    denoiser = build_denoiser(model_config, net)
    images = sample_images(denoiser, model_config, config.preview_images, sampler=config.preview_sampler,
                           steps=config.preview_steps, seed=config.seed, progress=False,
                           device=next(net.parameters()).device)
    path = run_dir / "samples" / f"{checkpoints.step_name(step)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 64 // images.shape[1])
    image_grid(images, columns=int(math.ceil(math.sqrt(len(images)))), scale=scale).save(path)
    return path


# ---- using a trained run ----------------------------------------------------------------------


def load_run(run_dir: Path, weights: str = "ema", device: str | torch.device = "cpu") -> tuple[Denoiser, dict]:
    """The denoiser of a run's newest checkpoint (EMA weights by default) and its model config."""
    run_dir = Path(run_dir)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this machine has no CUDA GPU; use --device cpu")
    if not (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} is not a run directory (no config.json); train one with pixel-diffusion train")
    latest = checkpoints.latest_checkpoint(run_dir)
    if latest is None:
        raise ValueError(f"{run_dir} has no checkpoint yet; train it first or wait for its first checkpoint")
    model_config = checkpoints.read_json(run_dir / "config.json")["model"]
    net = build_network(model_config["network"])
    net.load_state_dict(checkpoints.load_weights(latest / f"{'ema' if weights == 'ema' else 'model'}.safetensors"))
    return build_denoiser(model_config, net.eval().to(device)), model_config


def classes_in_turn(model_config: dict, n: int) -> torch.Tensor | None:
    """Labels 0, 1, ..., K-1, 0, ... for n samples of a run trained on its data's K labels, so that
    each class is drawn equally often (and the classifier's accuracy can be measured); None for an
    unconditional run and for a run on clusters (sample_images draws those by their share)."""
    classes = model_config.get("num_classes")
    return None if classes is None or model_config.get("label_prior") else torch.arange(n) % classes


def sample_images(
    denoiser, model_config: dict, n: int, *, sampler: str = "ddim", steps: int = 50, seed: int = 0,
    labels: torch.Tensor | None = None, guidance: float = 1.0, batch_size: int = 64, progress: bool = True,
    device: str | torch.device = "cpu", precision: str = "fp32", **options,
) -> np.ndarray:
    """n uint8 images (n, H, W, C) from a trained denoiser, clipped to the data range. With
    precision "bf16" the network runs under bf16 autocast; the sampler's arithmetic stays float32.
    A run trained on clusters (`clusters=k`) draws each sample's cluster by its share of the data
    unless `labels` name them."""
    get_sampler(sampler)
    if labels is None:
        labels = drawn_clusters(model_config, n, seed)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown sampling precision {precision!r}; expected fp32 or bf16")
    normalisation = Normalisation(**model_config["normalisation"])
    channels, (h, w) = model_config["channels"], model_config["image_size"]
    if labels is not None:
        if model_config.get("num_classes") is None:
            raise ValueError("this run was trained without labels; drop --label")
        denoiser = Guided(denoiser, guidance, model_config["num_classes"])
    options.setdefault("clip", tuple(r.to(device) for r in normalisation.data_range(channels)))
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        x = sample(denoiser, (channels, h, w), n, sampler=sampler, steps=steps, seed=seed, labels=labels,
                   batch_size=batch_size, progress=progress, device=device, **options)
    return normalisation.to_uint8(x)
