"""One optimiser step of training, without waiting for the device.

A step's loss, gradient norm and verdict (were its loss and gradients finite?) stay tensors on the
device. The loop reads them once per log window (`Window.record`) and before every checkpoint
(`Health.read`), so a GPU is never held up to report a number. A fused Adam or AdamW skips a
non-finite step's update on the device, as a gradient scaler makes it do (`found_inf`); fp16's
loss scaler skips such steps itself; only an unfused optimiser has to be told before it steps,
one synchronisation a step. A skipped step changes no weight, so a checkpoint written after it
is as good as the one before it, and `skip_nonfinite` decides whether training goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoints
from .config import TrainConfig
from .devices import autocast
from .loader import BatchLoader, LoaderError, step_generator
from .samplers import combine_seeds

Tensor = torch.Tensor

SKIPPED = "skipped.txt"  # in the run: every data item left out, `item<TAB>why` a line

# A step's verdict: 0 finite; LOSS its loss was not finite; GRADIENTS its loss was, its gradients not.
LOSS, GRADIENTS = 1, 2


class TrainingError(RuntimeError):
    """Training stopped; the message says why and what was kept."""


class SkippedStep(Exception):
    """A step left out before its update for a non-finite loss or gradient (an unfused
    optimiser's, skip_nonfinite); the loop logs it."""


class Health:
    """The verdicts of the steps not yet read, and how many non-finite steps came in a row."""

    def __init__(self, config: TrainConfig, optimizer: torch.optim.Optimizer, run_dir: Path):
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimiser
        self.config, self.run_dir, self.optimizer = config, run_dir, inner
        self.scaled = config.precision == "fp16"  # the loss scaler owns the gradients' verdict
        fused = bool(getattr(inner, "defaults", {}).get("fused")) and getattr(inner, "_step_supports_amp_scaling", False)
        self.deferred = self.scaled or fused
        self.pending: list[tuple[int, Tensor, Tensor]] = []  # (step, verdict, loss)
        self.in_a_row = 0

    def judge(self, step: int, loss: Tensor, net: torch.nn.Module, norm: Tensor | None) -> Tensor:
        """The verdict of step `step` (0-based) as a 0-d tensor, before the optimiser steps; a fused
        optimiser is told to skip the update where it is not 0. An unfused one: SkippedStep now."""
        verdict = (~loss.isfinite()).int() * LOSS
        if not self.scaled:
            if norm is None:
                norm = torch.nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
            verdict = torch.where(verdict > 0, verdict, (~norm.isfinite()).int() * GRADIENTS)
        self.pending.append((step, verdict, loss))
        if self.deferred and not self.scaled:
            self.optimizer.found_inf = (verdict > 0).float()  # read by the fused kernel: no update, no step count
        elif not self.deferred:
            skipped = self.read()  # one synchronisation
            if skipped:
                self.optimizer.zero_grad(set_to_none=True)
                raise SkippedStep(skipped[0]["skipped"])
        return verdict

    def read(self) -> list[dict]:
        """Read the pending verdicts (one synchronisation): the log records of the skipped steps,
        or TrainingError at the first that makes too many in a row."""
        if not self.pending:
            return []
        verdicts = torch.stack([v for _, v, _ in self.pending]).tolist()
        pending, self.pending, skipped = self.pending, [], []
        limit = self.config.skip_nonfinite
        for (step, _, loss), verdict in zip(pending, verdicts):
            if verdict == 0:
                self.in_a_row = 0
                continue
            self.in_a_row += 1
            what = f"the loss became {loss.item()}" if verdict == LOSS else "the gradients became non-finite"
            if self.in_a_row > limit:
                raise self.stopped(step, what)
            skipped.append({"step": step + 1, "skipped": f"{what}; step skipped ({self.in_a_row} in a row of at most {limit})"})
        return skipped

    def stopped(self, step: int, what: str) -> TrainingError:
        # The last checkpoint holds no non-finite step's update: every checkpoint is written after a read.
        kept = checkpoints.latest_checkpoint(self.run_dir)
        limit = self.config.skip_nonfinite
        in_a_row = f" ({self.in_a_row} steps in a row)" if limit else ""
        return TrainingError(
            f"{what} at step {step + 1}{in_a_row}; training stopped. "
            + (f"The last good checkpoint, {kept.name}, is kept. " if kept else "No checkpoint was written yet. ")
            + "Try a lower lr, grad_clip, or fp32" + ("." if limit else ", or skip_nonfinite=N."))


@dataclass
class Loop:
    """What every step uses: the engine, the prepared model and data, the loss's denoiser."""

    config: TrainConfig
    accelerator: object
    model: object  # training.Model
    prepared: object  # training.TrainingData
    denoiser: torch.nn.Module
    run_dir: Path
    health: Health
    precision: str = "fp32"  # the settled arithmetic of the forward passes: fp32, bf16 or fp16

    def autocast(self):
        """The forward pass's autocast: fp16's through the engine (its loss scaler), bf16's by torch."""
        if self.precision == "fp16":
            return self.accelerator.autocast()
        return autocast(self.accelerator.device, self.precision)

    batches: object = None  # the BatchLoader's iterator, from the step training starts at
    broken: set = dataclasses.field(default_factory=set)  # items found unreadable in training batches

    def batch_of(self, step: int):
        """This process's share of the global batch of `step`, read (ahead, by the loader's workers)."""
        if self.batches is None:
            self.batches = iter(BatchLoader(self.prepared.items, step, workers=self.config.data.workers))
        try:
            batch = next(self.batches)
        except LoaderError as error:
            kept = checkpoints.latest_checkpoint(self.run_dir)
            raise TrainingError(f"{error} at step {step + 1}" + (f"; the last checkpoint, {kept.name}, is kept" if kept else "")) from None
        if batch.error is not None:
            raise ValueError(f"step {step + 1}: {batch.error}")
        if batch.step != step:
            raise RuntimeError(f"the loader gave the batch of step {batch.step} for step {step}")
        if batch.broken:
            self.report_broken(batch.broken)
        return batch

    def report_broken(self, broken: list[tuple[str, str]]) -> None:
        """Unreadable items met in training: named (the first few) and listed in skipped.txt, once each."""
        new = [(name, why) for name, why in broken if name not in self.broken]
        if new and self.accelerator.is_main_process:
            with open(self.run_dir / SKIPPED, "a") as f:
                f.writelines(f"{name}\t{why}\n" for name, why in new)
            if len(self.broken) < 5:
                print(f"skipped {new[0][0]} ({new[0][1]}), replaced by another image of its batch; all such are listed in "
                      f"{self.run_dir / SKIPPED}")
        self.broken.update(name for name, _ in new)

    def micro_batch(self, batch, step: int, k: int, micro: int):
        """(images on the device, labels with dropout or None, generator) of micro-batch k."""
        config, rank = self.config, self.accelerator.process_index
        generator = step_generator(config.seed, 2, step, rank, k)
        x = self.prepared.data.serve_images(batch.images[k * micro : (k + 1) * micro], generator=generator)
        labels = None if batch.labels is None else batch.labels[k * micro : (k + 1) * micro]
        if labels is not None and (config.conditional or config.clusters):
            dropped = torch.rand(len(labels), generator=generator) < config.label_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.prepared.num_classes), labels)
            labels = labels.to(self.accelerator.device, non_blocking=True)
        else:
            labels = None
        layout = torch.channels_last if config.channels_last else torch.contiguous_format
        return x.to(self.accelerator.device, memory_format=layout, non_blocking=True), labels, generator


def train_step(loop: Loop, step: int, lr: float) -> tuple[Tensor, Tensor | None, Tensor]:
    """Optimiser step `step` + 1 over its global batch. Returns tensors on the device, unread: the
    loss, the gradient norm before clipping (None where nothing clips or the engine clips by
    itself) and the step's verdict (0: finite and taken; else skipped, `Health`)."""
    config, accelerator, model = loop.config, loop.accelerator, loop.model
    for group in model.optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(combine_seeds(config.seed, combine_seeds(step, accelerator.process_index)))  # dropout
    mine, micro = loop.batch_of(step), config.batch_size // accelerator.num_processes // config.accumulation
    step_loss = None
    for k in range(config.accumulation):
        x, labels, generator = loop.micro_batch(mine, step, k, micro)
        with loop.autocast():
            loss = config.loss(loop.denoiser, x, labels, generator=generator, **model.parts).mean() / config.accumulation
        with accelerator.no_sync(model.net) if k < config.accumulation - 1 else contextlib.nullcontext():
            accelerator.backward(loss)
        step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
    norm = accelerator.clip_grad_norm_(model.net.parameters(), config.grad_clip) if config.grad_clip else None
    verdict = loop.health.judge(step, step_loss, model.net, norm)
    model.optimizer.step()
    model.optimizer.zero_grad(set_to_none=True)
    model.ema.update(accelerator.unwrap_model(model.net), step + 1)
    if model.profiles is not None:
        model.profiles.update(accelerator.unwrap_model(model.net), step + 1)
    return step_loss, norm, verdict


class Window:
    """The metrics of the steps since the last log line, summed on the device: mean loss and
    gradient norm of the steps taken, speed of all."""

    def __init__(self):
        self.loss = self.grad = self.taken = None
        self.steps, self.start = 0, time.perf_counter()

    def add(self, loss: Tensor, norm: Tensor | None, verdict: Tensor) -> None:
        taken = verdict == 0  # a skipped step's loss may be nan: left out of the sums
        self.steps += 1
        self.loss = _plus(self.loss, torch.where(taken, loss.float(), 0.0))
        self.taken = _plus(self.taken, taken.float())
        if norm is not None:
            self.grad = _plus(self.grad, torch.where(taken, norm.float(), 0.0))

    def record(self, loop: Loop, step: int, lr: float, elapsed_s: float) -> dict | None:
        """The log record (None when every step of the window was skipped); one synchronisation."""
        seconds = time.perf_counter() - self.start
        taken = self.taken.clamp(min=1)
        loss = loop.accelerator.reduce(self.loss / taken, "mean")
        grad = self.grad / taken if self.grad is not None else torch.zeros_like(loss)
        loss, grad, count = torch.stack([loss, grad, self.taken]).tolist()
        if count == 0:
            return None
        record = {"step": step, "loss": loss, "lr": lr, "images_per_s": self.steps * loop.config.batch_size / seconds,
                  "epoch": step / loop.prepared.steps_per_epoch, "elapsed_s": elapsed_s}
        if self.grad is not None:
            record["grad_norm"] = grad
        return record


def _plus(total: Tensor | None, value: Tensor) -> Tensor:
    return value if total is None else total + value
