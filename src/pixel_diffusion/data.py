"""Image data: one transform pipeline, a deterministic split and a fast batch server.

A source (sources.py) gives uint8 images (H, W, C) and optional integer labels: a folder of
image files, .npz/.npy arrays, MNIST-style idx files, CIFAR-10 python batches, a built-in set, a
Hugging Face dataset, or tar shards. `load_images(DataConfig)` returns `ImageData` in one of two
forms. In memory: every image decoded once (bad files skipped with one summary warning), cropped,
resized with antialiasing, its channels fixed, the normalisation measured on the training split,
and the uint8 images cached (or re-decoded on each pass when they would not fit). Streamed (tar
shards, or `stream="yes"`): nothing decoded up front; a seeded sample fixes size, channels and
statistics, and each batch is decoded when training reads it (loader.py reads ahead).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

# The readers and the source registry live in sources.py; their names are re-exported here.
from .sources import (  # noqa: F401
    BUILTINS,
    IMAGE_SUFFIXES,
    SOURCES,
    Source,
    as_uint8_images,
    decode_image,
    load_builtin,
    open_source,
    read_arrays,
    read_image_file,
)

# ---- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are prepared; saved with every run."""

    source: str = "mnist-5k"  # folder, .npz/.npy, idx file, CIFAR folder, hf:NAME, or a built-in
    image_size: int | None = None  # square side; None keeps the source's size when all agree
    mixed_sizes_to: int | None = None  # with image_size None: the side for a source of mixed sizes
    fit: str = "crop"  # crop: centre square, then resize; resize-crop: shorter side, then centre crop
    allow_upscale: bool = False  # otherwise images smaller than image_size are skipped
    channels: str = "auto"  # auto (grayscale when every image is), 1 or 3
    alpha: str = "white"  # white: composite transparency over white; drop: discard it
    class_folders: bool = False  # image folders: first-level sub-folders are the labels
    flip: bool = False  # random horizontal flips when serving training batches
    normalise: str = "minus-one-one"  # minus-one-one: [-1, 1]; standardise: per channel, training split
    validation_fraction: float = 0.0
    seed: int = 0  # of the train/validation split
    max_pixels: int = 89_478_485  # larger files are refused as decompression bombs
    max_cache_bytes: int | None = None  # default: half the available memory
    hf_split: str = "train"
    hf_image_column: str | None = None
    hf_label_column: str | None = None
    # auto: stream tar shards, and any set too large to hold in memory; yes: stream; no: decode the
    # whole set into memory first (read item by item when it does not fit).
    stream: str = "auto"
    shuffle_buffer: int = 10_000  # streamed shards: items in the shuffle buffer
    workers: int | None = None  # processes decoding training batches ahead; None: loader.loader_workers
    stream_sample: int = 5_000  # streamed: the images (a seeded sample) that fix size, channels, statistics

    def __post_init__(self):
        for name, value, options in (
            ("fit", self.fit, FITS),
            ("channels", str(self.channels), ("auto", "1", "3")),
            ("alpha", self.alpha, ("white", "drop")),
            ("normalise", self.normalise, ("minus-one-one", "standardise")),
            ("stream", self.stream, ("auto", "yes", "no")),
        ):
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(options)}")
        object.__setattr__(self, "channels", str(self.channels))
        for name in ("image_size", "mixed_sizes_to"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        for name in ("shuffle_buffer", "stream_sample"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be 0 or more; got {self.workers}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in [0, 1); got {self.validation_fraction}")


# How a set is served, not which images it holds: left out of the keys of cached features.
SERVING_FIELDS = ("stream", "shuffle_buffer", "workers", "stream_sample")


def image_fields(config: DataConfig) -> dict:
    """The fields of a DataConfig that decide its images (a cache key)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in SERVING_FIELDS}


# ---- transforms -------------------------------------------------------------------------------


def _centre_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def _fit_crop(image: Image.Image, size: int) -> Image.Image:
    image = _centre_square(image)
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC, reducing_gap=None)


def _fit_resize_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    scale = size / min(w, h)
    if scale != 1:
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    return _centre_square(image)


FITS = {"crop": _fit_crop, "resize-crop": _fit_resize_crop}


def is_gray(array: np.ndarray) -> bool:
    """Whether a uint8 (H, W, C) image is grayscale: one channel, or three equal ones."""
    return array.shape[-1] == 1 or bool((array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all())


def fit_image(array: np.ndarray, config: DataConfig) -> np.ndarray:
    """Crop and resize (antialiased bicubic) one uint8 (H, W, C) image to the configured square;
    store an RGB image whose channels are all equal as grayscale."""
    if array.shape[-1] == 3 and is_gray(array):
        array = array[..., :1]
    size = config.image_size
    if size is None:
        return array
    h, w = array.shape[:2]
    if min(h, w) < size and not config.allow_upscale:
        raise ValueError(f"{w}x{h} is smaller than {size}x{size} (set allow_upscale to enlarge it)")
    if (h, w) == (size, size):
        return array
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    fitted = np.asarray(FITS[config.fit](image, size), dtype=np.uint8)
    return fitted[..., None] if fitted.ndim == 2 else fitted


def convert_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (..., H, W, C) with C in 1, 3 -> C = channels (ITU-R 601 luma for RGB -> gray)."""
    if array.shape[-1] == channels:
        return array
    if channels == 3:
        return np.repeat(array, 3, axis=-1)
    luma = array[..., 0] * 0.299 + array[..., 1] * 0.587 + array[..., 2] * 0.114
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


@dataclass(frozen=True)
class Normalisation:
    """uint8 pixels <-> model inputs. minus-one-one: x / 127.5 - 1. standardise: (x / 255 - mean) / std
    per channel, with mean and std measured on the training split (the Keras example's choice)."""

    kind: str = "minus-one-one"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "minus-one-one":
            mean, std = [0.5] * like.shape[1], [0.5] * like.shape[1]
        else:
            mean, std = self.mean, self.std
        view = (1, len(mean), 1, 1)
        return (torch.tensor(mean, dtype=torch.float32, device=like.device).view(view),
                torch.tensor(std, dtype=torch.float32, device=like.device).view(view))

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 model inputs."""
        mean, std = self._stats(images)
        return (images.float() / 255 - mean) / std

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Model outputs (B, C, H, W) -> uint8 (B, H, W, C), clipped to the data range."""
        mean, std = self._stats(x)
        pixels = ((x.detach().float() * std + mean) * 255).round().clamp(0, 255)
        return pixels.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def data_range(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of model inputs, shaped (C, 1, 1), for clipping samples."""
        mean, std = self._stats(torch.empty(1, channels))
        return ((0 - mean) / std)[0], ((1 - mean) / std)[0]


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 tensor (N, C, H, W) in [-1, 1]."""
    return Normalisation().to_model(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """float tensor (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), clipped."""
    return Normalisation().to_uint8(x)


# ---- loading and serving ----------------------------------------------------------------------


def split_indices(count: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, validation) index arrays, each sorted."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = int(round(validation_fraction * count))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass
class ImageData:
    """Prepared images, served as normalised float batches.

    `images` is the uint8 cache (N, C, H, W), or None when the set is read item by item: then
    `read(i)` decodes item i again on each pass. A streamed set (`streamed`) was not decoded up
    front: its size, channels and statistics come from a sample of `sampled` images, and an item
    found unreadable on the way is replaced by another of its batch and reported."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    normalisation: Normalisation
    channels: int
    size: tuple[int, int]
    train: np.ndarray
    validation: np.ndarray
    flip: bool = False
    class_names: list[str] = field(default_factory=list)
    read: Callable[[int], np.ndarray] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, why) of every item left out
    streamed: bool = False
    sampled: int = 0  # streamed: the images the size, channels and statistics were measured on
    shard_counts: tuple[int, ...] = ()  # tar shards: items per shard, numbered shard by shard
    shuffle_buffer: int = 1
    fingerprint: list | None = None  # tar shards: [name, bytes, samples] of each
    name: Callable[[int], str] | None = None  # item -> its name in the source, for reports
    label_fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # labels from pixels (clusters of a stream)

    def __len__(self) -> int:
        return len(self.train) + len(self.validation)

    def read_batch(self, indices) -> tuple[torch.Tensor, list[tuple[str, str]], np.ndarray]:
        """uint8 (B, C, H, W) of the given items, the items that could not be read (name, why),
        and the items each row holds: the unreadable items are replaced by the batch's readable
        ones in turn (the first, the second, ...), so a batch keeps its size."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return self.images[torch.from_numpy(indices)], [], indices
        arrays, broken, good = [], [], []
        for row, i in enumerate(indices):
            try:
                arrays.append(self.read(int(i)))
                good.append(row)
            except ValueError as error:
                arrays.append(None)
                broken.append((self.name(int(i)) if self.name else str(int(i)), str(error)))
        if not good:
            raise ValueError(f"no image of a batch of {len(indices)} could be read; e.g. {broken[0][0]}: {broken[0][1]}")
        used = indices.copy()
        missing = [row for row in range(len(indices)) if arrays[row] is None]
        for n, row in enumerate(missing):
            donor = good[n % len(good)]
            arrays[row], used[row] = arrays[donor], indices[donor]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), broken, used

    def uint8(self, indices) -> torch.Tensor:
        """uint8 (B, C, H, W) for the given item indices."""
        return self.read_batch(indices)[0]

    def labels_of(self, indices, images: torch.Tensor) -> torch.Tensor | None:
        """The labels of the given items (read as `images`), or None."""
        if self.label_fn is not None:
            return self.label_fn(images)
        return None if self.labels is None else self.labels[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    def serve_images(self, images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float images; with `flip`, each image is mirrored with
        probability 1/2 drawn from `generator`."""
        x = self.normalisation.to_model(images)
        if self.flip:
            mirror = torch.rand(len(x), generator=generator) < 0.5
            x[mirror] = x[mirror].flip(-1)
        return x

    def serve(self, indices, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised float images (B, C, H, W) and labels for the given training items (`serve_images`)."""
        images, _, used = self.read_batch(indices)
        return self.serve_images(images, generator=generator), self.labels_of(used, images)

    def batches(
        self, batch_size: int, *, generator: torch.Generator, split: str = "train", drop_last: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """One pass over a split in an order drawn from `generator`: (float images, labels or None).
        Validation batches are never flipped."""
        indices = torch.as_tensor(self.train if split == "train" else self.validation, dtype=torch.long)
        if batch_size < 1 or (drop_last and len(indices) < batch_size):
            raise ValueError(f"batch size {batch_size} does not fit the {len(indices)} images of the {split} split")
        order = indices[torch.randperm(len(indices), generator=generator)]
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            chosen = order[start : start + batch_size]
            if split == "train":
                yield self.serve(chosen, generator=generator)
            else:
                images, _, used = self.read_batch(chosen)
                yield self.normalisation.to_model(images), self.labels_of(used, images)

    def describe(self) -> str:
        """How the set is served, for the line `train` prints."""
        if self.images is not None:
            return f"in memory ({self.images.numel() / 2**20:.0f} MiB)"
        if not self.streamed:
            return "read item by item (too large for memory)"
        where = f"from {len(self.shard_counts)} shards, shuffle buffer {self.shuffle_buffer:,}" if self.shard_counts else "item by item"
        return f"streamed {where}; size and statistics from a sample of {self.sampled:,}"


class SkippedItems(UserWarning):
    """Items of a data source left out (undecodable, too small, ...); the message names the first few."""


def _summarise_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    if skipped:
        shown = "; ".join(f"{name} ({reason})" for name, reason in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"skipped {len(skipped)} of {total} items: {shown}{more}", SkippedItems, stacklevel=3)


def _refit(kept: list[int], arrays: list[np.ndarray], config: DataConfig, skipped: list, source: Source):
    """The items kept so far, fitted again to `config.image_size`: (kept, arrays, shapes)."""
    refitted, still = [], []
    for i, array in zip(kept, arrays) if arrays else ((i, source.read(i)) for i in kept):
        try:
            fitted = fit_image(array, config)
        except ValueError as error:
            skipped.append((source.name(i), str(error)))
            continue
        still.append(i)
        if arrays:
            refitted.append(fitted)
    return still, refitted, {(config.image_size, config.image_size)} if still else set()


def measure_standardisation(chunks, channels: int) -> Normalisation:
    """Per-channel mean and std of uint8 (B, C, H, W) chunks of images."""
    total_sum, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for chunk in chunks:
        pixels = chunk.double().div(255).transpose(0, 1).reshape(channels, -1)
        total_sum += pixels.sum(1).numpy()
        total_sq += pixels.square().sum(1).numpy()
        count += pixels.shape[1]
    mean = total_sum / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return Normalisation("standardise", tuple(map(float, mean)), tuple(map(float, std)))


def _load_streamed(source: Source, config: DataConfig, progress: bool) -> ImageData:
    """A set read item by item as training goes: a seeded sample of `stream_sample` training images
    fixes the size (fitting to `mixed_sizes_to` when theirs differ), the channels and the statistics."""
    from tqdm.auto import tqdm

    train, validation = split_indices(source.count, config.validation_fraction, config.seed)
    sample = np.sort(np.random.default_rng(config.seed).choice(train, min(len(train), config.stream_sample), replace=False))
    arrays, skipped = [], list(source.skipped)
    for i in tqdm(sample, desc="sampling the stream", disable=not progress):
        try:
            arrays.append(source.read(int(i)))
        except ValueError as error:
            skipped.append((source.name(int(i)), str(error)))
    if not arrays:
        raise ValueError(f"no usable images in {source.description}; e.g. {skipped[0][0]}: {skipped[0][1]}"
                         if skipped else f"no usable images in {source.description}")
    shapes = {a.shape[:2] for a in arrays}
    if config.image_size is None and len(shapes) > 1:
        if not config.mixed_sizes_to:
            raise ValueError(f"images in {source.description} differ in size ({sorted(shapes)[:3]} ...); "
                             "give one size to fit them to (data.image_size, or evaluate --image-size)")
        config = dataclasses.replace(config, image_size=config.mixed_sizes_to)
    fitted = []
    for i, array in zip(sample, arrays):
        try:
            fitted.append(fit_image(array, config))
        except ValueError as error:
            skipped.append((source.name(int(i)), str(error)))
    if not fitted:
        raise ValueError(f"no image of {source.description} fits: e.g. {skipped[-1][0]}: {skipped[-1][1]}")
    size = (config.image_size, config.image_size) if config.image_size else fitted[0].shape[:2]
    channels = {"auto": 1 if all(a.shape[-1] == 1 for a in fitted) else 3, "1": 1, "3": 3}[config.channels]

    def read(i: int) -> np.ndarray:
        array = fit_image(source.read(i), config)
        if array.shape[:2] != size:
            raise ValueError(f"{array.shape[1]}x{array.shape[0]}, not {size[1]}x{size[0]} like the others")
        return convert_channels(array, channels)

    labels = None if source.labels is None else torch.from_numpy(np.asarray(source.labels, np.int64))
    normalisation = Normalisation()
    if config.normalise == "standardise":
        stacked = np.stack([convert_channels(a, channels) for a in fitted if a.shape[:2] == size])
        normalisation = measure_standardisation([torch.from_numpy(stacked).permute(0, 3, 1, 2)], channels)
    _summarise_skipped(skipped, source.count + len(source.skipped))
    return ImageData(None, labels, normalisation, channels, size, train, validation, config.flip, source.class_names,
                     read, skipped, streamed=True, sampled=len(sample), shard_counts=source.shard_counts,
                     shuffle_buffer=config.shuffle_buffer, fingerprint=source.fingerprint, name=source.name)


def load_images(config: DataConfig, *, progress: bool = True) -> ImageData:
    """Open the source, decode and fit every image once, fix channels, split, and measure the
    normalisation; keep the uint8 images in memory when they fit in `max_cache_bytes`."""
    from tqdm.auto import tqdm

    source = open_source(config)
    if config.stream == "yes" or (config.stream == "auto" and source.shard_counts):
        return _load_streamed(source, config, progress)
    budget = config.max_cache_bytes if config.max_cache_bytes is not None else _available_memory() // 2

    def prepare(i: int):
        try:
            return fit_image(source.read(i), config), None
        except ValueError as error:
            return None, str(error)

    # One pass in this thread: for small images a thread pool costs more than it saves (measured).
    kept, arrays, skipped, shapes, gray = [], [], list(source.skipped), set(), True
    cache = True
    for i in tqdm(range(source.count), desc="decoding images", disable=not progress):
        array, reason = prepare(i)
        if array is None:
            skipped.append((source.name(i), reason))
            continue
        if shapes and array.shape[:2] not in shapes and config.image_size is None and config.mixed_sizes_to:
            # Sizes differ: from here on every image is fitted to mixed_sizes_to, those before too.
            config = dataclasses.replace(config, image_size=config.mixed_sizes_to)
            array, reason = prepare(i)
            kept, arrays, shapes = _refit(kept, arrays, config, skipped, source)
            if array is None:
                skipped.append((source.name(i), reason))
                continue
        kept.append(i)
        shapes.add(array.shape[:2])
        gray &= array.shape[-1] == 1
        if cache and source.count * array.shape[0] * array.shape[1] * 3 > budget:
            if config.stream == "auto":  # too large to hold: stream it instead of decoding it all first
                return _load_streamed(source, config, progress)
            cache, arrays = False, []
        if cache:
            arrays.append(array)
    total = source.count + len(source.skipped)
    _summarise_skipped(skipped, total)
    if not kept:
        reason = f"; all {total} items were skipped" if total else ""
        raise ValueError(f"no usable images in {source.description}{reason}")
    if len(shapes) > 1:
        raise ValueError(f"images in {source.description} differ in size ({sorted(shapes)[:3]} ...); "
                         "give one size to fit them to (data.image_size, or evaluate --image-size)")
    channels = {"auto": 1 if gray else 3, "1": 1, "3": 3}[config.channels]
    size = next(iter(shapes))

    labels = None
    if source.labels is not None:
        labels = torch.from_numpy(np.asarray(source.labels)[kept].astype(np.int64))
    train, validation = split_indices(len(kept), config.validation_fraction, config.seed)
    if cache:
        stacked = np.stack([convert_channels(a, channels) for a in arrays])
        images, read = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(), None
    else:
        images = None
        read = lambda j: convert_channels(fit_image(source.read(kept[j]), config), channels)  # noqa: E731

    normalisation = Normalisation()
    if config.normalise == "standardise":
        chunks = (images[torch.as_tensor(train[start : start + 1024])] if images is not None
                  else torch.from_numpy(np.stack([read(int(j)) for j in train[start : start + 1024]])).permute(0, 3, 1, 2)
                  for start in range(0, len(train), 1024))
        normalisation = measure_standardisation(chunks, channels)
    return ImageData(images, labels, normalisation, channels, size, train, validation, config.flip, source.class_names, read,
                     skipped, name=lambda j: source.name(kept[j]))
