"""Tar shards: read as WebDataset writes them, written as WebDataset reads them, walked in a seeded
order that resumes exactly, and bad shards met with one line or skipped and counted."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.data import DataConfig, load_images, open_source
from pixel_diffusion.loader import BatchLoader, LoaderError, StepItems
from pixel_diffusion.presets import preset
from pixel_diffusion.shards import buffer_shuffle, open_shards, stream_order, write_shards
from pixel_diffusion.sources import load_builtin
from pixel_diffusion.training import train

wds = pytest.importorskip("webdataset")

TINY = ['network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
        "batch_size=16", "log_every=1", "preview_every=0", "progress=false", "precision=fp32", "lr_warmup=2", "clusters=0"]


def _images(n: int, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_with_webdataset(folder: Path, images: np.ndarray, labels, per_shard: int) -> str:
    """Shards written by WebDataset's own writer: KEY.png and KEY.cls."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = -(-len(images) // per_shard)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"part-{s:03d}.tar")) as sink:
            for i in range(s * per_shard, min(len(images), (s + 1) * per_shard)):
                sink.write({"__key__": f"sample{i:05d}", "png": _png(images[i]), "cls": str(labels[i])})
    return str(folder / f"part-{{000..{shards - 1:03d}}}.tar")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_shards_written_by_webdataset_read_back_pixel_for_pixel(tmp_path):
    images, labels = _images(30), np.arange(30) % 4
    spec = _write_with_webdataset(tmp_path / "s", images, labels, per_shard=8)
    (tmp_path / "s" / "classes.txt").write_text("".join(f"{k}\tn0{k}\tname{k}, other\n" for k in range(4)))
    data = load_images(DataConfig(spec), progress=False)
    assert data.streamed and data.shard_counts == (8, 8, 8, 6) and data.class_names == ["name0", "name1", "name2", "name3"]
    assert np.array_equal(data.uint8(np.arange(30)).permute(0, 2, 3, 1).numpy(), images)
    assert data.labels.tolist() == labels.tolist()
    cached = load_images(DataConfig(spec, stream="no"), progress=False)  # decoded up front, held in memory
    assert cached.images is not None and torch.equal(cached.images, data.uint8(np.arange(30)))
    # The same shards named as a folder and as a list file.
    listed = tmp_path / "shards.txt"
    listed.write_text("".join(f"s/part-{k:03d}.tar\n" for k in range(4)))
    for other in (str(tmp_path / "s"), str(listed), str(tmp_path / "s" / "part-*.tar")):
        assert open_shards(other).counts == [8, 8, 8, 6]


def test_pack_writes_shards_webdataset_reads_and_so_do_we(tmp_path, capsys):
    assert main(["pack", "digits", "--out", str(tmp_path / "p"), "--shard-size", "500", "--no-progress"]) == 0
    spec = str(tmp_path / "p" / "train-{0000..0003}.tar")
    assert spec in capsys.readouterr().out
    digits, digit_labels = load_builtin("digits")
    seen = {}
    for sample in wds.WebDataset(spec, shardshuffle=False).decode("l8"):
        seen[sample["__key__"]] = (sample["png"], int(sample["cls"]))
    assert len(seen) == len(digits)
    order = np.random.default_rng(0).permutation(len(digits))  # pack's shuffle, seed 0
    keys = sorted(seen)
    assert all(np.array_equal(seen[keys[n]][0], digits[i, ..., 0]) and seen[keys[n]][1] == digit_labels[i]
               for n, i in enumerate(order))
    data = load_images(DataConfig(spec), progress=False)
    assert data.channels == 1 and np.array_equal(data.uint8(np.arange(len(data)))[:, 0].numpy(), digits[order, ..., 0])
    assert main(["pack", "digits", "--out", str(tmp_path / "p"), "--no-progress"]) == 2  # never over shards
    # Class names, commas and all, come back from the classes.txt that pack writes.
    folder = tmp_path / "classes"
    for name in ("cats, big", "dogs"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(_images(1, seed=i)[0]).save(folder / name / f"{i}.png")
    assert main(["pack", str(folder), "--class-folders", "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    assert open_shards(str(tmp_path / "q")).class_names == ["cats, big", "dogs"]


def test_an_epoch_walks_every_item_once_and_processes_split_the_shards():
    counts, keep = [7, 9, 8, 6], np.ones(30, bool)
    keep[[3, 17]] = False  # validation items
    train = np.flatnonzero(keep)
    one = stream_order(counts, keep, seed=0, epoch=0, buffer=5)
    assert sorted(one.tolist()) == train.tolist()
    assert not np.array_equal(one, stream_order(counts, keep, seed=0, epoch=1, buffer=5))
    assert np.array_equal(one, stream_order(counts, keep, seed=0, epoch=0, buffer=5))
    halves = [stream_order(counts, keep, seed=0, epoch=2, buffer=5, rank=r, world=2) for r in (0, 1)]
    assert sorted(np.concatenate(halves).tolist()) == train.tolist()
    starts = np.cumsum([0, *counts])
    shard_of = lambda items: {int(np.searchsorted(starts, i, side="right")) - 1 for i in items}  # noqa: E731
    assert not shard_of(halves[0]) & shard_of(halves[1])  # each process reads its own shards
    # Buffer 1 reads the shards straight through: each shard's items together, in order.
    straight = stream_order(counts, np.ones(30, bool), seed=0, epoch=0, buffer=1)
    for k in range(len(counts)):
        where = np.flatnonzero((straight >= starts[k]) & (straight < starts[k + 1]))
        assert np.array_equal(straight[where], np.arange(starts[k], starts[k + 1])) and np.all(np.diff(where) == 1)
    # A buffer of B lets item n out only once item n + B - 1 has gone in (WebDataset's shuffle).
    items, b = np.arange(1000), 10
    shuffled = buffer_shuffle(items, b, np.random.default_rng(0))
    assert sorted(shuffled.tolist()) == items.tolist() and not np.array_equal(shuffled, items)
    assert (shuffled[: 1000 - b] <= np.arange(1000 - b) + b - 1).all()


def test_batches_read_ahead_by_workers_equal_those_read_in_process(tmp_path):
    spec = _write_with_webdataset(tmp_path / "s", _images(40), np.arange(40) % 3, per_shard=10)
    data = load_images(DataConfig(spec, shuffle_buffer=8), progress=False)
    items = StepItems(data, seed=3, batch_size=8)
    assert items.steps_per_epoch == 5
    alone = [b for _, b in zip(range(12), BatchLoader(items, 2, workers=0))]
    ahead = [b for _, b in zip(range(12), BatchLoader(items, 2, workers=2))]
    assert [b.step for b in ahead] == list(range(2, 14))
    assert all(torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) for a, b in zip(alone, ahead))
    epoch = torch.cat([b.labels for b in alone[3:8]])  # steps 5..9: epoch 1, whole
    assert len(epoch) == 40 and torch.equal(torch.bincount(epoch), torch.bincount(data.labels))


def _weights(run: Path) -> dict:
    return load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")


def test_a_run_on_shards_resumed_with_other_workers_ends_bit_identical(tmp_path):
    spec = _write_with_webdataset(tmp_path / "s", _images(64), np.arange(64) % 4, per_shard=16)
    config = lambda **extra: apply_overrides(preset("mnist"), [f"data.source={spec}", *TINY,  # noqa: E731
                                                               "data.shuffle_buffer=20", "data.flip=true"] + [f"{k}={v}" for k, v in extra.items()])
    train(config(steps=6, checkpoint_every=6, **{"data.workers": 0}), tmp_path / "whole")
    train(config(steps=3, checkpoint_every=3, **{"data.workers": 2}), tmp_path / "resumed")
    train(config(steps=6, checkpoint_every=3, **{"data.workers": 1}), tmp_path / "resumed")
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_resumed_run_refuses_changed_shards(tmp_path, capsys):
    spec = _write_with_webdataset(tmp_path / "s", _images(48), np.arange(48) % 4, per_shard=16)
    args = ["train", "--preset", "mnist", "--data", spec, "--steps", "2", "--out", str(tmp_path / "run"), "--no-progress", *TINY]
    assert main(args) == 0
    _write_with_webdataset(tmp_path / "s", _images(40, seed=1), np.arange(40) % 4, per_shard=16)  # rewritten
    capsys.readouterr()
    assert main([*args[:6], "4", *args[7:]]) == 2
    error = capsys.readouterr().err.strip()
    assert "trained on other shards" in error and "part-002.tar" in error and len(error.splitlines()) == 1


def test_bad_shards_are_one_line_or_skipped_and_counted(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    images = _images(12)
    with tarfile.open(folder / "a.tar", "w") as tar:
        for i in range(6):
            _member(tar, f"k{i}.png", _png(images[i]) if i != 2 else b"not an image at all")
            if i != 4:
                _member(tar, f"k{i}.cls", str(i % 2).encode())
        _member(tar, "k9.json", b"{}")  # a sample with no image
    with tarfile.open(folder / "b.tar", "w") as tar:
        for i in range(6, 12):
            _member(tar, f"k{i}.png", _png(images[i]))
            _member(tar, f"k{i}.cls", str(i % 2).encode())
    data = (folder / "b.tar").read_bytes()
    (folder / "b.tar").write_bytes(data[: len(data) // 2])  # cut short
    shards = open_shards(str(folder))
    reasons = " | ".join(why for _, why in shards.skipped)
    assert "no image member" in reasons and "no label" in reasons and "truncated" in reasons
    assert shards.counts[0] == 5 and 0 < shards.counts[1] < 6  # the samples before the cut are kept
    # The undecodable k2.png, met in a batch, is replaced by another image of the batch and named.
    data = load_images(DataConfig(str(folder)), progress=False)
    images_read, broken, used = data.read_batch([0, 1, 2, 3])
    assert [why for _, why in broken] == ["not an image"] and used.tolist() == [0, 1, 0, 3]
    assert torch.equal(images_read[2], images_read[0])
    run = tmp_path / "run"
    assert main(["train", "--preset", "mnist", "--data", str(folder), "--steps", "3", "--out", str(run), "--no-progress", *TINY[:1],
                 "batch_size=4", "preview_every=0", "precision=fp32", "clusters=0"]) == 0
    assert "not an image" in (run / "skipped.txt").read_text()
    for spec, expected in ((str(tmp_path / "none-{0..3}.tar"), "do not exist"), (str(tmp_path / "*.tar"), "names no shards")):
        capsys.readouterr()
        assert main(["train", "--data", spec, "--steps", "1", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
        error = capsys.readouterr().err.strip()
        assert expected in error and len(error.splitlines()) == 1
    (tmp_path / "fake.tar").write_bytes(b"\x00\x01" * 700)
    with pytest.raises(ValueError, match="not an uncompressed tar shard"):
        open_shards(str(tmp_path / "fake.tar"))


def test_a_streamed_set_measures_itself_on_a_sample_and_clusters_by_pixels(tmp_path):
    images = _images(60, size=8)
    images[:30] //= 4  # two kinds: dark and bright
    spec = _write_with_webdataset(tmp_path / "s", images, np.zeros(60, int), per_shard=20)
    data = load_images(DataConfig(spec, normalise="standardise", stream_sample=60), progress=False)
    whole = images.reshape(-1, 3) / 255
    assert np.allclose(data.normalisation.mean, whole.mean(0)) and np.allclose(data.normalisation.std, whole.std(0))
    sampled = load_images(DataConfig(spec, normalise="standardise", stream_sample=20), progress=False)
    assert sampled.sampled == 20 and np.allclose(sampled.normalisation.mean, whole.mean(0), atol=0.05)
    run = tmp_path / "run"
    train(apply_overrides(preset("mnist"), [f"data.source={spec}", *TINY[:-1], "clusters=2", "steps=2",
                                            "data.stream_sample=40"]), run)
    saved = json.loads((run / "clusters.json").read_text())
    assert saved["sample"] == 40 and len(saved["centres"]) == 2 and sum(saved["prior"]) == pytest.approx(1)
    from pixel_diffusion.clusters import nearest_cluster

    centres = torch.tensor(saved["centres"], dtype=torch.float64)
    found = nearest_cluster(torch.from_numpy(images).permute(0, 3, 1, 2), centres)
    assert len(set(found[:30].tolist())) == 1 and len(set(found[30:].tolist())) == 1 and found[0] != found[59]


def test_write_shards_leaves_no_partial_shard_when_stopped(tmp_path):
    source = open_source(DataConfig("digits"))
    read = source.read

    def stop_at_700(i):
        stop_at_700.calls += 1
        if stop_at_700.calls == 700:
            raise KeyboardInterrupt
        return read(i)
    stop_at_700.calls = 0
    source.read = stop_at_700
    with pytest.raises(KeyboardInterrupt):
        write_shards(source, tmp_path / "p", shard_size=500, progress=False)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["train-0000.tar"]  # whole shards only
    assert len(open_shards(str(tmp_path / "p")).shards[0]) == 500


def test_two_processes_read_their_own_shards(tmp_path):
    spec = _write_with_webdataset(tmp_path / "s", _images(64), np.arange(64) % 4, per_shard=16)
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "pixel_diffusion", "train", "--preset", "mnist", "--data", spec, "--steps", "4",
         "--checkpoint-every", "4", "--out", str(tmp_path / "run"), *TINY, "data.workers=1"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["epoch"] == pytest.approx(4 / 4)


def test_any_source_streams_on_request_and_serves_the_cached_pixels(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    images = _images(20)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    streamed = load_images(DataConfig(str(folder), stream="yes"), progress=False)
    cached = load_images(DataConfig(str(folder)), progress=False)
    assert streamed.streamed and streamed.images is None and cached.images is not None
    assert torch.equal(streamed.uint8(np.arange(20)), cached.images)
    assert "streamed item by item" in streamed.describe() and "in memory" in cached.describe()
    a = StepItems(streamed, seed=1, batch_size=8)
    b = StepItems(cached, seed=1, batch_size=8)
    assert all(np.array_equal(a(step), b(step)) for step in range(6))  # the same walk as the cache's


def test_a_batch_no_image_of_which_reads_stops_training_in_one_line(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    with tarfile.open(folder / "a.tar", "w") as tar:
        _member(tar, "good.png", _png(_images(1)[0]))
        for i in range(40):
            _member(tar, f"k{i:02d}.png", b"garbage" * 10)
    assert main(["train", "--preset", "mnist", "--data", str(folder), "--steps", "3", "--out", str(tmp_path / "run"),
                 "--no-progress", *TINY[:1], "batch_size=8", "data.workers=1", "data.shuffle_buffer=1", "clusters=0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "no image of a batch of 8 could be read" in errors[0]  # and no traceback


def test_a_worker_that_dies_stops_the_loader_in_one_line(tmp_path):
    spec = _write_with_webdataset(tmp_path / "s", _images(32), np.arange(32) % 2, per_shard=16)
    data = load_images(DataConfig(spec), progress=False)
    parent, read = os.getpid(), data.read

    def read_or_die(i):
        if os.getpid() != parent:
            os._exit(3)  # a worker killed mid-batch (out of memory, say)
        return read(i)

    data.read = read_or_die
    with pytest.raises(LoaderError, match="reading the training data failed: DataLoader worker") as caught:
        next(iter(BatchLoader(StepItems(data, seed=0, batch_size=8), 0, workers=1)))
    assert len(str(caught.value).splitlines()) == 1

