"""Where the arithmetic runs, and in what: one device rule for every command, and the training
precision measured fastest on this machine.

    device = pick_device("auto")          # CUDA, then MPS, then the CPU
    describe_device(device)               # 'cpu (Intel(R) Xeon(R) Processor, 2 threads)'

`precision=auto` (the presets' default) times the run's own training step, forward and backward,
in bf16 autocast and in float32 and takes the faster: bf16 is about 3x float32 on a CPU with AMX,
close to it with AVX-512 BF16 only, and slower where the processor has neither, as on most
laptops. The choice is cached per processor, torch version and network, so a machine measures a
network once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")
AUTO_PRECISIONS = ("fp32", "bf16")  # what precision=auto chooses between (fp16 needs loss scaling: asked by name)
MARGIN = 1.05  # bf16 must be this much faster to be chosen: a tie keeps float32's exactness


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """`auto`: CUDA, then MPS (Apple GPUs), then the CPU. An explicit device (`cpu`, `cuda`,
    `cuda:1`, `mps`) is honoured, or refused in one line where this machine has none."""
    if isinstance(name, torch.device):
        name = str(name)
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name} asked for, but this machine has no CUDA GPU; use --device cpu or auto")
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise ValueError(f"device {name} asked for, but this machine has {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name} asked for, but this machine has no Apple GPU (MPS); use --device cpu or auto")
    return torch.device(device.type)


def processor() -> str:
    """The CPU's model name (Linux, macOS, Windows), or the architecture where none is said."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        import subprocess

        with contextlib.suppress(OSError, subprocess.SubprocessError):
            named = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5)
            if named.stdout.strip():
                return named.stdout.strip()
    return platform.processor() or platform.machine() or "unknown processor"


def describe_device(device: torch.device) -> str:
    """One phrase for the line a command prints: 'cuda:1 (NVIDIA H100 80GB HBM3)', 'cpu (NAME, 2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "mps":
        return f"mps ({processor()})"
    return f"cpu ({processor()}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def engine_device(device: torch.device):
    """Make `device` the one accelerate's single-process engine takes (its ACCELERATE_TORCH_DEVICE),
    and the current CUDA device, for the duration of the block."""
    before = os.environ.get("ACCELERATE_TORCH_DEVICE")
    os.environ["ACCELERATE_TORCH_DEVICE"] = str(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ACCELERATE_TORCH_DEVICE", None)
        else:
            os.environ["ACCELERATE_TORCH_DEVICE"] = before


# ---- precision=auto -----------------------------------------------------------------------------


def autocast(device: torch.device, precision: str):
    """The arithmetic of a training step's forward pass: bf16 or fp16 autocast, or float32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def time_step(step: Callable[[], None], device: torch.device, precision: str) -> float:
    """Seconds of one call of `step` (a forward and backward pass) under `precision`'s autocast."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with autocast(device, precision):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure_precisions(step: Callable[[], None], device: torch.device, *, rounds: int = 3,
                       budget_s: float = 20.0) -> dict[str, float]:
    """The median seconds of `step` in each of AUTO_PRECISIONS: one warm-up call each, then up to
    `rounds` calls each, taken in turn (so a noisy neighbour slows both alike), fewer where the
    first round already spends `budget_s`."""
    for precision in AUTO_PRECISIONS:  # warm-up: kernels chosen, memory allocated
        time_step(step, device, precision)
    times: dict[str, list[float]] = {p: [] for p in AUTO_PRECISIONS}
    started = time.perf_counter()
    for _ in range(rounds):
        for precision in AUTO_PRECISIONS:
            times[precision].append(time_step(step, device, precision))
        if time.perf_counter() - started > budget_s / rounds * 2:
            break
    return {p: statistics.median(t) for p, t in times.items()}


def precision_cache() -> Path:
    return Path.home() / ".cache" / "pixel-diffusion" / "precision.json"


def cache_key(device: torch.device, network: dict, shape: tuple[int, ...]) -> str:
    """Processor (or GPU), torch version, network description and step shape: what the timing depends on."""
    machine = describe_device(device) if device.type != "cpu" else f"cpu {processor()} {torch.get_num_threads()}"
    text = json.dumps([machine, torch.__version__, network, list(shape)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def choose_precision(step: Callable[[], None], device: torch.device, network: dict,
                     shape: tuple[int, ...], cache: Path | None = None) -> tuple[str, str]:
    """(precision, why) for precision=auto: the cached choice for this machine and network, or a
    fresh measurement of `step` (cached). A device without bf16 in its arithmetic keeps fp32 unmeasured."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32", "fp32 (this GPU has no bf16)"
    cache = precision_cache() if cache is None else cache
    key = cache_key(device, network, shape)
    try:
        known = json.loads(cache.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    seconds = known.get(key)
    measured = "cached"
    if not (isinstance(seconds, dict) and all(isinstance(seconds.get(p), (int, float)) for p in AUTO_PRECISIONS)):
        seconds, measured = measure_precisions(step, device), "measured"
        known[key] = seconds
        with contextlib.suppress(OSError):  # a cache that cannot be written costs a measurement next time
            from .checkpoints import atomic_write_text

            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache, json.dumps(known, indent=1, sort_keys=True))
    ratio = seconds["fp32"] / max(seconds["bf16"], 1e-12)
    chosen = "bf16" if ratio >= MARGIN else "fp32"
    return chosen, f"{chosen} (bf16 at {ratio:.2f}x float32's speed here, {measured})"
