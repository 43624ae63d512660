"""Pictures: image grids, forward-process strips and denoising trajectories, as PIL images."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .data import from_model_range
from .diffusion import add_noise, forward_chain

BACKGROUND = 255


def image_grid(images: np.ndarray, columns: int = 8, padding: int = 2, scale: int = 1) -> Image.Image:
    """uint8 (N, H, W, C) -> one picture, `columns` images a row, each enlarged `scale` times."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), BACKGROUND, np.uint8)
    for k, image in enumerate(images):
        r, col = divmod(k, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top : top + h, left : left + w] = image
    picture = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    return picture


def _with_header(picture: Image.Image, labels: Sequence[str], cell_width: int, title: str = "") -> Image.Image:
    """Add a white band above a grid with one label centred over each column."""
    band = 16 if not title else 30
    out = Image.new(picture.mode, (picture.width, picture.height + band), BACKGROUND)
    out.paste(picture, (0, band))
    draw = ImageDraw.Draw(out)
    ink = 0 if picture.mode == "L" else (0, 0, 0)
    if title:
        draw.text((4, 1), title, fill=ink)
    for k, label in enumerate(labels):
        width = draw.textlength(label)
        draw.text((k * cell_width + (cell_width - width) / 2, band - 13), label, fill=ink)
    return out


def forward_strip(schedule, images: torch.Tensor, times: Sequence[float], *, seed: int = 0, scale: int = 3) -> Image.Image:
    """Noise each image (C, H, W in [-1, 1]) to each time: one row per image in closed form, then,
    for a discrete schedule, one row per image from the step-by-step chain at the same times."""
    generator = torch.Generator().manual_seed(seed)
    images = images.float()
    n = images.shape[0]
    t = torch.tensor(times, dtype=torch.float64)
    # Closed form: (n, len(times), C, H, W), the same noise along a row so only the rate changes.
    noise = torch.randn(images.shape, generator=generator)
    closed = torch.stack([add_noise(schedule, images, t[k].expand(n), noise) for k in range(len(times))], 1)
    rows = [closed]
    if getattr(schedule, "betas", None) is not None:
        steps = [int(round(float(k) * schedule.num_steps)) for k in times]
        rows.append(forward_chain(schedule, images, steps, generator=generator).transpose(0, 1))
    cells = from_model_range(torch.cat(rows).flatten(0, 1))
    picture = image_grid(cells, columns=len(times), scale=scale)
    title = "closed form (top rows) and step-by-step chain (bottom rows)" if len(rows) == 2 else "closed form"
    cell = (images.shape[-1] + 2) * scale
    return _with_header(picture, [f"t={float(k):g}" for k in times], cell, title)


def trajectory(states: Sequence[tuple[torch.Tensor, torch.Tensor]], *, scale: int = 3) -> Image.Image:
    """For each sampling step, the noisy image x_t above the denoiser's image estimate.

    `states` is a list of (x_t, predicted image) pairs, each (B, C, H, W), as a sampler's callback
    receives them; one column per step, two rows per image."""
    x = torch.stack([s[0] for s in states], 1)  # (B, steps, C, H, W)
    image = torch.stack([s[1] for s in states], 1)
    cells = torch.stack([x, image], 1).flatten(0, 2)  # rows: image 0 noisy, image 0 estimate, ...
    picture = image_grid(from_model_range(cells), columns=len(states), scale=scale)
    cell = (x.shape[-1] + 2) * scale
    return _with_header(picture, [str(k + 1) for k in range(len(states))], cell, "step: x_t (above), image estimate (below)")
