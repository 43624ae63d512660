import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pixel_diffusion import schedules
from pixel_diffusion.cli import main
from pixel_diffusion.data import from_model_range, load_builtin, to_model_range
from pixel_diffusion.viz import forward_strip, image_grid, trajectory


def test_builtin_data_has_the_documented_shapes():
    images, labels = load_builtin("mnist-5k")
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8 and images.max() > 200
    assert labels.shape == (5000,) and set(labels.tolist()) == set(range(10))
    images, labels = load_builtin("digits")
    assert images.shape == (1797, 8, 8, 1) and images.max() == 255 and set(labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="expected one of mnist-5k, digits"):
        load_builtin("cifar")


def test_model_range_round_trip_is_exact():
    images = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    x = to_model_range(images)
    assert x.shape == (5, 3, 7, 9) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(from_model_range(x), images)


def test_picture_sizes():
    grid = image_grid(np.zeros((10, 8, 6, 1), np.uint8), columns=4, padding=2, scale=3)
    assert grid.mode == "L" and grid.size == ((4 * 8 + 2) * 3, (3 * 10 + 2) * 3)
    assert image_grid(np.zeros((3, 5, 5, 3), np.uint8), columns=3).mode == "RGB"
    x = torch.zeros(2, 1, 8, 8)
    strip = forward_strip(schedules.linear(), x, [0, 0.5, 1], scale=1)
    assert strip.width == 3 * 10 + 2 and strip.height > 4 * 10  # 2 closed-form rows + 2 chain rows
    assert forward_strip(schedules.continuous_cosine(), x, [0, 1], scale=1).height < strip.height
    picture = trajectory([(x, x)] * 5, scale=1)
    assert picture.width == 5 * 10 + 2


def test_demo_trains_and_writes_its_pictures(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--minutes", "0.05"]) == 0
    for name in ("demo_samples.png", "demo_forward_process.png", "demo_trajectory.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.width > 50 and picture.height > 50
    model = json.loads((tmp_path / "config.json").read_text())["model"]
    assert model["num_classes"] == 50 and sum(model["label_prior"]) == pytest.approx(1)  # the preset's clusters
    assert (tmp_path / "checkpoints" / "latest").exists()
    assert "demo done in" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["demo", "--minutes", "0"], ["demo", "--minutes", "-3"], ["sample"], []])
def test_bad_arguments_exit_2_with_one_line(argv):
    result = subprocess.run([sys.executable, "-m", "pixel_diffusion", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") <= 1
