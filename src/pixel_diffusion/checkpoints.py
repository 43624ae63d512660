"""Run directories and checkpoints.

    runs/NAME/config.json                       everything needed to rebuild the run
    runs/NAME/metrics.jsonl                     one line per logging step
    runs/NAME/samples/step-NNNNNNN.png          previews from fixed noise
    runs/NAME/checkpoints/step-NNNNNNN/         model.safetensors, ema.safetensors,
                                                optimizer.safetensors, optimizer.json,
                                                state.json, model.json (the model description),
                                                manifest.json (each file's size and SHA-256);
                                                named weights beside them (ema-0.100.safetensors:
                                                a power-function EMA profile, kept or rebuilt)
    runs/NAME/ema-snapshots/step-NNNNNNN.safetensors   the EMA profiles at a step, for post-hoc EMA
    runs/NAME/checkpoints/best/                 the weights KID selection kept, model.json, manifest.json
    runs/NAME/checkpoints/latest                the newest checkpoint's folder name
    runs/NAME/.lock                             held (filelock) by the one process that trains the run
    runs/NAME/.trainer                          that process: host, process id, since when

Tensors are stored as safetensors and everything else as JSON, so loading never executes code
from a file. Every write goes to a temporary name and is renamed into place: a crash mid-write
leaves the previous checkpoint and `latest` as they were.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOCK = ".lock"  # held (filelock: flock, or msvcrt's lock on Windows) by the process that trains the run
HOLDER = ".trainer"  # the holder's record, beside the lock: present while a run trains, or left by a killed trainer


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or not in this toolkit's format."""


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from None


# ---- one trainer per run ------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(run: Path, say=print):
    """Hold RUN/.lock exclusively while training: a second trainer is refused with a line naming
    the holder (host, process id, since when: RUN/.trainer). The lock is the operating system's
    (filelock), which it releases when its process ends however it ends; a holder record left by
    a killed process is taken over, and said so. Readers (sample, evaluate, show) never take it."""
    from filelock import FileLock, Timeout

    run = Path(run)
    holder = run / HOLDER
    try:
        run.mkdir(parents=True, exist_ok=True)
        lock = FileLock(run / LOCK, timeout=0, thread_local=False)
        lock.acquire()
    except Timeout:
        recorded = holder.read_text().strip() if holder.is_file() else ""
        raise ValueError(f"{run} is being trained by {recorded or 'another process'}; wait for it to finish, "
                         "stop it, or train into another --out") from None
    except OSError as error:
        raise ValueError(f"cannot train into {run} ({error.strerror or error}); choose a folder you can write") from None
    try:
        recorded = holder.read_text().strip() if holder.is_file() else ""
        if recorded:
            say(f"{run}: taking over the lock left by {recorded}, which no longer runs")
        atomic_write_text(holder, f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        try:
            yield
        finally:
            holder.unlink(missing_ok=True)  # a clean exit leaves no holder record
    finally:
        lock.release()


# ---- optimiser state as tensors + JSON --------------------------------------------------------


def optimizer_to_files(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimiser state_dict -> (flat tensors, JSON-ready rest)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(rest.get("scalars", {}).items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


# ---- checkpoints ------------------------------------------------------------------------------


def step_name(step: int) -> str:
    return f"step-{step:07d}"


MANIFEST = "manifest.json"  # every other file of a checkpoint folder: its size and SHA-256


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read a megabyte at a time."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record every file of `folder` (size, SHA-256) in its manifest; written last, before the
    folder is renamed into place."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != MANIFEST)
    write_json(Path(folder) / MANIFEST, {"files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                                                   for p in files}})


def verify_checkpoint(folder: Path, reads: Iterable[str] | None = None) -> None:
    """Check a checkpoint folder against its manifest: a missing, resized or altered file is a
    one-line CheckpointError. With `reads`, the files a load reads: only theirs are hashed, the
    others' presence and size checked (a sampler need not hash the optimiser's state). A folder
    from before manifests passes unchecked."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return
    manifest = read_json(folder / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{folder} is damaged: its {MANIFEST} lists no files")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder} is damaged: {name} is missing")
        if not isinstance(expected, dict) or path.stat().st_size != expected.get("bytes"):
            raise CheckpointError(f"{folder} is damaged: {name} has {path.stat().st_size} bytes, its manifest says "
                                  f"{expected.get('bytes') if isinstance(expected, dict) else '?'}")
        if (reads is None or name in reads) and file_sha256(path) != expected.get("sha256"):
            raise CheckpointError(f"{folder} is damaged: {name} differs from its manifest's SHA-256")


def save_checkpoint(
    run: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict,
    state: dict,
    keep: int = 3,
    description: dict | None = None,
    named: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoints/step-NNNNNNN atomically, point `latest` at it, keep the newest `keep`;
    `named` weights (name -> tensors) go beside the model's as NAME.safetensors."""
    folder = Path(run) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / step_name(step)
    for stale in [*folder.glob(".step-*"), *folder.glob(".best.*")]:  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, tmp / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
        for name, weights in (named or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / f"{check_weights_name(name)}.safetensors")
        tensors, rest = optimizer_to_files(optimizer)
        save_file(tensors, tmp / "optimizer.safetensors")
        write_json(tmp / "optimizer.json", rest)
        write_json(tmp / "state.json", {**state, "step": step})
        if description is not None:  # the model description, so the folder loads on its own
            write_json(tmp / "model.json", description)
        write_manifest(tmp)
        if final.exists():  # the same step written again (a resumed run's final save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(error):
            raise _no_space(run, final.name, model, ema, optimizer) from None
        raise
    try:
        atomic_write_text(folder / LATEST, final.name + "\n")
    except OSError as error:
        if _disk_full(error):
            raise _no_space(run, final.name, model, ema, optimizer) from None
        raise
    for old in list_checkpoints(run)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _disk_full(error: BaseException) -> bool:
    # Python's writes raise OSError(ENOSPC); safetensors' own writer says "os error 28" in its message.
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or (
        isinstance(error, SafetensorError) and f"os error {errno.ENOSPC})" in str(error))


def _no_space(run: Path, name: str, *weights_and_optimizer) -> CheckpointError:
    """The disk filled while writing checkpoint `name`: what it needs against what is free."""
    def tensor_bytes(value) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        return sum(map(tensor_bytes, value.values() if isinstance(value, dict) else
                       value if isinstance(value, (list, tuple)) else ()))

    needed = sum(map(tensor_bytes, weights_and_optimizer))
    free = shutil.disk_usage(Path(run) / CHECKPOINTS).free
    kept = latest_checkpoint(run)
    return CheckpointError(f"no space left on the disk of {run} to write checkpoint {name}: it needs about "
                           f"{needed / 1e6:.1f} MB and {free / 1e6:.1f} MB are free; "
                           + (f"{kept.name} is kept, intact, as the newest" if kept else "no checkpoint was written yet"))


BEST = "best"


def save_best(run: Path, step: int, *, model: dict, ema: dict, metrics: dict, description: dict | None = None) -> Path:
    """Write checkpoints/best (weights and the metrics that made them best), replacing it atomically."""
    folder = Path(run) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".best.", dir=folder))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, tmp / "model.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
        write_json(tmp / "state.json", {**metrics, "step": step})
        if description is not None:
            write_json(tmp / "model.json", description)
        write_manifest(tmp)
        old = folder / BEST
        if old.exists():
            retired = folder / f".best.old.{os.getpid()}"
            os.replace(old, retired)
            os.replace(tmp, old)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(tmp, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / BEST


def best_metrics(run: Path) -> dict | None:
    path = Path(run) / CHECKPOINTS / BEST / "state.json"
    return read_json(path) if path.exists() else None


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    folder = Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").exists())


def latest_checkpoint(run: Path) -> Path | None:
    """The folder `latest` names, or the newest complete one if `latest` is missing or stale."""
    folder = Path(run) / CHECKPOINTS
    pointer = folder / LATEST
    if pointer.exists():
        named = folder / pointer.read_text().strip()
        if named.is_dir() and (named / "state.json").exists():
            return named
    found = list_checkpoints(run)
    return found[-1] if found else None


def newest_first(run: Path) -> list[Path]:
    """The run's checkpoint folders to resume from, in turn: the one `latest` names, then the
    others from the newest down."""
    found = list_checkpoints(run)[::-1]
    latest = latest_checkpoint(run)
    return ([latest] if latest is not None else []) + [p for p in found if p != latest]


def newest_intact(run: Path, besides: Path | None = None) -> Path | None:
    """The newest checkpoint folder (other than `besides`) that passes its manifest, or None."""
    for folder in newest_first(run):
        if folder == besides:
            continue
        try:
            verify_checkpoint(folder)
        except CheckpointError:
            continue
        return folder
    return None


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a safetensors file ({str(error).splitlines()[0][:80]}); checkpoints that hold "
            "pickled objects are refused because loading them could run code"
        ) from None


def load_checkpoint(folder: Path) -> dict:
    """{'model', 'ema', 'optimizer', 'state', 'named'} from a checkpoint folder ('named': its
    other weights by name); never runs code."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint at {folder}")
    verify_checkpoint(folder)
    return {
        "model": _load_tensors(folder / "model.safetensors"),
        "ema": _load_tensors(folder / "ema.safetensors"),
        "optimizer": optimizer_from_files(_load_tensors(folder / "optimizer.safetensors"), read_json(folder / "optimizer.json")),
        "state": read_json(folder / "state.json"),
        "named": {name: _load_tensors(folder / f"{name}.safetensors") for name in weights_names(folder)
                  if name not in ("model", "ema")},
    }


# ---- named weights and EMA snapshots ------------------------------------------------------------

NOT_WEIGHTS = ("optimizer",)
SNAPSHOTS = "ema-snapshots"


def check_weights_name(name: str) -> str:
    """A weights name is lower-case letters, digits, dots and dashes (`ema`, `model`, `ema-0.100`)."""
    if not (isinstance(name, str) and name and name[0].isalnum() and name not in NOT_WEIGHTS
            and all(c.isdigit() or c in ".-" or ("a" <= c <= "z") for c in name)):
        raise ValueError(f"weights name {name!r} must be lower-case letters, digits, dots and dashes (ema, model, ema-0.100)")
    return name


def weights_names(folder: Path) -> list[str]:
    """The weights a checkpoint folder holds, by name: model, ema and any others."""
    return sorted(p.stem for p in Path(folder).glob("*.safetensors") if p.stem not in NOT_WEIGHTS)


def add_weights(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write NAME.safetensors into a checkpoint folder and list it in the manifest, each step
    atomic: a crash leaves the folder as it was or with an unlisted file that the next write replaces."""
    folder = Path(folder)
    verify_checkpoint(folder)
    path = folder / f"{check_weights_name(name)}.safetensors"
    if name in ("model", "ema"):
        raise ValueError(f"{name} weights are written by training; name the added weights otherwise (ema-0.100)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if (folder / MANIFEST).exists():
        write_manifest(folder)
    return path


def save_snapshot(run: Path, step: int, profiles: dict[str, dict[str, torch.Tensor]], sigma_rels: dict[str, float]) -> Path:
    """ema-snapshots/step-NNNNNNN.safetensors: each profile's tensors as NAME/KEY, its sigma_rel in the metadata."""
    path = Path(run) / SNAPSHOTS / f"{step_name(step)}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tensors = {f"{name}/{key}": value.detach().cpu().contiguous() for name, weights in profiles.items()
               for key, value in weights.items()}
    try:
        save_file(tensors, tmp, metadata={"step": str(step), "sigma_rels": json.dumps(sigma_rels)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def snapshot_info(path: Path) -> tuple[int, dict[str, float]]:
    """(step, {profile name: sigma_rel}) of a snapshot file, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        step, sigma_rels = int(metadata["step"]), json.loads(metadata["sigma_rels"])
        return step, {str(k): float(v) for k, v in sigma_rels.items()}
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is not an EMA snapshot ({str(error).splitlines()[0][:80] if str(error) else type(error).__name__})") from None


def snapshot_weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    """One profile's tensors from a snapshot file; never runs code."""
    prefix = f"{name}/"
    return {key[len(prefix):]: value for key, value in _load_tensors(Path(path)).items() if key.startswith(prefix)}


def list_snapshots(run: Path) -> list[Path]:
    """A run's EMA snapshot files, oldest first."""
    folder = Path(run) / SNAPSHOTS
    return sorted(folder.glob("step-*.safetensors")) if folder.is_dir() else []


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Only a weights file (model or EMA) of a checkpoint."""
    return _load_tensors(Path(path))
