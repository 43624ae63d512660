"""Pictures: image grids, forward-process strips, denoising trajectories and the pictures of a
trained run, as PIL images.

`PICTURES` is the registry `pixel-diffusion show` reads: each entry draws one picture from a
loaded run (`runs.Run`) or from a run directory, with keyword options whose defaults are the
picture's own. To add a picture, write the function here and add its entry.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from .data import from_model_range, load_builtin, to_model_range
from .diffusion import add_noise, forward_chain
from .editing import REPAINT_WALK, inpaint, mask_from_spec, restore, slerp
from .logbook import LOGGED, read_records
from .samplers import ImageNoise, Walk

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


def _scale(images) -> int:
    """How much to enlarge cells of this size so a picture is about 64 pixels a cell."""
    return max(1, 64 // images.shape[1])


# ---- pictures of a run directory ---------------------------------------------------------------


def training_gif(run_dir, *, duration_ms: int = 400) -> list[Image.Image]:
    """The run's preview grids (samples/step-*.png, the same fixed noise each time), one frame
    per preview, for a GIF (`save_picture`)."""
    run_dir = Path(run_dir)
    frames = sorted((run_dir / "samples").glob("step-*.png"))
    if not frames:
        raise ValueError(f"{run_dir} has no preview grids in samples/; train with preview_every > 0")
    pictures = [Image.open(f).convert("RGB") for f in frames]
    pictures[0].info["duration"] = duration_ms
    return pictures


def curves(run_dir) -> Image.Image:
    """Every logged metric over training (metrics.jsonl; the panels `logbook.LOGGED` names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(run_dir)
    if not records:
        raise ValueError(f"{run_dir} has no metrics.jsonl; train it first")
    panels = [(key, shown) for key, shown in LOGGED.items() if shown.curve and any(key in r for r in records)]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for axis, (key, shown) in zip(axes[0], panels):
        points = [(r["step"], r[key]) for r in records if key in r]
        axis.plot(*zip(*points), marker="o" if shown.points else None, markersize=3)
        axis.set_title(shown.title)
        axis.set_xlabel("step")
        axis.set_yscale(shown.scale)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=100, format="png")
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue()))


PNG_KEY = "pixel-diffusion"  # the PNG text chunk that holds how an image was made, as JSON


def save_picture(picture, out: Path, parameters: dict | None = None) -> Path:
    """Write a picture (or a list of frames, as a GIF) atomically; a PNG carries `parameters`
    (how it was made) in its text chunk, for `read_parameters` and `pixel-diffusion info`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    if isinstance(picture, list):
        duration = picture[0].info.get("duration", 400)
        picture[0].save(tmp, save_all=True, append_images=picture[1:], duration=duration, loop=0)
    elif parameters is not None and out.suffix.lower() == ".png":
        tmp.write_bytes(png_bytes(picture, parameters))
    else:
        picture.save(tmp)
    tmp.replace(out)
    return out


def png_bytes(picture: Image.Image, parameters: dict | None = None) -> bytes:
    """A picture as PNG bytes, carrying `parameters` in its text chunk: the bytes `sample` writes
    and the web page serves for the same image."""
    chunk = PngInfo()
    if parameters is not None:
        chunk.add_text(PNG_KEY, json.dumps(parameters, sort_keys=True))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=chunk)
    return buffer.getvalue()


def as_picture(image: np.ndarray) -> Image.Image:
    """uint8 (H, W, C) with C = 1 or 3 as a PIL image."""
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def write_samples(out: Path, images: np.ndarray, parameters: dict, labels=None, *, grid_images: int = 100,
                  pngs: bool = True) -> None:
    """What `sample` writes: samples.npz with every image, grid.png with the first `grid_images`
    (a grid a person can look at), and a PNG per image carrying `parameters`, its index and the
    label it was drawn with."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".samples.npz.tmp.npz"
    np.savez(tmp, images=images)
    tmp.replace(out / "samples.npz")
    shown = images[:grid_images]
    grid = image_grid(shown, columns=int(np.ceil(np.sqrt(len(shown)))), scale=max(1, 64 // images.shape[1]))
    save_picture(grid, out / "grid.png", {**parameters, "images": len(shown)})
    for k, image in enumerate(images if pngs else ()):
        save_picture(as_picture(image), out / f"{k:05d}.png", image_parameters(parameters, k, labels))


def image_parameters(parameters: dict, k: int, labels=None) -> dict:
    """What image k of a sampled set carries: the set's parameters, its index and its label."""
    return {**parameters, "index": k, "drawn_label": None if labels is None else int(labels[k])}


def reproduce_command(made: dict) -> str:
    """The `pixel-diffusion sample` command that draws a sampled image again, from the parameters
    its PNG carries (image k of a seed is the same whatever --n)."""
    import shlex

    from .samplers import SAMPLERS

    name = Path(str(made.get("checkpoint"))).name
    flags = {"run": made.get("run"), "checkpoint": name if name == "best" or name.startswith("step-") else "latest",
             "n": made["index"] + 1}
    flags.update({k: made.get(k) for k in ("weights", "sampler", "steps", "seed", "label", "guidance", "precision")})
    walk_options = {"spacing", "sigma_max"} | {k for entry in SAMPLERS.values() for k in entry.options if k != "clip"}
    flags.update({k: v for k, v in made.items() if k in walk_options})
    words = [f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in flags.items() if v is not None]
    return " ".join(["pixel-diffusion sample", *words] + (["--no-clip"] if "clip" in made and made["clip"] is None else []))


def read_parameters(path: Path) -> dict:
    """The parameters a PNG written by `sample` or `show` carries."""
    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(PNG_KEY)
    except (OSError, ValueError) as error:  # missing, unreadable or not an image
        raise ValueError(f"{path} cannot be read as an image ({str(error).splitlines()[0][:80]})") from None
    if text is None:
        raise ValueError(f"{path} carries no {PNG_KEY} parameters; the PNGs that sample and show write do")
    try:
        parameters = json.loads(text)
    except json.JSONDecodeError:
        parameters = None
    if not isinstance(parameters, dict):
        raise ValueError(f"{path}: its {PNG_KEY} text chunk is not a JSON object")
    return parameters


# ---- pictures of a trained model ----------------------------------------------------------------
# Each takes a loaded run (runs.load_run) and keyword options, and returns a PIL image.


def sample_grid(run, *, n: int = 64, seed: int = 0, label: int | None = None, guidance: float | None = None,
                steps: int | None = None, sampler: str | None = None) -> Image.Image:
    """n samples along the run's own walk (or with `sampler`, `steps`); a class-conditional run
    without `label` draws every class in turn, labelled (a run on clusters draws them by their share
    of the data, unlabelled), at the run's own guidance unless `guidance` names a scale."""
    spec = run.spec
    labels = run.sample_labels(n, label)
    images = run.sample(n, sampler=sampler, steps=steps, seed=seed, labels=labels, guidance=guidance)
    in_turn = labels is not None and label is None
    columns = spec.num_classes if in_turn and spec.num_classes <= 16 else int(np.ceil(np.sqrt(n)))
    if labels is None:
        return image_grid(images, columns=columns, scale=_scale(images))
    return labelled_grid(images, [spec.class_label(int(k)) for k in labels], columns=columns, scale=_scale(images))


def forward_process(run, *, n: int = 4, times: Sequence[float] = (0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1),
                    seed: int = 0, input: str | None = None) -> Image.Image:
    """n data images (the run's, or `input`) noised to each time, in closed form and by the chain."""
    x = run.spec.normalisation.to_model(torch.from_numpy(run.data_images(n, input)).permute(0, 3, 1, 2))
    return forward_strip(run.denoiser.schedule, x, times, seed=seed)


def step_comparison(run, *, step_counts: Sequence[int] = (1, 2, 3, 5, 10, 20), n: int = 8, seed: int = 0,
                    sampler: str | None = None) -> Image.Image:
    """The same initial noise sampled with each number of steps (the run's own sampler unless
    `sampler` names one), one row per count."""
    rows = [run.sample(n, sampler=sampler, steps=k, seed=seed, progress=False) for k in step_counts]
    return rows_with_titles(rows, [f"{k} step{'s' if k > 1 else ''}" for k in step_counts], scale=_scale(rows[0]))


@torch.no_grad()
def interpolation(run, *, seed: int = 0, seed2: int = 1, frames: int = 10, steps: int | None = None,
                  sampler: str | None = None) -> Image.Image:
    """Samples along the spherical path between two seeds' initial noises, walked with the run's own
    walk (or `sampler`, `steps`); a deterministic sampler makes the frames a smooth path."""
    spec, denoiser = run.spec, run.denoiser
    walk = run.walk(sampler=sampler, steps=steps)
    a, b = (ImageNoise.from_seed(s, [0])(torch.empty(1, *spec.shape)) for s in (seed, seed2))
    path = torch.cat([slerp(a, b, w) for w in torch.linspace(0, 1, frames).tolist()]).to(run.device)
    labels = spec.drawn_clusters(1, seed)  # one cluster along the whole path
    labels = None if labels is None else labels.expand(frames).to(run.device)
    x = walk(denoiser, walk.from_noise(denoiser.schedule, path), labels=labels, data_range=spec.data_range(run.device))
    images = spec.normalisation.to_uint8(x)
    return image_grid(images, columns=frames, scale=_scale(images))


@torch.no_grad()
def denoising_trajectory(run, *, n: int = 3, steps: int | None = None, sampler: str | None = None,
                         seed: int = 0) -> Image.Image:
    """For each step of the run's own walk (or `sampler`, `steps`), x_t above the image estimate
    (the Keras and MNIST tutorials' figure)."""
    spec, denoiser = run.spec, run.denoiser
    walk = run.walk(sampler=sampler, steps=steps)
    states = []
    labels = spec.drawn_clusters(n, seed)
    noise = ImageNoise.from_seed(seed, range(n))
    walk(denoiser, walk.from_noise(denoiser.schedule, noise(torch.empty(n, *spec.shape, device=run.device))), noise=noise,
         labels=None if labels is None else labels.to(run.device), data_range=spec.data_range(run.device),
         callback=lambda i, x_t, image: states.append((x_t.clamp(-1, 1).cpu(), image.cpu())))
    return trajectory(states, scale=max(1, 64 // spec.image_size[1]))


def restoration(run, *, n: int = 4, input: str | None = None, strength: float = 0.5, variations: int = 4,
                steps: int | None = None, sampler: str | None = None, seed: int = 0) -> Image.Image:
    """Per input row: the input, it noised to `strength` (where the first variation starts), and
    `variations` restorations (SDEdit, with the run's own walk or `sampler`, `steps`)."""
    spec, denoiser = run.spec, run.denoiser
    images = run.data_images(n, input)
    x = spec.normalisation.to_model(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)).to(run.device)
    walk = run.walk(sampler=sampler, steps=steps)
    restored = spec.normalisation.to_uint8(restore(denoiser, x, walk, strength=strength, variations=variations, seed=seed,
                                                   data_range=spec.data_range(run.device)))
    # The starting point of each input's first variation: the first draw of its noise stream.
    kind = getattr(denoiser.schedule, "noise", "gaussian")
    first = ImageNoise.from_seed(seed, [k * variations for k in range(len(x))], kind, run.device)(x)
    noised = spec.normalisation.to_uint8(walk.replace(start=strength).from_images(denoiser.schedule, x, first))
    rows = [np.concatenate([images[k : k + 1], noised[k : k + 1], restored[k * variations : (k + 1) * variations]])
            for k in range(len(images))]
    return rows_with_titles(rows, [f"input, t={strength:g}, restored"] * len(rows), scale=_scale(images))


def inpainting(run, *, n: int = 4, input: str | None = None, mask: str = "right-half", steps: int = 50,
               resample: int = 5, variations: int = 4, sampler: str | None = None, seed: int = 0) -> Image.Image:
    """Per input row: the input, the masked input (grey = to generate), and inpainted variations
    (RePaint, on its own ancestral walk or `sampler`'s); `mask` is one of editing.MASKS or an
    image file, white = generate."""
    spec = run.spec
    images = run.data_images(n, input)
    area = mask_from_spec(mask, spec.image_size)
    x = spec.normalisation.to_model(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    m = torch.from_numpy(area)[None, None]
    walk = (REPAINT_WALK if sampler is None else Walk(sampler)).replace(steps=steps)
    filled = spec.normalisation.to_uint8(inpaint(run.denoiser, x.repeat_interleave(variations, 0).to(run.device), m,
                                                 walk, resample=resample, seed=seed,
                                                 data_range=spec.data_range(run.device)))
    shown = images.copy()
    shown[:, area > 0.5] = 128
    rows = [np.concatenate([images[k : k + 1], shown[k : k + 1], filled[k * variations : (k + 1) * variations]])
            for k in range(len(images))]
    return rows_with_titles(rows, ["input, mask, inpainted"] * len(rows), scale=_scale(images))


def demo_pictures(run, out: Path, *, seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """What `pixel-diffusion demo` draws of its freshly trained digits run: samples, the forward
    process on four digits, and a denoising trajectory; {what: file}."""
    written = {}
    # 20 DDPM steps: on a briefly trained model the stochastic walk beats the ODE solvers (docs/samplers.md).
    # Each sample's cluster is drawn by its share of the data (the preset trains on 50 clusters).
    images = run.sample(64, sampler="ddpm", steps=20, seed=seed, progress=progress)
    written["samples (DDPM, 20 steps)"] = out / "demo_samples.png"
    image_grid(images, columns=8, scale=2).save(written["samples (DDPM, 20 steps)"])
    x = to_model_range(load_builtin("mnist-5k")[0])
    spread = x[:: len(x) // 4][:4]  # the subset is sorted by label: four different digits
    written["forward process"] = out / "demo_forward_process.png"
    forward_strip(run.denoiser.schedule, spread, [0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0], seed=seed).save(
        written["forward process"])
    written["denoising trajectory"] = out / "demo_trajectory.png"
    denoising_trajectory(run, n=3, sampler="ddim", steps=10, seed=seed).save(written["denoising trajectory"])
    return written


@dataclass(frozen=True)
class Picture:
    """A `show` picture: how it is drawn, what it shows, and whether it needs the trained model
    (a loaded run) or only the run directory."""

    draw: Callable
    description: str
    of_model: bool = True
    suffix: str = "png"


PICTURES: dict[str, Picture] = {
    "grid": Picture(sample_grid, "samples, labelled by class for conditional runs"),
    "forward": Picture(forward_process, "the forward process of data images"),
    "trajectory": Picture(denoising_trajectory, "x_t and the image estimate per step"),
    "steps": Picture(step_comparison, "one noise sampled with 1..20 steps"),
    "interpolation": Picture(interpolation, "spherical path between two seeds' noises"),
    "evolution": Picture(training_gif, "GIF of the training previews", of_model=False, suffix="gif"),
    "curves": Picture(curves, "loss, learning rate, gradient norm, KID", of_model=False),
    "restore": Picture(restoration, "SDEdit from --strength"),
    "inpaint": Picture(inpainting, "RePaint inside --mask"),
}
