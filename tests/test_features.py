"""The classifier feature extractor, reference caching and the evaluate command, on digits."""

import json

import numpy as np
import pytest
import torch

import pixel_diffusion.data as data_module
from pixel_diffusion.cli import main
from pixel_diffusion.data import DataConfig, load_images
from pixel_diffusion.features import ClassifierFeatures, train_classifier
from pixel_diffusion.metrics import evaluate_images, fid, kid, reference_features
from pixel_diffusion.samplers import DEFAULT_SAMPLER


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    info = train_classifier(DataConfig("digits"), folder, epochs=6, progress=False)
    assert info["validation_accuracy"] > 0.9
    return folder


def _digits():
    data = load_images(DataConfig("digits", validation_fraction=0.1), progress=False)
    as_images = lambda idx: data.uint8(idx).permute(0, 2, 3, 1).numpy()  # noqa: E731
    return as_images(data.train), as_images(data.validation)


def _blur(images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    kernel = torch.ones(1, 1, 3, 3) / 9
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)
    return blurred.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_real_beats_blurred_beats_noise(classifier):
    extractor = ClassifierFeatures(classifier)
    train, held_out = _digits()
    reference, _ = extractor(train)
    noise = np.random.default_rng(0).integers(0, 256, held_out.shape, dtype=np.uint8)
    fids, kids, confidence = [], [], []
    for images in (held_out, _blur(held_out), noise):
        features, probabilities = extractor(images)
        fids.append(fid(reference, features))
        kids.append(kid(reference, features, subsets=20, subset_size=150)[0])
        confidence.append(float((probabilities.max(1) > 0.9).mean()))
    assert fids[0] < fids[1] < fids[2] and kids[0] < kids[1] < kids[2]
    assert confidence[0] > max(confidence[1:]), confidence
    assert confidence[2] < 0.05, confidence  # the reject class takes the noise


def test_the_reject_class_stops_noise_and_scribbles_being_called_digits(classifier, tmp_path):
    from pixel_diffusion.features.classifier import corrupt

    plain = tmp_path / "plain"
    train_classifier(DataConfig("digits"), plain, epochs=6, progress=False, reject_class=False)
    _, held_out = _digits()
    x = torch.from_numpy(held_out).permute(0, 3, 1, 2).float() / 127.5 - 1
    scribbles = ((corrupt(x, torch.Generator().manual_seed(1)) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    uniform = np.random.default_rng(0).integers(0, 256, held_out.shape, dtype=np.uint8)
    rates = {}
    for name, folder in (("reject", classifier), ("plain", plain)):
        extractor = ClassifierFeatures(folder)
        rates[name] = [float((extractor(images)[1].max(1) > 0.9).mean()) for images in (held_out, scribbles, uniform)]
    # 8x8 digits after 6 epochs: real ones are called less often than on MNIST, corruptions almost never.
    assert rates["reject"][0] > 0.3 and rates["reject"][1] < 0.05 and rates["reject"][2] < 0.05, rates
    assert min(rates["plain"][1:]) > 0.3, rates  # without it, corruptions pass as digits
    assert json.loads((classifier / "classifier.json").read_text())["validation_corrupted_rejected"] > 0.9


def test_reference_features_are_cached(classifier, tmp_path, monkeypatch):
    extractor = ClassifierFeatures(classifier)
    first = reference_features(extractor, DataConfig("digits"), tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached features should have been used")

    monkeypatch.setattr(data_module, "load_images", no_decoding)
    assert np.array_equal(reference_features(extractor, DataConfig("digits"), tmp_path, progress=False), first)
    monkeypatch.undo()
    reference_features(extractor, DataConfig("digits", normalise="standardise"), tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # other preparation, other key


def test_evaluate_images_reports_every_metric(classifier):
    extractor = ClassifierFeatures(classifier)
    train, held_out = _digits()
    scores = evaluate_images(held_out, extractor(train)[0], extractor, kid_subsets=10, kid_subset_size=100)
    assert set(scores) == {"n", "fid", "kid", "kid_std", "precision", "recall", "confidence", "class_balance"}
    assert scores["class_balance"] > 0.95 and scores["precision"] > 0.5
    without = evaluate_images(held_out, extractor(train)[0], extractor, kid_subsets=10, kid_subset_size=100,
                              with_precision_recall=False)
    assert set(scores) - set(without) == {"precision", "recall"}  # the rest is the same computation
    assert all(without[name] == scores[name] for name in without)


def test_evaluate_command_on_images_and_on_a_run(classifier, tmp_path, capsys):
    _, held_out = _digits()
    np.savez(tmp_path / "samples.npz", images=held_out)
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--images", str(tmp_path / "samples.npz"), "--reference", "digits", "--classifier", str(classifier),
            "--cache", str(tmp_path / "cache"), "--kid-subset-size", "100", "--out", str(out)]
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert written["n"] == len(held_out) and written["fid"] >= 0 and written["extractor"].startswith("classifier-")

    from pixel_diffusion.config import apply_overrides
    from pixel_diffusion.presets import preset
    from pixel_diffusion.training import train

    config = apply_overrides(preset("mnist"), ["data.source=digits", 'network_options={"widths": [8, 16], "groups": 4}',
                                               "batch_size=32", "steps=2", "preview_every=0", "progress=false",
                                               "precision=fp32", "conditional=true", "clusters=0"])
    train(config, tmp_path / "run")
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--n", "40", "--steps", "3", "--classifier", str(classifier),
                 "--cache", str(tmp_path / "cache"), "--kid-subset-size", "40", "--guidance", "2"]) == 0
    written = json.loads((tmp_path / "run" / f"metrics-{DEFAULT_SAMPLER}-3.json").read_text())  # named for the walk
    assert written["n"] == 40 and 0 <= written["accuracy"] <= 1  # a class-conditional run reports accuracy
    capsys.readouterr()
    assert main(["evaluate", "--images", str(tmp_path / "samples.npz"), "--classifier", str(tmp_path / "none")]) == 2
    assert "holds no classifier" in capsys.readouterr().err
    assert main(["evaluate", "--images", str(tmp_path / "samples.npz"), "--classifier", str(classifier)]) == 2
    assert "--images needs --reference" in capsys.readouterr().err
    # Sampling options mean nothing for images given as they are: refused, not silently ignored.
    assert main(["evaluate", "--images", str(tmp_path / "samples.npz"), "--reference", "digits", "--classifier",
                 str(classifier), "--eta", "0.5", "--steps", "20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps, --eta set how a --run is sampled" in err
