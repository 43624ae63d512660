"""Pictures: image grids, forward-process strips and denoising trajectories, as PIL images."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .clusters import drawn_clusters
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


def labelled_grid(images: np.ndarray, labels: Sequence[str], columns: int = 8, scale: int = 2) -> Image.Image:
    """A grid with each image's label written under it."""
    picture = image_grid(images, columns=columns, scale=scale).convert("RGB")
    h, w = images.shape[1:3]
    band = 12
    rows = -(-len(images) // columns)
    out = Image.new("RGB", (picture.width, picture.height + rows * band), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    cell_h, cell_w = (h + 2) * scale, (w + 2) * scale
    for r in range(rows):
        out.paste(picture.crop((0, r * cell_h, picture.width, (r + 1) * cell_h)), (0, r * (cell_h + band)))
    for k, label in enumerate(labels):
        r, c = divmod(k, columns)
        width = draw.textlength(str(label))
        draw.text((c * cell_w + (cell_w - width) / 2, r * (cell_h + band) + cell_h - 1), str(label), fill=(0, 0, 0))
    return out


def rows_with_titles(rows: Sequence[np.ndarray], titles: Sequence[str], scale: int = 2) -> Image.Image:
    """One row of uint8 images (N, H, W, C) per title, the title to the left of its row."""
    grids = [image_grid(row, columns=len(row), scale=scale).convert("RGB") for row in rows]
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = int(max(draw_probe.textlength(t) for t in titles)) + 8
    out = Image.new("RGB", (margin + max(g.width for g in grids), sum(g.height for g in grids)), (255, 255, 255))
    draw, top = ImageDraw.Draw(out), 0
    for grid, title in zip(grids, titles):
        out.paste(grid, (margin, top))
        draw.text((4, top + grid.height / 2 - 6), title, fill=(0, 0, 0))
        top += grid.height
    return out


def training_gif(run_dir, out=None, *, duration_ms: int = 400):
    """The run's preview grids (samples/step-*.png, the same fixed noise each time) as a GIF,
    one frame per preview. Returns the GIF's path."""
    from pathlib import Path

    run_dir = Path(run_dir)
    frames = sorted((run_dir / "samples").glob("step-*.png"))
    if not frames:
        raise ValueError(f"{run_dir} has no preview grids in samples/; train with preview_every > 0")
    pictures = [Image.open(f).convert("RGB") for f in frames]
    out = Path(out) if out else run_dir / "training.gif"
    tmp = out.with_name(f".{out.name}.tmp.gif")
    pictures[0].save(tmp, save_all=True, append_images=pictures[1:], duration=duration_ms, loop=0)
    tmp.replace(out)
    return out


def curves(run_dir, out=None):
    """Loss, learning rate, gradient norm and KID over training from metrics.jsonl, as a PNG (matplotlib)."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise ValueError(f"{run_dir} has no metrics.jsonl; train it first")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    panels = [("loss", "training loss", "log"), ("lr", "learning rate", "linear"),
              ("grad_norm", "gradient norm (before clipping)", "log"), ("kid", "KID", "linear")]
    panels = [p for p in panels if any(p[0] in r for r in records)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for axis, (key, title, scale) in zip(axes[0], panels):
        points = [(r["step"], r[key]) for r in records if key in r]
        axis.plot(*zip(*points), marker="o" if key == "kid" else None, markersize=3)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.set_yscale(scale)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


# ---- pictures of a trained model --------------------------------------------------------------
# Each takes the run's denoiser and model config (training.load_run) and returns a PIL image.


def _normalisation(model_config):
    from .data import Normalisation

    return Normalisation(**model_config["normalisation"])


def _clip(model_config, device="cpu"):
    low, high = _normalisation(model_config).data_range(model_config["channels"])
    return low.to(device), high.to(device)


def sample_grid(denoiser, model_config, n: int = 64, *, seed: int = 0, label: int | None = None,
                guidance: float = 1.0, steps: int = 50, sampler: str = "ddim") -> Image.Image:
    """n samples; a class-conditional run without `label` draws every class in turn, labelled (a
    run on clusters draws them by their share of the data, unlabelled)."""
    from .training import classes_in_turn, sample_images

    classes = model_config.get("num_classes")
    labels = torch.full((n,), label, dtype=torch.long) if label is not None else classes_in_turn(model_config, n)
    images = sample_images(denoiser, model_config, n, sampler=sampler, steps=steps, seed=seed, labels=labels, guidance=guidance)
    columns = classes if labels is not None and label is None and classes <= 16 else int(np.ceil(np.sqrt(n)))
    if labels is None:
        return image_grid(images, columns=columns, scale=max(1, 64 // images.shape[1]))
    names = model_config.get("class_names") or [str(k) for k in range(classes)]
    return labelled_grid(images, [names[int(k)] for k in labels], columns=columns, scale=max(1, 64 // images.shape[1]))


def step_comparison(denoiser, model_config, step_counts=(1, 2, 3, 5, 10, 20), *, n: int = 8, seed: int = 0,
                    sampler: str = "ddim") -> Image.Image:
    """The same initial noise sampled with each number of steps, one row per count."""
    from .training import sample_images

    rows = [sample_images(denoiser, model_config, n, sampler=sampler, steps=k, seed=seed, progress=False) for k in step_counts]
    return rows_with_titles(rows, [f"{k} step{'s' if k > 1 else ''}" for k in step_counts], scale=max(1, 64 // rows[0].shape[1]))


@torch.no_grad()
def interpolation(denoiser, model_config, *, seeds=(0, 1), frames: int = 10, steps: int = 20) -> Image.Image:
    """Deterministic DDIM samples along the spherical path between two seeds' initial noises."""
    from .editing import slerp
    from .samplers import ImageNoise, ddim
    from .schedules import sampling_times

    shape = (1, model_config["channels"], *model_config["image_size"])
    a, b = (ImageNoise.from_seed(s, [0])(torch.empty(shape)) for s in seeds)
    path = torch.cat([slerp(a, b, w) for w in torch.linspace(0, 1, frames).tolist()])
    labels = drawn_clusters(model_config, 1, seeds[0])  # one cluster along the whole path
    labels = None if labels is None else labels.expand(frames)
    x = ddim(denoiser, path, sampling_times(denoiser.schedule, steps), labels=labels, clip=_clip(model_config))
    images = _normalisation(model_config).to_uint8(x)
    return image_grid(images, columns=frames, scale=max(1, 64 // images.shape[1]))


@torch.no_grad()
def denoising_trajectory(denoiser, model_config, *, n: int = 3, steps: int = 10, seed: int = 0) -> Image.Image:
    """For each DDIM step, x_t above the image estimate (the Keras and MNIST tutorials' figure)."""
    from .samplers import ImageNoise, ddim
    from .schedules import sampling_times

    shape = (n, model_config["channels"], *model_config["image_size"])
    states = []
    ddim(denoiser, ImageNoise.from_seed(seed, range(n))(torch.empty(shape)), sampling_times(denoiser.schedule, steps),
         labels=drawn_clusters(model_config, n, seed), clip=_clip(model_config),
         callback=lambda i, x_t, image: states.append((x_t.clamp(-1, 1), image)))
    return trajectory(states, scale=max(1, 64 // shape[-1]))


def restoration(denoiser, model_config, images: np.ndarray, *, strength: float = 0.5, variations: int = 4,
                steps: int = 50, sampler: str = "ddim", seed: int = 0) -> Image.Image:
    """Per input row: the input, it noised to `strength` (where the first variation starts), and
    `variations` restorations (SDEdit)."""
    from .editing import restore

    normalisation = _normalisation(model_config)
    x = normalisation.to_model(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    options = {"clip": _clip(model_config)}
    restored = normalisation.to_uint8(restore(denoiser, x, strength=strength, steps=steps, sampler=sampler,
                                              variations=variations, seed=seed, **options))
    # The starting point of each input's first variation: the first draw of its noise stream.
    from .samplers import ImageNoise

    kind = getattr(denoiser.schedule, "noise", "gaussian")
    first = ImageNoise.from_seed(seed, [k * variations for k in range(len(x))], kind)(x)
    noised = normalisation.to_uint8(add_noise(denoiser.schedule, x, torch.tensor(strength, dtype=torch.float64), first))
    rows = [np.concatenate([images[k : k + 1], noised[k : k + 1], restored[k * variations : (k + 1) * variations]])
            for k in range(len(images))]
    return rows_with_titles(rows, [f"input, t={strength:g}, restored"] * len(rows), scale=max(1, 64 // images.shape[1]))


def inpainting(denoiser, model_config, images: np.ndarray, mask: np.ndarray, *, steps: int = 50, resample: int = 5,
               variations: int = 4, seed: int = 0) -> Image.Image:
    """Per input row: the input, the masked input (grey = to generate), and inpainted variations."""
    from .editing import inpaint

    normalisation = _normalisation(model_config)
    x = normalisation.to_model(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    filled = normalisation.to_uint8(inpaint(denoiser, x.repeat_interleave(variations, 0), m, steps=steps,
                                            resample=resample, seed=seed))
    shown = images.copy()
    shown[:, np.asarray(mask) > 0.5] = 128
    rows = [np.concatenate([images[k : k + 1], shown[k : k + 1], filled[k * variations : (k + 1) * variations]])
            for k in range(len(images))]
    return rows_with_titles(rows, ["input, mask, inpainted"] * len(rows), scale=max(1, 64 // images.shape[1]))
