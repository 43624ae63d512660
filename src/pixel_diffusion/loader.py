"""The training batches: which items each step takes, and their reading ahead in worker processes.

A step's batch is a pure function of (seed, step): the epoch is `step // steps_per_epoch`, its
order is drawn from (seed, epoch), and the step takes the next slice of it. A resumed run
therefore sees exactly the batches an uninterrupted one would, whatever the number of workers,
and no position needs saving beyond the step.

- A set in memory, or read item by item (`ImageData.streamed` without shards), is permuted
  whole each epoch; each process takes its share of every global batch.
- Tar shards are walked as WebDataset walks them: the shards in a drawn order, each process its
  own shards (every world-th), their items through a shuffle buffer (`shards.stream_order`), so
  reads run forward through a few shards at a time.

`BatchLoader` decodes the batches of the steps ahead in DataLoader workers (`workers`, with
`prefetch` batches each) and hands them over in step order; with no workers it reads in the
training process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .data import ImageData
from .samplers.kernel import combine_seeds
from .shards import steps_per_epoch, stream_order


def step_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a key such as (seed, purpose, step, rank)."""
    seed = int(key[0])
    for part in key[1:]:
        seed = combine_seeds(seed, int(part))
    return torch.Generator().manual_seed(seed)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The permutation of the training split used in `epoch` (a set read in any order)."""
    return torch.randperm(count, generator=step_generator(seed, 1, epoch))


@dataclass
class Batch:
    """One process's share of a step's batch, as read: uint8 images (B, C, H, W), labels (B,) or
    None, and the items that could not be read (name, why), each replaced by another of the batch."""

    step: int
    images: torch.Tensor | None
    labels: torch.Tensor | None
    broken: list[tuple[str, str]]
    error: str | None = None  # why the batch could not be read (raised in the training process)


class StepItems:
    """Which items process `rank` of `world` reads at each step, for a global `batch_size`."""

    def __init__(self, data: ImageData, *, seed: int, batch_size: int, rank: int = 0, world: int = 1):
        self.data, self.seed, self.batch_size, self.rank, self.world = data, seed, batch_size, rank, world
        self.share = batch_size // world
        self._epoch: tuple[int, np.ndarray] | None = None
        if data.shard_counts:
            if len(data.shard_counts) < world:
                raise ValueError(f"{world} processes each read their own shards, and the data has only "
                                 f"{len(data.shard_counts)}; write it into more shards (pixel-diffusion pack --shard-size)")
            self.keep = np.zeros(len(data), bool)
            self.keep[data.train] = True
            self.steps_per_epoch = steps_per_epoch(list(data.shard_counts), self.keep, self.share, world)
        else:
            self.steps_per_epoch = len(data.train) // batch_size
        if self.steps_per_epoch == 0 and world == 1:
            raise ValueError(f"batch_size {batch_size} is larger than the {len(data.train)} training images")
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size {batch_size} takes {self.share} images a step from each of {world} processes' "
                             "own shards, more than the smallest share of shards holds; write smaller shards or use a "
                             "smaller batch")

    def order(self, epoch: int) -> np.ndarray:
        """This process's items of `epoch`, in order (the shards' walk), or the whole set's permutation."""
        if self._epoch is None or self._epoch[0] != epoch:
            data = self.data
            if data.shard_counts:
                order = stream_order(list(data.shard_counts), self.keep, seed=self.seed, epoch=epoch,
                                     buffer=data.shuffle_buffer, rank=self.rank, world=self.world)
            else:
                order = np.asarray(data.train)[epoch_order(self.seed, epoch, len(data.train)).numpy()]
            self._epoch = (epoch, order)
        return self._epoch[1]

    def __call__(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        if self.data.shard_counts:
            return order[index * self.share : (index + 1) * self.share]
        batch = order[index * self.batch_size : (index + 1) * self.batch_size]
        return batch[self.rank * self.share : (self.rank + 1) * self.share]


class _StepBatches(torch.utils.data.Dataset):
    """Step -> Batch, read by DataLoader workers."""

    def __init__(self, items: StepItems):
        self.items = items

    def __getitem__(self, step: int) -> Batch:
        try:
            images, broken, used = self.items.data.read_batch(self.items(step))
        except ValueError as error:  # carried back whole, so the training process says it in one line
            return Batch(step, None, None, [], str(error))
        return Batch(step, images, self.items.data.labels_of(used, images), broken)


def _as_is(batch):
    return batch


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def loader_workers(data: ImageData, workers: int | None = None) -> int:
    """The decoding workers: `workers`, or when None, none for a set in memory and otherwise half
    the processor's cores (at least 1), the rest being the training step's. Workers start by
    fork; where there is none, the training process reads (0)."""
    if not fork_available():
        return 0
    if workers is not None:
        return workers
    return max(1, (os.cpu_count() or 2) // 2) if data.streamed else 0


class BatchLoader:
    """The batches of steps `start`, `start + 1`, ..., read ahead by `workers` processes."""

    timeout = 600.0  # seconds a worker may take over one batch before the loader gives up

    def __init__(self, items: StepItems, start: int, *, workers: int | None = None, prefetch: int = 4):
        self.items, self.start = items, start
        self.workers = loader_workers(items.data, workers)
        self.prefetch = prefetch

    def __iter__(self) -> Iterator[Batch]:
        dataset = _StepBatches(self.items)
        if not self.workers:
            step = self.start
            while True:
                yield dataset[step]
                step += 1
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=range(self.start, 2**62), num_workers=self.workers,
            collate_fn=_as_is, prefetch_factor=self.prefetch, multiprocessing_context="fork",
            worker_init_fn=_worker_init, timeout=self.timeout)
        try:
            yield from loader
        except RuntimeError as error:  # a worker killed, or stuck past the timeout: never a hang
            raise LoaderError(f"reading the training data failed: {str(error).splitlines()[0]}") from None


class LoaderError(RuntimeError):
    """The decoding workers died or stalled; the training loop stops with its last checkpoint."""


def _worker_init(worker: int) -> None:
    torch.set_num_threads(1)  # a worker decodes; the training step keeps the cores' threads
