"""Colour photos: the recipe `train --data` picks for a folder, mixed sizes, and the colour presets."""

import json

import numpy as np
import pytest
from PIL import Image

from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.data import DataConfig, open_source
from pixel_diffusion.presets import choose_preset, preset
from pixel_diffusion.runs import load_run
from pixel_diffusion.shards import write_shards
from pixel_diffusion.training import train


def photos(folder, sizes, seed=0, gray=False):
    """Smooth colour (or grey) pictures of the given (width, height) sizes, as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, (w, h) in enumerate(sizes):
        small = rng.integers(0, 256, (4, 4, 1 if gray else 3), dtype=np.uint8)
        image = Image.fromarray(small[..., 0] if gray else small).resize((w, h), Image.BILINEAR)
        image.save(folder / f"{k:03d}.jpg", quality=95)
    return folder


@pytest.mark.parametrize("sizes, gray, expected, said", [
    ([(32, 32)] * 6, False, "cifar10", "6 colour images of 32x32: cifar10 at 32x32"),
    ([(40, 30), (36, 44), (50, 40)] * 2, False, "cifar10", "mixed sizes (median shorter side 36)"),
    ([(120, 90), (200, 150), (64, 64)] * 2, False, "colour-64", "colour-64 at 64x64 (resized and centre-cropped)"),
    ([(28, 28)] * 6, True, "mnist", "6 grayscale images of 28x28: mnist (grayscale) at their size"),
])
def test_the_recipe_fits_the_data(tmp_path, sizes, gray, expected, said):
    choice = choose_preset(str(photos(tmp_path / "data", sizes, gray=gray)))
    assert choice.preset == expected and said in choice.reason
    assert choice.overrides == {"clusters": 0, "batch_size": 4}  # so few images: no clusters, a batch they fill
    assert choice.reason.endswith("; clusters 0, batch size 4 for so few images")


@pytest.mark.parametrize("size, plain", [(32, "cifar10"), (96, "colour-64")])
def test_class_folders_choose_the_conditional_form(tmp_path, size, plain):
    for name in ("cats", "dogs"):
        photos(tmp_path / "data" / name, [(size, size)] * 3)
    choice = choose_preset(str(tmp_path / "data"))
    assert choice.preset == f"{plain}-conditional" and choice.overrides == {"data.class_folders": True, "batch_size": 4}
    assert "in 2 class folders" in choice.reason
    photos(tmp_path / "data", [(size, size)])  # an image beside the class folders: not a labelled folder
    assert choose_preset(str(tmp_path / "data")).preset == plain


def test_labelled_shards_of_photos_choose_colour_64_conditional(tmp_path):
    for name in ("cats", "dogs"):
        photos(tmp_path / "data" / name, [(80, 64)] * 4, seed=len(name))
    spec, written, _ = write_shards(open_source(DataConfig(str(tmp_path / "data"), class_folders=True)),
                                    tmp_path / "shards", shard_size=5, progress=False)
    choice = choose_preset(spec)
    assert written == 8 and choice.preset == "colour-64-conditional" and "8 colour images of 80x64 with labels" in choice.reason
    assert choice.overrides == {"batch_size": 8}  # the shards carry their labels: no class folders to name
    config = preset(choice.preset)
    assert config.conditional and config.clusters == 0 and config.guidance > 1 and config.network == "photo-64"


def test_a_folder_of_mixed_size_photos_trains_with_no_option_set(tmp_path, capsys):
    data = photos(tmp_path / "holiday", [(48, 36), (40, 52), (64, 48), (36, 36)] * 60)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "2", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "no --preset: 240 colour images of mixed sizes" in said and "cifar10 at 32x32" in said
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["preset"] == "cifar10" and config["model"]["image_size"] == [32, 32]
    assert config["train"]["clusters"] == 2 and "clusters 2 for so few images" in said  # one per 100 images
    assert load_run(run).sample(2, steps=2, progress=False).shape == (2, 32, 32, 3)


def test_a_named_preset_fits_a_folder_of_mixed_sizes_to_its_resolution(tmp_path):
    data = photos(tmp_path / "digits", [(30, 30), (40, 34), (28, 28)] * 4, gray=True)
    tiny = {"network_options": {"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16},
            "clusters": 2, "steps": 1, "batch_size": 4, "preview_every": 0, "progress": False, "data.source": str(data)}
    train(apply_overrides(preset("mnist"), tiny), tmp_path / "run")
    assert load_run(tmp_path / "run").spec.image_size == (28, 28)
