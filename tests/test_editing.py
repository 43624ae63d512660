"""Editing (restoration, inpainting, interpolation) and the `show` pictures."""


import numpy as np
import pytest
import torch
from PIL import Image

from pixel_diffusion import schedules
from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.editing import inpaint, restore, slerp
from pixel_diffusion.exact import GaussianDenoiser
from pixel_diffusion.presets import preset
from pixel_diffusion.samplers import Walk
from pixel_diffusion.training import train


def _images(n=4):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_restoring_at_a_tiny_strength_returns_nearly_the_input():
    denoiser = GaussianDenoiser.iid(schedules.cosine(), 0.0, 0.5)
    x = _images()
    near = restore(denoiser, x, Walk("ddim", 5, "karras"), strength=0.002)
    far = restore(denoiser, x, Walk("ddim", 5, "karras"), strength=1.0)
    assert (near - x).abs().max() < 0.05 and (near - x).abs().mean() < 0.01  # within the noise of t = 0.002
    assert (far - x).abs().mean() > 10 * (near - x).abs().mean()
    variations = restore(denoiser, x, Walk("ddpm", 10), strength=0.6, variations=3, seed=1)
    assert variations.shape == (12, 1, 8, 8) and (variations[0] - variations[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"strength must lie in \(0, 1\]"):
        restore(denoiser, x, strength=0)


def test_restoration_picture_shows_the_start_the_first_variation_walked_from():
    from pixel_diffusion.diffusion import add_noise
    from pixel_diffusion.samplers import ImageNoise

    denoiser = GaussianDenoiser.iid(schedules.cosine(), 0.0, 0.5)
    x = _images(2)
    # restore() noises item k * variations with the first draw of stream (seed, k * variations).
    start = add_noise(denoiser.schedule, x, torch.tensor(0.5, dtype=torch.float64),
                      ImageNoise.from_seed(7, [0, 3])(x))
    walked = restore(denoiser, x, Walk("ddim", 1), strength=0.5, variations=3, seed=7)
    # One DDIM step from t = 0.5 to 0 lands on the image estimate at the start point.
    expected = denoiser(start, torch.full((2,), 0.5, dtype=torch.float64)).image
    torch.testing.assert_close(walked[[0, 3]], expected, rtol=1e-5, atol=1e-5)


def test_inpainting_keeps_the_unmasked_pixels_exactly():
    denoiser = GaussianDenoiser.iid(schedules.linear(), 0.0, 0.5)
    x = _images()
    mask = torch.zeros(8, 8)
    mask[:, 4:] = 1
    out = inpaint(denoiser, x, mask, Walk("ddpm", 20, spacing="uniform"), resample=3, seed=2)
    assert torch.equal(out[..., :4], x[..., :4])
    assert (out[..., 4:] - x[..., 4:]).abs().mean() > 0.05  # the masked half was generated
    with pytest.raises(ValueError, match="resample must be a positive integer"):
        inpaint(denoiser, x, mask, resample=0)


def test_slerp_ends_at_both_noises_and_keeps_the_norm():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 1, 16, 16, generator=generator), torch.randn(2, 1, 16, 16, generator=generator)
    b = b * (a.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)  # equal norms
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    for w in (0.25, 0.5, 0.8):
        torch.testing.assert_close(slerp(a, b, w).flatten(1).norm(dim=1), a.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
    middle = slerp(a, b, 0.5)
    linear = (a + b) / 2
    assert middle.flatten(1).norm(dim=1).min() > linear.flatten(1).norm(dim=1).max()  # lerp shrinks, slerp does not


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    config = apply_overrides(preset("mnist"), [
        "data.source=digits", 'network_options={"widths": [8, 16], "groups": 4}', "batch_size=32", "steps=4",
        "preview_every=2", "preview_images=4", "preview_steps=2", "progress=false", "precision=fp32", "log_every=1",
    ])
    train(config, folder)
    return folder


@pytest.mark.parametrize("kind", ["grid", "forward", "trajectory", "steps", "interpolation", "curves", "restore", "inpaint"])
def test_every_picture_is_written(run, kind, tmp_path):
    out = tmp_path / f"{kind}.png"
    options = {"curves": [], "interpolation": ["--steps", "3"], "steps": ["--n", "4", "--step-counts", "1,2"]}
    assert main(["show", kind, "--run", str(run), "--out", str(out),
                 *options.get(kind, ["--steps", "3", "--n", "4"] if kind != "forward" else ["--n", "4"])]) == 0
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.mode in ("L", "RGB", "RGBA")
        assert picture.width >= 4 * 8 and picture.height >= 8


def test_training_gif_has_one_frame_per_preview(run, tmp_path):
    assert main(["show", "evolution", "--run", str(run), "--out", str(tmp_path / "e.gif")]) == 0
    with Image.open(tmp_path / "e.gif") as gif:
        assert gif.n_frames == len(list((run / "samples").glob("step-*.png"))) == 2


def test_a_single_image_file_can_be_restored(run, tmp_path):
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "one.png")
    assert main(["show", "restore", "--run", str(run), "--input", str(tmp_path / "one.png"), "--n", "1",
                 "--steps", "3", "--variations", "2", "--out", str(tmp_path / "r.png")]) == 0
    with Image.open(tmp_path / "r.png") as picture:
        assert picture.height >= 8


def test_show_errors_are_one_line(run, tmp_path, capsys):
    assert main(["show", "inpaint", "--run", str(run), "--mask", "nowhere.png"]) == 2
    assert "--mask must be one of" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    assert main(["show", "evolution", "--run", str(tmp_path / "bare")]) == 2
    assert "no preview grids" in capsys.readouterr().err
    assert main(["show", "restore", "--run", str(run), "--strength", "1.5"]) == 2
    assert "argument --strength: expected a number in (0, 1], got '1.5'" in capsys.readouterr().err
