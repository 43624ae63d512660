"""Tar shards in the WebDataset layout: finding them, indexing them, reading their images.

A sharded set is a list of uncompressed `.tar` files whose members are grouped into samples by
key, as WebDataset groups them: `KEY.jpg` (or .png, .webp, ...) is the image, `KEY.cls` its class
index as decimal text, or `KEY.class` its class name. A `classes.txt` beside the shards (lines of
`index<TAB>...<TAB>names`, as `pixel-diffusion pack` writes them) names the classes.

The shards are indexed once when opened (each member's header is read, never an image), which
gives the number of samples, their labels, and where each image's bytes lie. An item is then
read with one seek and one read, so the training loop can walk the shards in a shuffled order
that is a pure function of (seed, epoch): shards in a permuted order, items through a shuffle
buffer, as WebDataset shuffles them, but resumable at any step (`stream_order`).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import atomic_write_text

SHARD_SUFFIX = ".tar"
LIST_SUFFIXES = (".txt", ".shards")  # a list file: one shard path a line
CLASS_NAMES_FILE = "classes.txt"
# The extensions of a sample's image member (WebDataset's image extensions, and those of files).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "bmp", "gif", "tif", "tiff")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's split of a member name: key . extension


# ---- which shards ------------------------------------------------------------------------------


def _has_brace_range(spec: str) -> bool:
    return "{" in spec and "}" in spec


def claims(spec: str, path: Path) -> bool:
    """Whether a data spec names tar shards: a .tar file or a brace/glob pattern of them, a list
    file of them, or a folder holding .tar files and no images."""
    if spec.endswith(SHARD_SUFFIX) or (_has_brace_range(spec) and SHARD_SUFFIX in spec):
        return True
    if path.is_file() and path.suffix in LIST_SUFFIXES and path.name != CLASS_NAMES_FILE:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return bool(lines) and all(line.endswith(SHARD_SUFFIX) for line in lines)
    if path.is_dir():
        entries = list(path.iterdir())
        return any(p.suffix == SHARD_SUFFIX for p in entries) and not any(
            p.is_dir() or p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS for p in entries)
    return False


def shard_paths(spec: str) -> list[Path]:
    """The shards a spec names, in the order named: `DIR/train-{0000..0009}.tar` (brace ranges and
    globs), a folder (its .tar files, sorted), or a list file (paths relative to the file)."""
    from braceexpand import braceexpand

    path = Path(spec).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix == SHARD_SUFFIX)
    elif path.is_file() and path.suffix in LIST_SUFFIXES:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        paths = [p if p.is_absolute() else path.parent / p for p in map(Path, lines)]
    else:
        paths = []
        for pattern in braceexpand(spec):
            pattern_path = Path(pattern).expanduser()
            if any(c in pattern for c in "*?["):
                paths += sorted(pattern_path.parent.glob(pattern_path.name))
            else:
                paths.append(pattern_path)
    if not paths:
        raise ValueError(f"{spec!r} names no shards; expected DIR/NAME-{{0000..0009}}.tar, a folder of .tar files "
                         "or a list file of them")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of the {len(paths)} shards named by {spec!r} do not exist, e.g. {missing[0]}")
    return paths


# ---- the index ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardIndex:
    """One shard's samples: where each image's bytes lie, its label (-1 for none) and its class name."""

    path: Path
    offsets: np.ndarray  # int64 (n,): byte offset of each image in the file
    sizes: np.ndarray  # int64 (n,)
    labels: np.ndarray  # int64 (n,): the class index, -1 where the sample has none
    names: np.ndarray  # object (n,): class names from .class members ("" where none)
    skipped: tuple[tuple[str, str], ...]  # (sample, why) of samples left out while indexing

    def __len__(self) -> int:
        return len(self.offsets)


def _label_text(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    return tar.extractfile(member).read(256).decode("utf-8", errors="replace").strip()


def index_shard(path: Path) -> ShardIndex:
    """Read every member header of one uncompressed tar shard and group members into samples by
    key (consecutive members sharing a key, as WebDataset groups them). A shard cut short keeps
    the samples before the cut, and says so."""
    offsets, sizes, labels, names, skipped = [], [], [], [], []
    file_size = path.stat().st_size
    sample: dict[str, object] = {}

    def close(sample: dict) -> None:
        if not sample:
            return
        key = f"{path.name}:{sample['key']}"
        if "image" not in sample:
            skipped.append((key, "no image member (expected KEY.jpg, .png, .webp, ...)"))
            return
        if sample.get("bad_label"):
            skipped.append((key, f"its .cls is not an integer: {sample['bad_label']!r}"))
            return
        offset, size = sample["image"]
        offsets.append(offset)
        sizes.append(size)
        labels.append(sample.get("cls", -1))
        names.append(sample.get("class", ""))

    try:
        tar = tarfile.open(path, mode="r:")  # uncompressed only: items are read by seeking
    except tarfile.ReadError as error:
        raise ValueError(f"{path} is not an uncompressed tar shard ({error})") from None
    with tar:
        members = iter(tar)
        while True:
            try:
                member = next(members)
            except StopIteration:
                break
            except (tarfile.ReadError, EOFError, OSError) as error:
                skipped.append((f"{path.name}", f"truncated or damaged after {len(offsets)} samples ({error})"))
                break
            if not member.isfile() or (member.name.startswith("__") and member.name.endswith("__")):
                continue
            if member.offset_data + member.size > file_size:
                skipped.append((f"{path.name}:{member.name}", "truncated: the shard ends inside it"))
                break
            match = _KEY.match(member.name)
            if match is None:
                continue
            key, extension = match.group(1), match.group(2).lower()
            if sample and sample["key"] != key:
                close(sample)
                sample = {}
            sample.setdefault("key", key)
            if extension in IMAGE_EXTENSIONS and "image" not in sample:
                sample["image"] = (member.offset_data, member.size)
            elif extension == "cls":
                text = _label_text(tar, member)
                if text.lstrip("-").isdigit() and int(text) >= 0:
                    sample["cls"] = int(text)
                else:
                    sample["bad_label"] = text[:40]
            elif extension in ("class", "label"):
                sample["class"] = _label_text(tar, member)
        close(sample)
        if not skipped or "truncated" not in skipped[-1][1]:
            # A whole archive ends in two zero blocks; a copy cut short between members does not.
            with open(path, "rb") as f:
                f.seek(tar.offset)
                end = f.read(1024)
            if len(end) < 1024 or any(end):
                skipped.append((path.name, f"truncated after {len(offsets)} samples: no end-of-archive marker"))
    return ShardIndex(path, np.asarray(offsets, np.int64), np.asarray(sizes, np.int64), np.asarray(labels, np.int64),
                      np.asarray(names, dtype=object), tuple(skipped))


def member_name(path: Path, offset: int) -> str:
    """`shard:member` for the member whose data starts at `offset` (its header is the block before)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset - tarfile.BLOCKSIZE)
            return f"{path.name}:{tarfile.TarInfo.frombuf(f.read(tarfile.BLOCKSIZE), 'utf-8', 'replace').name}"
    except (OSError, tarfile.TarError, ValueError):
        return f"{path.name}@{offset}"


def read_class_names(folder: Path) -> list[str] | None:
    """Class names from `classes.txt` beside the shards: `index<TAB>name` lines (as `pack` writes
    them), `index<TAB>id<TAB>names` lines (the last field up to its first comma: "goldfish" from
    "0<TAB>n01443537<TAB>goldfish, Carassius auratus"), or one name a line."""
    path = folder / CLASS_NAMES_FILE
    if not path.is_file():
        return None
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines()):
        fields = [f.strip() for f in line.split("\t")]
        if not fields[0]:
            continue
        index = int(fields[0]) if len(fields) > 1 and fields[0].isdigit() else number
        names[index] = fields[-1].split(",")[0].strip() if len(fields) > 2 else fields[-1]
    return [names.get(i, str(i)) for i in range(max(names) + 1)] if names else None


@dataclass(frozen=True)
class ShardSet:
    """Every shard of a set, indexed: items are numbered shard by shard, in the shards' order."""

    shards: tuple[ShardIndex, ...]
    labels: np.ndarray | None  # int64 (N,), or None when no sample has a label
    class_names: list[str]
    skipped: list[tuple[str, str]]

    @property
    def counts(self) -> list[int]:
        return [len(s) for s in self.shards]

    def fingerprint(self) -> list[list]:
        """[shard name, bytes, samples] for each shard: a resumed run checks its data is the same."""
        return [[s.path.name, s.path.stat().st_size, len(s)] for s in self.shards]


def open_shards(spec: str, progress: bool = False) -> ShardSet:
    """Index the shards a spec names; labels from .cls (or .class names mapped through
    classes.txt, else sorted), samples without a label left out when others have one."""
    from tqdm.auto import tqdm

    paths = shard_paths(spec)
    shards = [index_shard(p) for p in tqdm(paths, desc="indexing shards", disable=not progress, delay=1.0)]
    skipped = [entry for s in shards for entry in s.skipped]
    names = read_class_names(paths[0].parent) or []
    has_index = np.concatenate([s.labels >= 0 for s in shards])
    has_name = np.concatenate([s.names != "" for s in shards])
    labels = None
    if has_index.any() or has_name.any():
        if not has_index.any():  # class names only: numbered by classes.txt, else in sorted order
            known = names or sorted({n for s in shards for n in s.names if n})
            number = {n: k for k, n in enumerate(known)}
            shards = [_with_labels(s, np.array([number.get(n, -1) for n in s.names], np.int64)) for s in shards]
            names = known
        kept = []
        for s in shards:
            missing = s.labels < 0
            skipped += [(member_name(s.path, o), "no label (.cls) where the other samples have one") for o in s.offsets[missing]]
            kept.append(_keep(s, ~missing))
        shards = kept
        labels = np.concatenate([s.labels for s in shards])
    if sum(len(s) for s in shards) == 0:
        raise ValueError(f"the {len(paths)} shards named by {spec!r} hold no usable samples"
                         + (f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    return ShardSet(tuple(shards), labels, names, skipped)


def _with_labels(s: ShardIndex, labels: np.ndarray) -> ShardIndex:
    return ShardIndex(s.path, s.offsets, s.sizes, labels, s.names, s.skipped)


def _keep(s: ShardIndex, mask: np.ndarray) -> ShardIndex:
    return ShardIndex(s.path, s.offsets[mask], s.sizes[mask], s.labels[mask], s.names[mask], s.skipped)


# ---- reading -----------------------------------------------------------------------------------


class ShardReader:
    """Item i's encoded bytes, by one seek and read; file handles are opened per process, so a
    reader forked into DataLoader workers never shares a file position."""

    def __init__(self, shards: ShardSet):
        self.shards = shards
        self.starts = np.cumsum([0] + shards.counts)
        self._files: dict[Path, io.BufferedReader] = {}
        self._pid = os.getpid()

    def where(self, i: int) -> tuple[ShardIndex, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.shards.shards[k], i - int(self.starts[k])

    def bytes(self, i: int) -> bytes:
        if os.getpid() != self._pid:
            self._files, self._pid = {}, os.getpid()
        shard, j = self.where(i)
        f = self._files.get(shard.path)
        if f is None:
            f = self._files[shard.path] = open(shard.path, "rb")
        f.seek(int(shard.offsets[j]))
        return f.read(int(shard.sizes[j]))

    def name(self, i: int) -> str:
        shard, j = self.where(i)
        return member_name(shard.path, int(shard.offsets[j]))


# ---- the order of an epoch ---------------------------------------------------------------------


def buffer_shuffle(items: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """WebDataset's shuffle: items enter a buffer of `buffer` in order; once it is full, each new
    item takes the place of one drawn at random, which goes out; the rest leave in random order."""
    if buffer <= 1 or len(items) <= 1:
        return items.copy()
    out = np.empty_like(items)
    held = items[: min(buffer, len(items))].copy()
    draws = rng.integers(0, len(held), size=max(0, len(items) - len(held)))
    for n, (item, j) in enumerate(zip(items[len(held):], draws)):
        out[n] = held[j]
        held[j] = item
    out[len(items) - len(held):] = held[rng.permutation(len(held))]
    return out


def stream_order(counts: list[int], keep: np.ndarray, *, seed: int, epoch: int, buffer: int,
                 rank: int = 0, world: int = 1) -> np.ndarray:
    """The item indices process `rank` of `world` trains on in `epoch`: the shards in an order
    drawn from (seed, epoch), this process's share of them (every world-th), their items in
    order through a shuffle buffer; items where `keep` (bool (N,)) is False are left out."""
    rng = np.random.default_rng([seed, 1, epoch])
    starts = np.cumsum([0] + list(counts))
    shards = rng.permutation(len(counts))[rank::world]
    items = np.concatenate([np.arange(starts[k], starts[k + 1]) for k in shards] or [np.zeros(0, np.int64)])
    items = items[keep[items]]
    return buffer_shuffle(items, buffer, np.random.default_rng([seed, 2, epoch, rank]))


def steps_per_epoch(counts: list[int], keep: np.ndarray, share: int, world: int) -> int:
    """Steps in an epoch where each of `world` processes takes `share` items a step from its own
    shards: as many as the smallest share of shards allows, whichever shards it draws."""
    starts = np.cumsum([0] + list(counts))
    kept = sorted(int(keep[starts[k]:starts[k + 1]].sum()) for k in range(len(counts)))
    return sum(kept[: len(counts) // world]) // share


# ---- writing -----------------------------------------------------------------------------------


def _close_shard(tar: tarfile.TarFile, path: Path) -> None:
    """Close a shard written under `.NAME.tmp` and give it its name, now that it is whole."""
    tar.close()
    path.replace(path.with_name(path.name.removeprefix(".").removesuffix(".tmp")))


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    tar.addfile(info, io.BytesIO(data))


def encode_image(array: np.ndarray, image_format: str) -> bytes:
    """uint8 (H, W, C) -> PNG (lossless) or JPEG (quality 95) bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    image.save(buffer, format="PNG" if image_format == "png" else "JPEG", **({"quality": 95} if image_format == "jpg" else {}))
    return buffer.getvalue()


def write_shards(source, out: Path, *, shard_size: int = 5000, seed: int = 0, image_format: str = "png",
                 progress: bool = True) -> tuple[str, int, list[tuple[str, str]]]:
    """Write every readable item of a `sources.Source` into shuffled tar shards of `shard_size`
    samples (`out/train-0000.tar`, ...; KEY.png or KEY.jpg, KEY.cls when labelled) and the class
    names into `out/classes.txt`. Each shard is written under a temporary name and renamed when
    whole. Returns (the brace spec that reads them back, samples written, items skipped)."""
    from tqdm.auto import tqdm

    if image_format not in ("png", "jpg"):
        raise ValueError(f"unknown image format {image_format!r}; expected png or jpg")
    if shard_size < 1:
        raise ValueError(f"shard size must be positive; got {shard_size}")
    out = Path(out)
    if out.exists() and any(out.glob(f"*{SHARD_SUFFIX}")):
        raise ValueError(f"{out} holds shards already; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(source.count)
    shards = max(1, -(-source.count // shard_size))
    digits = max(4, len(str(shards - 1)))
    skipped, written, tar, current, path = list(source.skipped), 0, None, -1, None
    try:
        for i in tqdm(order, desc=f"packing into {out}", disable=not progress):
            try:
                data = encode_image(source.read(int(i)), image_format)
            except ValueError as error:
                skipped.append((source.name(int(i)), str(error)))
                continue
            if written // shard_size != current:  # the next shard: the one before is whole
                if tar is not None:
                    _close_shard(tar, path)
                current = written // shard_size
                path = out / f".train-{current:0{digits}d}{SHARD_SUFFIX}.tmp"
                tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
            key = f"{written:0{max(8, digits + 4)}d}"
            _add_member(tar, f"{key}.{image_format}", data)
            if source.labels is not None:
                _add_member(tar, f"{key}.cls", str(int(source.labels[i])).encode())
            written += 1
    except BaseException:
        if tar is not None:  # a shard cut short is never left under a shard's name
            tar.close()
            path.unlink(missing_ok=True)
        raise
    if tar is not None:
        _close_shard(tar, path)
    if not written:
        raise ValueError(f"no item of {source.description} could be read"
                         + (f"; e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    if source.class_names:
        atomic_write_text(out / CLASS_NAMES_FILE, "".join(f"{k}\t{name}\n" for k, name in enumerate(source.class_names)))
    last = -(-written // shard_size) - 1
    spec = str(out / f"train-{{{0:0{digits}d}..{last:0{digits}d}}}{SHARD_SUFFIX}") if last else str(out / f"train-{0:0{digits}d}{SHARD_SUFFIX}")
    return spec, written, skipped
