"""Data sources and the transform pipeline, on files the tests write themselves."""

import gzip
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pixel_diffusion.data import (
    DataConfig,
    Normalisation,
    convert_channels,
    load_images,
    open_source,
    split_indices,
)

RNG = np.random.default_rng(0)


def _load(source, **options):
    return load_images(DataConfig(str(source), **options), progress=False)


def _rgb(h=20, w=24):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- image folders ----------------------------------------------------------------------------


def test_folder_of_every_format_is_found_recursively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(_rgb()).save(tmp_path / "one.png")
    Image.fromarray(_rgb()).save(tmp_path / "a" / "two.jpg", quality=95)
    Image.fromarray(_rgb()).save(tmp_path / "a" / "three.bmp")
    Image.fromarray(_rgb()).save(tmp_path / "a" / "b" / "four.webp")
    Image.fromarray(_rgb()).save(tmp_path / "a" / "b" / "five.tiff")
    first, second = _rgb(), _rgb()
    Image.fromarray(first).save(tmp_path / "six.gif", save_all=True, append_images=[Image.fromarray(second)])
    data = _load(tmp_path, image_size=16)
    assert len(data) == 6 and data.images.shape == (6, 3, 16, 16) and data.channels == 3
    # The GIF contributes its first frame only (GIF quantises colours: compare loosely).
    frame = Image.open(tmp_path / "six.gif").convert("RGB").crop((2, 0, 22, 20))  # centre square of 24x20
    gif = np.asarray(frame.resize((16, 16), Image.BICUBIC, reducing_gap=None))
    position = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")).index("six.gif")
    assert np.abs(data.images[position].permute(1, 2, 0).numpy().astype(int) - gif.astype(int)).max() <= 1


def test_folder_of_pngs_written_from_an_array_loads_back_identically(tmp_path):
    images = RNG.integers(0, 256, (7, 12, 12, 3), dtype=np.uint8)
    for k, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{k:02d}.png")
    data = _load(tmp_path)
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), images)


def test_grayscale_is_kept_when_every_image_is_grayscale(tmp_path):
    gray = RNG.integers(0, 256, (10, 10), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "gray_as_rgb.png")  # equal channels
    data = _load(tmp_path)
    assert data.channels == 1 and np.array_equal(data.images[0, 0].numpy(), gray)
    assert _load(tmp_path, channels=3).images.shape == (2, 3, 10, 10)
    Image.fromarray(_rgb(10, 10)).save(tmp_path / "colour.png")
    assert _load(tmp_path).channels == 3
    assert _load(tmp_path, channels=1).images.shape == (3, 1, 10, 10)


def test_class_folders_become_labels(tmp_path):
    for name, count in (("dog", 2), ("cat", 3)):
        (tmp_path / name).mkdir()
        for k in range(count):
            Image.fromarray(_rgb(8, 8)).save(tmp_path / name / f"{k}.png")
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "loose.png")
    with pytest.warns(UserWarning, match="loose.png"):
        data = _load(tmp_path, class_folders=True)
    assert data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert _load(tmp_path).labels is None


def test_odd_modes_convert_correctly(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    data = _load(tmp_path)
    assert data.images.unique().tolist() == [255]  # over white
    assert _load(tmp_path, alpha="drop").images[0, 0].unique().tolist() == [255]
    assert _load(tmp_path, alpha="drop").images[0, 1].unique().tolist() == [0]

    (tmp_path / "rgba.png").unlink()
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "sixteen.png")
    data = _load(tmp_path)
    assert data.channels == 1
    np.testing.assert_array_equal(data.images[0, 0].numpy(), np.round(wide / 257).astype(np.uint8))

    (tmp_path / "sixteen.png").unlink()
    palette = Image.fromarray(_rgb(8, 8)).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    cmyk = Image.fromarray(_rgb(8, 8)).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(_rgb(8, 8)).convert("LA").save(tmp_path / "la.png")
    data = _load(tmp_path)
    assert len(data) == 3 and data.channels == 3
    expected_palette = np.asarray(palette.convert("RGB"))
    position = ["cmyk.jpg", "la.png", "palette.png"].index("palette.png")
    assert np.array_equal(data.images[position].permute(1, 2, 0).numpy(), expected_palette)


def test_bad_files_are_skipped_with_one_summary_warning(tmp_path):
    good = _rgb(32, 32)
    for k in range(3):
        Image.fromarray(good).save(tmp_path / f"good{k}.png")
    buffer = (tmp_path / "good0.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(buffer[: len(buffer) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image at all")
    (tmp_path / "readme.txt").write_text("hello")
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "tiny.png")
    # A BMP header that claims 40000 x 40000 pixels: refused before any pixel is read.
    header = b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 40000, 40000, 1, 24, 0, 0, 0, 0, 0, 0)
    (tmp_path / "bomb.bmp").write_bytes(header + b"\0" * 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = _load(tmp_path, image_size=16)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(messages) == 1, messages
    head, _, listed = messages[0].partition(": ")
    assert head == "skipped 6 of 9 items" and listed.endswith("; and 1 more")
    expected = {
        "bomb.bmp": "more than 89,478,485 pixels",
        "empty.png": "empty file",
        "notes.png": "not an image",
        "readme.txt": "not an image file",
        "tiny.png": "8x8 is smaller than 16x16",
        "truncated.png": "unreadable",
    }
    shown = [entry for entry in listed.split("; ") if not entry.startswith("and ")]
    assert len(shown) == 5
    for entry in shown:
        name, _, reason = entry.partition(" (")
        assert reason.startswith(expected[name]), entry
    assert len(data) == 3
    with pytest.warns(UserWarning, match="skipped 5 of 9"):
        assert len(_load(tmp_path, image_size=16, allow_upscale=True)) == 4  # the tiny one is enlarged


def test_empty_or_missing_sources_stop_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist; expected a folder of images"):
        _load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no usable images"):
        _load(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="all 1 items were skipped"):
        with pytest.warns(UserWarning):
            _load(tmp_path)
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(9, 9)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="differ in size.*data.image_size"):
        with pytest.warns(UserWarning):
            _load(tmp_path)


def test_a_folder_of_mixed_sizes_is_fitted_to_mixed_sizes_to(tmp_path):
    # Three sizes, the first images of one size: those decoded before the others are fitted too.
    photos, one = tmp_path / "photos", tmp_path / "one"
    photos.mkdir(), one.mkdir()
    arrays = [_rgb(40, 40), _rgb(40, 40), _rgb(60, 45), _rgb(12, 12), _rgb(33, 70)]
    for k, array in enumerate(arrays):
        Image.fromarray(array).save(photos / f"{k}.png")
    Image.fromarray(arrays[0]).save(one / "a.png")
    with pytest.warns(UserWarning, match=r"skipped 1 of 5 items: 3.png \(12x12 is smaller than 32x32"):
        data = _load(photos, mixed_sizes_to=32)
    assert data.size == (32, 32) and len(data) == 4
    assert torch.equal(data.images[0], _load(one, image_size=32).images[0])  # the same fit as image_size=32
    assert _load(one, mixed_sizes_to=32).size == (40, 40)  # one size: kept as it is
    with pytest.warns(UserWarning, match="skipped 1 of 5"):  # decoded first, then read item by item
        item_by_item = _load(photos, mixed_sizes_to=32, max_cache_bytes=0, stream="no")
    assert item_by_item.images is None and not item_by_item.streamed
    assert torch.equal(item_by_item.uint8(np.arange(4)), data.images)
    with pytest.warns(UserWarning, match="skipped 1 of 5"):  # streamed: its sample meets the small one
        streamed = _load(photos, mixed_sizes_to=32, max_cache_bytes=0)
    assert streamed.streamed and torch.equal(streamed.uint8([0, 1, 2, 4]), data.images)


def test_resizing_is_antialiased(tmp_path):
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    Image.fromarray(checker).save(tmp_path / "checker.png")
    small = _load(tmp_path, image_size=16).images.float()
    assert abs(small.mean().item() - 127.5) < 2 and small.std().item() < 3  # not aliased into stripes


def test_fits_crop_the_centre_square(tmp_path):
    wide = np.zeros((10, 30), np.uint8)
    wide[:, 10:20] = 200  # the centre square is uniform 200
    Image.fromarray(wide).save(tmp_path / "wide.png")
    for fit in ("crop", "resize-crop"):
        assert _load(tmp_path, image_size=10, fit=fit).images.unique().tolist() == [200]


# ---- arrays, idx, CIFAR -----------------------------------------------------------------------


def test_npz_round_trip_with_labels_and_layouts(tmp_path):
    images = RNG.integers(0, 256, (6, 9, 9, 3), dtype=np.uint8)
    labels = np.arange(6)
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    data = _load(tmp_path / "set.npz")
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), images) and data.labels.tolist() == labels.tolist()
    np.save(tmp_path / "chw.npy", images.transpose(0, 3, 1, 2))
    assert np.array_equal(_load(tmp_path / "chw.npy").images.permute(0, 2, 3, 1).numpy(), images)
    np.save(tmp_path / "unit.npy", images / 255.0)
    assert np.array_equal(_load(tmp_path / "unit.npy").images.permute(0, 2, 3, 1).numpy(), images)
    np.save(tmp_path / "signed.npy", (images / 127.5 - 1).astype(np.float32))
    assert np.array_equal(_load(tmp_path / "signed.npy").images.permute(0, 2, 3, 1).numpy(), images)
    np.save(tmp_path / "gray.npy", images[..., 0])
    assert _load(tmp_path / "gray.npy").images.shape == (6, 1, 9, 9)


def test_arrays_of_the_wrong_shape_or_range_are_refused(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 5, 5, 7), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(4, 5, 5, 7\) is not a stack of images; expected \(N, H, W\)"):
        _load(tmp_path / "bad.npy")
    np.save(tmp_path / "range.npy", np.full((2, 4, 4), 300.0))
    with pytest.raises(ValueError, match="values span 300..300; expected"):
        _load(tmp_path / "range.npy")
    np.savez(tmp_path / "keys.npz", pictures=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"holds \['pictures'\]; expected images under one of images"):
        _load(tmp_path / "keys.npz")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy/.npz"):
        _load(tmp_path / "objects.npy")


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_round_trip(tmp_path, compress):
    images = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    suffix = ".gz" if compress else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress)
    for source in (tmp_path, tmp_path / f"train-images-idx3-ubyte{suffix}"):
        data = _load(source)
        assert np.array_equal(data.images[:, 0].numpy(), images) and data.labels.tolist() == labels.tolist()
    (tmp_path / f"train-images-idx3-ubyte{suffix}").write_bytes(
        gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 5, 28, 28) + b"\0" * 100)
    )
    with pytest.raises(ValueError, match="truncated"):
        _load(tmp_path)


def test_cifar_batches_round_trip_and_refuse_code(tmp_path):
    images = RNG.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    batch = {b"data": images.transpose(0, 3, 1, 2).reshape(4, -1), b"labels": [1, 2, 3, 4], b"batch_label": b"x"}
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    data = _load(tmp_path)
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), images) and data.labels.tolist() == [1, 2, 3, 4]

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        _load(tmp_path)


def test_builtins_load():
    data = load_images(DataConfig("digits"), progress=False)
    assert data.images.shape == (1797, 1, 8, 8) and data.labels is not None


# ---- split, normalisation, serving ------------------------------------------------------------


def test_split_is_deterministic_and_disjoint():
    train, val = split_indices(1000, 0.1, seed=3)
    again = split_indices(1000, 0.1, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert len(val) == 100 and len(set(train) | set(val)) == 1000 and not set(train) & set(val)
    assert not np.array_equal(val, split_indices(1000, 0.1, seed=4)[1])


def test_standardisation_is_measured_on_the_training_split(tmp_path):
    images = RNG.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "set.npy", images)
    data = _load(tmp_path / "set.npy", normalise="standardise", validation_fraction=0.2, seed=1)
    pixels = images[data.train].reshape(-1, 3) / 255.0
    np.testing.assert_allclose(data.normalisation.mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(data.normalisation.std, pixels.std(0), rtol=1e-6)
    x = data.normalisation.to_model(data.images)
    assert np.array_equal(data.normalisation.to_uint8(x), images)
    low, high = data.normalisation.data_range(3)
    assert bool((x <= high + 1e-6).all() and (x >= low - 1e-6).all())


def test_minus_one_one_round_trip_is_exact():
    images = torch.from_numpy(RNG.integers(0, 256, (4, 3, 5, 5), dtype=np.uint8))
    x = Normalisation().to_model(images)
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(Normalisation().to_uint8(x), images.permute(0, 2, 3, 1).numpy())


def test_streaming_serves_the_same_batches_as_the_cache(tmp_path):
    for k in range(10):
        Image.fromarray(_rgb(12, 12)).save(tmp_path / f"{k}.png")
    cached = _load(tmp_path)
    streamed = _load(tmp_path, max_cache_bytes=0)
    assert cached.images is not None and streamed.images is None
    a = list(cached.batches(4, generator=torch.Generator().manual_seed(0)))
    b = list(streamed.batches(4, generator=torch.Generator().manual_seed(0)))
    assert len(a) == len(b) == 2
    for (x, _), (y, _) in zip(a, b):
        assert torch.equal(x, y)


def test_batches_cover_the_split_once_and_flip_some_images(tmp_path):
    images = RNG.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "set.npy", images)
    data = _load(tmp_path / "set.npy", flip=True, validation_fraction=0.25)
    reference = Normalisation().to_model(torch.from_numpy(images).permute(0, 3, 1, 2))
    seen, flipped = [], 0
    for x, _ in data.batches(5, generator=torch.Generator().manual_seed(0)):
        for image in x:
            match = [k for k in range(40) if torch.equal(image, reference[k]) or torch.equal(image, reference[k].flip(-1))]
            assert len(match) == 1
            seen.append(match[0])
            flipped += not torch.equal(image, reference[match[0]])
    assert sorted(seen) == sorted(data.train.tolist()) and 0 < flipped < 30
    assert sum(len(x) for x, _ in data.batches(4, generator=torch.Generator(), split="validation", drop_last=False)) == 10
    with pytest.raises(ValueError, match="batch size 64 does not fit the 30 images"):
        next(data.batches(64, generator=torch.Generator()))


def test_channel_conversion_uses_luma():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert convert_channels(rgb, 1)[..., 0].tolist() == [[76, 150, 29]]
    assert convert_channels(rgb[..., :1], 3).shape == (1, 3, 3)


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="expected one of crop, resize-crop"):
        DataConfig(fit="stretch")
    with pytest.raises(ValueError, match="expected one of auto, 1, 3"):
        DataConfig(channels=2)
    with pytest.raises(ValueError, match=r"validation_fraction must lie in \[0, 1\)"):
        DataConfig(validation_fraction=1.0)


# ---- Hugging Face datasets --------------------------------------------------------------------


def test_hugging_face_dataset_from_a_local_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = RNG.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    features = datasets.Features({"img": datasets.Image(), "kind": datasets.ClassLabel(names=["a", "b"])})
    table = datasets.Dataset.from_dict({"img": [Image.fromarray(i) for i in images], "kind": [0, 1, 1, 0]}, features=features)
    table.save_to_disk(str(tmp_path / "saved"))
    data = _load(f"hf:{tmp_path / 'saved'}")
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), images) and data.labels.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="could not fetch the dataset 'nobody/nothing'.*local folder"):
        open_source(DataConfig("hf:nobody/nothing"))


def test_image_folder_dataset_takes_labels_from_sub_folders_and_splits_from_train_and_test(tmp_path):
    pytest.importorskip("datasets")
    made = {}
    for split, count in (("train", 3), ("test", 2)):
        for kind in ("cat", "dog"):
            (tmp_path / split / kind).mkdir(parents=True)
            for k in range(count):
                image = _rgb(12, 12)
                Image.fromarray(image).save(tmp_path / split / kind / f"{k}.png")
                made.setdefault(split, []).append((kind, image))
    train = _load(f"imagefolder:{tmp_path}")
    test = _load(f"imagefolder:{tmp_path}", hf_split="test")
    for data, split in ((train, "train"), (test, "test")):
        assert len(data.images) == len(made[split]) and data.class_names == ["cat", "dog"]
        pixels = {data.images[i].permute(1, 2, 0).numpy().tobytes(): data.class_names[int(data.labels[i])]
                  for i in range(len(data.images))}
        assert pixels == {image.tobytes(): kind for kind, image in made[split]}  # every image with its folder's label
    with pytest.raises(ValueError, match="imagefolder:.*no such folder"):
        open_source(DataConfig(f"imagefolder:{tmp_path / 'missing'}"))
