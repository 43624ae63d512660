"""Named training configurations: one per reference system, and `mnist`, the fast default (with
`mnist-conditional`, its form on the data's labels, and `mnist-flow`, trained by flow matching).

Each function returns a TrainConfig; its docstring names the source and what was chosen where
the source is vague. docs/presets.md lists them. Presets whose data is not built in need --data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data import IMAGE_SUFFIXES, DataConfig, is_gray, open_source
from ..objectives import Diffusion, FlowMatching


def mnist() -> TrainConfig:
    """Fast default for the built-in mnist-5k on a CPU: a plain residual U-Net on 2x2 patches
    (patch-mnist) conditioned on 50 k-means clusters of the images (no labels needed; samples draw
    a cluster by its share), cosine schedule, velocity prediction, min-SNR-5 weighting, AdamW 2e-3
    with 200 warmup steps and cosine decay, EMA 0.999 with warmup, precision auto (bf16 autocast
    where this machine runs it faster than float32), fused AdamW,
    batch 64, 3000 steps (docs/performance.md measures the speed settings and the 10-minute quality)."""
    return TrainConfig(
        preset="mnist",
        data=DataConfig("mnist-5k", mixed_sizes_to=28),
        network="patch-mnist",
        clusters=50,
        schedule="cosine",
        prediction="velocity",
        noise_input="timestep",
        loss=Diffusion(target="velocity", weighting="min-snr"),
        optimizer="adamw",
        lr=2e-3,
        lr_warmup=200,
        lr_decay="cosine",
        min_lr_ratio=0.1,
        batch_size=64,
        ema_decay=0.999,
        precision="auto",
        fused_optimizer=True,
        steps=3000,
        checkpoint_every=250,
        preview_every=500,
        preview_sampler="ddpm",
        preview_steps=20,
    )


def mnist_conditional() -> TrainConfig:
    """`mnist` trained on the digit labels instead of clusters (10% of examples without one, so
    that it also samples unconditionally and with classifier-free guidance). Needs labelled data."""
    return dataclasses.replace(mnist(), preset="mnist-conditional", conditional=True, clusters=0)


def keras_flowers() -> TrainConfig:
    """Keras DDIM example (Oxford flowers, 64x64): keras-ddim network, continuous cosine schedule
    (signal rate 0.95 to 0.02), noise prediction from the noise variance, MAE loss, AdamW lr 1e-3
    and weight decay 1e-4, EMA 0.999 (no warmup), batch 64, per-channel standardisation, random
    flips, 20-step DDIM previews, KID with 5-step samples kept as the `best` checkpoint (the
    Inception features; needs the FID weights, or kid_every=0). Chosen: 80 epochs of the data
    once each (the example repeats the set 5 times an epoch; use epochs=400 for the same number
    of images); KID every 500 steps on 1,000 samples rather than every epoch."""
    return TrainConfig(
        preset="keras-flowers",
        data=DataConfig("", image_size=64, fit="crop", flip=True, normalise="standardise", channels="3"),
        network="keras-ddim",
        schedule="continuous-cosine",
        prediction="noise",
        noise_input="variance",
        loss=Diffusion(target="noise", distance="mae"),
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        grad_clip=None,
        batch_size=64,
        ema_decay=0.999,
        ema_warmup=False,
        epochs=80,
        preview_steps=20,
        kid_every=500,
        kid_images=1000,
        kid_steps=5,
        kid_extractor="inception",
    )


def ddpm_anime() -> TrainConfig:
    """diffusers' DDPM walkthrough (anime faces, 64x64): ddpm-64 network (UNet2DModel 128..512),
    linear 1000-step schedule, noise prediction, MSE, AdamW lr 1e-4 (betas 0.95/0.999, weight
    decay 1e-6) with 500 warmup steps and cosine decay, EMA 0.9999 with warmup, fp16 with loss
    scaling (GPU), batch 16, random flips. Chosen: 50 epochs; previews by 50-step DDIM rather
    than 1000-step DDPM."""
    return TrainConfig(
        preset="ddpm-anime",
        data=DataConfig("", image_size=64, flip=True, channels="3"),
        network="ddpm-64",
        schedule="linear",
        prediction="noise",
        loss=Diffusion(),
        optimizer="adamw",
        lr=1e-4,
        betas=(0.95, 0.999),
        weight_decay=1e-6,
        lr_warmup=500,
        lr_decay="cosine",
        batch_size=16,
        ema_decay=0.9999,
        precision="fp16",
        epochs=50,
        preview_steps=50,
    )


def mnist_tutorial() -> TrainConfig:
    """The MNIST tutorial's second part: UNet2DModel 32/64/64 with attention (ddpm-mnist), batch
    128, Adam lr 1e-3, no EMA, fp32. Chosen: the DDPM objective on diffusers' squaredcos_cap_v2
    schedule (our `cosine`) with noise prediction and MSE, as the tutorial's DDPM pipeline uses;
    no gradient clipping, as in the tutorial's loop; 3 epochs."""
    return TrainConfig(
        preset="mnist-tutorial",
        data=DataConfig("mnist-5k", mixed_sizes_to=28),
        network="ddpm-mnist",
        schedule="cosine",
        prediction="noise",
        loss=Diffusion(),
        optimizer="adam",
        lr=1e-3,
        grad_clip=None,
        batch_size=128,
        ema_decay=0.0,
        ema_warmup=False,
        epochs=3,
    )


def mnist_basic() -> TrainConfig:
    """The MNIST tutorial's first part: the BasicUNet predicts the clean image from one mixed with
    uniform noise by a random amount (x = (1 - a) x_0 + a u), MSE on the image, Adam lr 1e-3,
    batch 128, 3 epochs, no EMA; sampling mixes toward the prediction step by step (DDIM on the
    uniform-mixing schedule, which is exactly that loop)."""
    return TrainConfig(
        preset="mnist-basic",
        data=DataConfig("mnist-5k", mixed_sizes_to=28),
        network="basic-mnist",
        schedule="uniform-mixing",
        prediction="image",
        noise_input="variance",
        loss=Diffusion(target="image"),
        optimizer="adam",
        lr=1e-3,
        grad_clip=None,
        batch_size=128,
        ema_decay=0.0,
        ema_warmup=False,
        epochs=3,
        preview_steps=5,
    )


def fashion_mindspore() -> TrainConfig:
    """MindSpore DDPM on Fashion-MNIST (after "The Annotated Diffusion Model"): ConvNeXt U-Net with
    linear attention and dim multipliers 1/2/4 (convnext-fashion), linear 200-step schedule from
    1e-4 to 0.02, noise prediction, smooth-L1 (Huber) loss, Adam lr 1e-4 with cosine decay,
    batch 128, random flips, no EMA. Chosen: 10 epochs."""
    return TrainConfig(
        preset="fashion-mindspore",
        data=DataConfig("", image_size=28, flip=True, channels="1"),
        network="convnext-fashion",
        schedule="linear",
        schedule_options={"num_steps": 200, "beta_start": 1e-4, "beta_end": 0.02},
        prediction="noise",
        loss=Diffusion(distance="huber"),
        optimizer="adam",
        lr=1e-4,
        lr_decay="cosine",
        grad_clip=None,
        batch_size=128,
        ema_decay=0.0,
        ema_warmup=False,
        epochs=10,
    )


def cifar_labml() -> TrainConfig:
    """The labml.ai DDPM on CIFAR-10 that also restores half-noised images: labml-cifar U-Net
    (n_channels 32), linear 100-step schedule from 1e-4 to 0.04, noise prediction, MSE, AdamW lr
    3e-4, batch 128, no EMA, no flips. Chosen: 20 epochs; gradient clipping at 1."""
    return TrainConfig(
        preset="cifar-labml",
        data=DataConfig("", image_size=32, channels="3"),
        network="labml-cifar",
        schedule="linear",
        schedule_options={"num_steps": 100, "beta_start": 1e-4, "beta_end": 0.04},
        prediction="noise",
        loss=Diffusion(),
        optimizer="adamw",
        lr=3e-4,
        batch_size=128,
        ema_decay=0.0,
        ema_warmup=False,
        epochs=20,
    )


# The EMA the colour presets sample with: the power-function profile of sigma_rel 0.05, among the
# best of the post-hoc sweeps after 30 CPU minutes on CIFAR-10 by diffusion (standard FID 67.5
# against the fixed decay's 69.1, 2,000 samples) and by flow matching (77.6 against 79.9), and
# second to the raw weights at 64x64 (docs/ema.md).
SHORT_EMA = {"ema_profiles": (0.05,), "weights": "ema-0.050"}


def cifar10() -> TrainConfig:
    """Fast default for small colour images (CIFAR-10, 32x32) on a CPU: patch-cifar (a residual
    U-Net on 2x2 patches with self-attention at 8x8) conditioned on 50 k-means clusters of the
    images, random flips, otherwise the `mnist` recipe: cosine schedule, velocity prediction,
    min-SNR-5, AdamW 2e-3 with warmup and cosine decay, precision auto, fused AdamW
    (docs/performance.md: the recipe trials and 30-minute quality). It samples with a short
    power-function EMA (sigma_rel 0.05, `SHORT_EMA`); the fixed EMA is kept beside it."""
    return dataclasses.replace(
        mnist(), preset="cifar10", data=DataConfig("", image_size=32, flip=True, channels="3"),
        network="patch-cifar", steps=6000, checkpoint_every=500, preview_every=1000, **SHORT_EMA,
    )


def cifar10_conditional() -> TrainConfig:
    """`cifar10` trained on the labels of class sub-folders (10% without one, for classifier-free
    guidance) instead of clusters; sampled at guidance 2, the best FID of 1.5, 2 and 2.5 after 30
    minutes (docs/performance.md)."""
    config = cifar10()
    return dataclasses.replace(config, preset="cifar10-conditional", conditional=True, clusters=0, guidance=2.0,
                               data=dataclasses.replace(config.data, class_folders=True))


def colour_64() -> TrainConfig:
    """Colour photos at 64x64 (flowers, faces, objects) on a CPU: photo-64 (the patch-cifar U-Net
    with a 32x32 level, widths 32/64/128) on 50 clusters, trained by flow matching
    (`flow_matching`), the `cifar10` recipe otherwise. The Tiny ImageNet-100 trials
    (docs/performance.md) chose the network over 4x4 patches (patch-64) and the noise levels;
    flow matching beat diffusion on the same network and budget (30 minutes: standard FID 138.4
    against 148.0 at guidance 3, classifier FID 14.1 against 19.6, measured on the class-conditional
    form). Learning rate 4e-3: at the same 3,431 steps, standard FID 125.5 against 2e-3's 138.4
    at guidance 3, classifier FID 12.2 against 14.1 (docs/performance.md). It
    samples with a short power-function EMA (sigma_rel 0.05, `SHORT_EMA`), the best average of
    both post-hoc sweeps (docs/ema.md)."""
    return flow_matching(dataclasses.replace(cifar10(), network="photo-64", lr=4e-3,
                                             data=DataConfig("", image_size=64, flip=True, channels="3")), "colour-64")


def colour_64_conditional() -> TrainConfig:
    """`colour-64` trained on the labels of class sub-folders or labelled shards (10% without one,
    for classifier-free guidance) instead of clusters; sampled at guidance 3, the best FID of 1.5,
    2 and 3 on Tiny ImageNet-100 after 30 minutes (docs/performance.md)."""
    config = colour_64()
    return dataclasses.replace(config, preset="colour-64-conditional", conditional=True, clusters=0, guidance=3.0,
                               data=dataclasses.replace(config.data, class_folders=True))


def flow_matching(config: TrainConfig, name: str) -> TrainConfig:
    """`config` with flow matching in place of diffusion, all else equal: the straight path
    x_t = (1 - t) x_0 + t eps (schedule rectified-flow), the network predicting its velocity
    eps - x_0 from the time, logit-normal times (Esser et al. 2024)."""
    return dataclasses.replace(config, preset=name, schedule="rectified-flow", schedule_options={}, prediction="flow",
                               noise_input="time", loss=FlowMatching())


def mnist_flow() -> TrainConfig:
    """`mnist` trained by flow matching (`flow_matching`)."""
    return flow_matching(mnist(), "mnist-flow")


def cifar10_flow() -> TrainConfig:
    """`cifar10` trained by flow matching (`flow_matching`); its post-hoc sweep also measured
    `SHORT_EMA` best."""
    return flow_matching(cifar10(), "cifar10-flow")


PRESETS = {
    "mnist": mnist,
    "mnist-conditional": mnist_conditional,
    "keras-flowers": keras_flowers,
    "ddpm-anime": ddpm_anime,
    "mnist-tutorial": mnist_tutorial,
    "mnist-basic": mnist_basic,
    "fashion-mindspore": fashion_mindspore,
    "cifar-labml": cifar_labml,
    "cifar10": cifar10,
    "cifar10-conditional": cifar10_conditional,
    "colour-64": colour_64,
    "colour-64-conditional": colour_64_conditional,
    "mnist-flow": mnist_flow,
    "cifar10-flow": cifar10_flow,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()


@dataclasses.dataclass(frozen=True)
class Choice:
    """The preset `train --data` takes with no --preset, the config fields it changes, and why."""

    preset: str
    overrides: dict
    reason: str


def choose_preset(source: str, probe: int = 64) -> Choice:
    """Look at up to `probe` images spread over a data source (channels, sizes, class folders)
    and pick a recipe: `mnist` (or `mnist-conditional`) for grayscale, `cifar10` at 32x32 for
    small colour images (shorter side under 48 for most), `colour-64` at 64x64 for larger ones;
    the `-conditional` forms where a folder's images all sit in class sub-folders or the source
    has labels."""
    from ..sources import list_image_files

    found = open_source(DataConfig(source))
    picked = np.unique(np.linspace(0, found.count - 1, min(probe, found.count)).round().astype(int))
    arrays = []
    for i in picked:
        try:
            arrays.append(found.read(int(i)))
        except ValueError:
            continue
    if not arrays:
        raise ValueError(f"no readable image in {found.description} (looked at {len(picked)}); expected image files or arrays")
    colour = not all(is_gray(a) for a in arrays)
    short = float(np.median([min(a.shape[:2]) for a in arrays]))
    sizes = {a.shape[:2] for a in arrays}
    path = Path(source).expanduser()
    folders = []
    if path.is_dir() and found.labels is None:
        try:
            _, _, folders, outside = list_image_files(path, class_folders=True)
            folders = folders if len(folders) > 1 and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in outside) else []
        except ValueError:  # no sub-folders
            folders = []
    labelled = found.labels is not None or bool(folders)
    what = (f"{found.count} {'colour' if colour else 'grayscale'} images of "
            + (f"{arrays[0].shape[1]}x{arrays[0].shape[0]}" if len(sizes) == 1 else f"mixed sizes (median shorter side {short:.0f})")
            + (f" in {len(folders)} class folders" if folders else " with labels" if labelled else ""))
    if not colour:
        name, side = ("mnist-conditional" if labelled else "mnist"), ("their size" if len(sizes) == 1 else "28x28")
        reason = f"{what}: {name} (grayscale) at {side}"
    else:
        name, side = ("cifar10", 32) if short < 48 else ("colour-64", 64)
        name = f"{name}-conditional" if labelled else name
        reason = f"{what}: {name} at {side}x{side}" + (" (resized and centre-cropped)" if short != side or len(sizes) > 1 else "")
    overrides = _fit_to_count(preset(name), found.count, {"data.class_folders": True} if folders else {})
    small = [f"{k.replace('_', ' ')} {v}" for k, v in overrides.items() if k in ("clusters", "batch_size")]
    return Choice(name, overrides, reason + (f"; {', '.join(small)} for so few images" if small else ""))


def _fit_to_count(config: TrainConfig, count: int, overrides: dict) -> dict:
    """Fewer clusters (one per 100 images, none under 200) and a smaller batch for a small set."""
    if config.clusters and count < 100 * config.clusters:
        overrides["clusters"] = count // 100 if count >= 200 else 0
    if count < config.batch_size:
        overrides["batch_size"] = 2 ** int(np.log2(max(count, 1)))
    return overrides
