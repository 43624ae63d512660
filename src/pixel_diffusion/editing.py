"""Editing existing images with a trained denoiser: restoration (SDEdit) and inpainting (RePaint).

Both work on model-range tensors (B, C, H, W) and any schedule; randomness comes from per-image
streams (`ImageNoise`), so a seed gives the same result in any batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .samplers import ImageNoise, Walk, transition_variance, walk_rates

Tensor = torch.Tensor


@torch.no_grad()
def restore(
    denoiser, images: Tensor, walk: Walk | None = None, *, strength: float = 0.5, variations: int = 1, seed: int = 0,
    labels: Tensor | None = None, data_range=None, callback=None,
) -> Tensor:
    """SDEdit (Meng et al. 2022): noise each image to time `strength`, then walk back to t = 0:
    `walk` (default `Walk()`) started at `strength`, its sampler, steps, spacing and options.
    Returns (B * variations, C, H, W), the variations of image k next to each other; the CIFAR-10
    tutorial's restoration of half-noised images is strength 0.5."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1]; got {strength!r}")
    walk = (Walk() if walk is None else walk).replace(start=float(strength))
    x0 = images.float().repeat_interleave(variations, 0)
    if labels is not None:
        labels = labels.repeat_interleave(variations, 0)
    noise = ImageNoise.from_seed(seed, range(len(x0)), getattr(denoiser.schedule, "noise", "gaussian"), x0.device)
    x = walk.from_images(denoiser.schedule, x0, noise(x0))
    return walk(denoiser, x, labels=labels, noise=noise, data_range=data_range, callback=callback)


# RePaint's own walk: ancestral DDPM steps, evenly spaced (Lugmayr et al. 2022 use 250 of them).
REPAINT_WALK = Walk("ddpm", 50, spacing="uniform")


@torch.no_grad()
def inpaint(
    denoiser, images: Tensor, mask: Tensor, walk: Walk | None = None, *, resample: int = 5, seed: int = 0,
    labels: Tensor | None = None, data_range=None, callback=None,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1, jump length 1): generate where `mask` is 1 and
    keep the image where it is 0, along `walk` (default `REPAINT_WALK`, the paper's ancestral
    steps; any sampler of the registry walks it, one step at a time). At each step t -> s the
    known part is drawn from q(x_s | x_0) and the unknown part is the walk's step from x_t;
    `resample` times per step the merged x_s is diffused back to t (q(x_t | x_s)) and the step
    redone, which harmonises the two parts.

    images (B, C, H, W) in model range; mask broadcastable to it (1 = generate). The last step
    lands on t = 0, where the known pixels are the input exactly."""
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise ValueError(f"resample must be a positive integer; got {resample!r}")
    walk = REPAINT_WALK if walk is None else walk
    if walk.start != 1 or walk.stop != 0 or walk.entry.adaptive:
        raise ValueError("inpainting walks fixed steps from t = 1 to 0; got " + walk.describe())
    mask = torch.as_tensor(mask, dtype=torch.float32, device=images.device).expand_as(images)
    times = walk.times(denoiser.schedule)
    alphas, sigmas = walk_rates(denoiser.schedule, times)
    x0 = images.float()
    draw = ImageNoise.from_seed(seed, range(len(x0)), getattr(denoiser.schedule, "noise", "gaussian"), x0.device)
    x = walk.from_noise(denoiser.schedule, draw(x0))
    for i in range(len(times) - 1):
        a_t, s_t, a_s, s_s = alphas[i], sigmas[i], alphas[i + 1], sigmas[i + 1]
        for r in range(resample):
            seen = (lambda k, x_t, image, i=i: callback(i, x_t, image)) if callback is not None and r == 0 else None
            unknown = walk(denoiser, x, times[i : i + 2], labels=labels, noise=draw, data_range=data_range, callback=seen)
            known = a_s * x0 + s_s * draw(x)  # q(x_s | x_0)
            x_s = mask * unknown + (1 - mask) * known
            if r == resample - 1 or s_s == 0:
                x = x_s
                break
            # Back to t: x_t = (alpha_t / alpha_s) x_s + sqrt(beta_ts) z (`transition_variance`).
            x = (a_t / a_s) * x_s + math.sqrt(transition_variance(a_t, s_t, a_s, s_s)) * draw(x)
    return x


def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation between two noises (per example, over all pixels): the ends are a
    and b, and the norm moves smoothly between theirs, as Gaussian noise of that size should."""
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    cosine = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
    angle = torch.arccos(cosine.clamp(-1, 1))[:, None]
    sine = torch.sin(angle)
    close = sine.abs() < 1e-6  # nearly parallel: linear interpolation is the limit
    wa = torch.where(close, 1 - weight, torch.sin((1 - weight) * angle) / torch.where(close, 1, sine))
    wb = torch.where(close, weight, torch.sin(weight * angle) / torch.where(close, 1, sine))
    return (wa * flat_a + wb * flat_b).reshape(a.shape)


MASKS = ("left-half", "right-half", "top-half", "bottom-half", "centre")


def mask_from_spec(spec: str, size: tuple[int, int]):
    """An inpainting mask (H, W) float32, 1 = generate: one of MASKS, or an image file (white =
    generate) resized to `size`."""
    h, w = size
    mask = np.zeros((h, w), np.float32)
    boxes = {"left-half": (slice(None), slice(0, w // 2)), "right-half": (slice(None), slice(w // 2, None)),
             "top-half": (slice(0, h // 2), slice(None)), "bottom-half": (slice(h // 2, None), slice(None)),
             "centre": (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))}
    if spec in boxes:
        mask[boxes[spec]] = 1
        return mask
    if not Path(spec).is_file():
        raise ValueError(f"--mask must be one of {', '.join(MASKS)} or an image file; got {spec!r}")
    try:
        with Image.open(spec) as picture:
            return (np.asarray(picture.convert("L").resize((w, h), Image.NEAREST)) > 127).astype(np.float32)
    except (OSError, Image.UnidentifiedImageError):
        raise ValueError(f"--mask {spec} is not an image file") from None
