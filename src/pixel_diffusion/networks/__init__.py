"""Networks: `net(x, noise_level, labels=None) -> tensor shaped like x`, built from a config
dataclass that is saved with every run (`config_to_dict`) and rebuilt from it (`build_network`).

NETWORKS names the configurations of the reference systems; each docstring gives its source, its
parameter count (checked by the tests) and what was chosen where the source leaves room.
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from ..typed import read
from .basic import BasicUNet, BasicUNetConfig
from .layers import sinusoid_frequencies_for
from .unet import UNet, UNetConfig

CONFIG_KINDS = {"unet": (UNetConfig, UNet), "basic": (BasicUNetConfig, BasicUNet)}


def keras_ddim(in_channels: int = 3, num_classes: int | None = None) -> UNetConfig:
    """The residual U-Net of the Keras DDIM example (flowers, 64x64): widths 32/64/96 with two
    blocks each and average pooling, two blocks of 128 at the bottom, bilinear upsampling, no
    attention, BatchNorm without scale or centre, the noise variance's 32 sinusoidal features
    (1 to 1000 cycles) concatenated to a 1x1 stem, zero-initialised 1x1 output.
    1,950,627 parameters with 3 channels (that BatchNorm has none). Chosen: blocks are
    pre-activation (norm -> act -> conv), where the example applies the activation after its
    first convolution; parameters are equal."""
    return UNetConfig(
        in_channels=in_channels,
        widths=(32, 64, 96),
        blocks_per_level=2,
        mid_width=128,
        mid_blocks=2,
        mid_attention=False,
        norm="batch",
        downsample="avgpool",
        upsample="bilinear",
        down_after_last=True,
        skip_stem_and_downsamples=False,
        noise_entry="concat",
        embedding_dim=32,
        embedding_frequencies=sinusoid_frequencies_for("variance", 32),
        stem_kernel=1,
        head_norm=False,
        head_kernel=1,
        zero_init_output=True,
        num_classes=num_classes,
    )


def ddpm_mnist(in_channels: int = 1, num_classes: int | None = None) -> UNetConfig:
    """The MNIST tutorial's UNet2DModel: widths 32/64/64, two ResNet blocks a level, attention
    (8 channels a head) after every block of the two lower levels and in the middle, timestep
    embedding 32 -> 128. 1,707,009 parameters with 1 channel: diffusers' count for the same
    arguments (tested)."""
    return UNetConfig(in_channels=in_channels, widths=(32, 64, 64), attention_levels=(1, 2), num_classes=num_classes)


def ddpm_64(in_channels: int = 3, num_classes: int | None = None) -> UNetConfig:
    """The 64x64 UNet2DModel of the diffusers-based DDPM walkthrough (anime faces): widths
    128/128/256/256/512/512, two ResNet blocks a level, attention at the fifth level (4x4 after
    downsampling from 64) and in the middle. 113,673,219 parameters with 3 channels: diffusers'
    count for the same arguments (tested)."""
    return UNetConfig(
        in_channels=in_channels, widths=(128, 128, 256, 256, 512, 512), attention_levels=(4,), num_classes=num_classes
    )


def convnext_fashion(in_channels: int = 1, num_classes: int | None = None, dim: int = 28) -> UNetConfig:
    """The MindSpore tutorial's U-Net (from "The Annotated Diffusion Model"): dim 28 with
    multipliers 1/2/4, two ConvNeXt blocks (width multiplier 2) a level, linear attention (4 heads
    of 32) after every block, full attention in the middle, LayerNorm-style GroupNorm(1), GELU,
    7x7 stem, 4x4 strided-conv down and transposed-conv up sampling, timestep embedding
    28 -> 112. 4,713,409 parameters with 1 channel. Chosen: a skip per block as in DDPM, where the
    source keeps one per level (and leaves the first unused); the source's stem narrows to
    2/3 of dim and its head is a ConvNeXt block, here norm -> GELU -> 1x1 conv."""
    return UNetConfig(
        in_channels=in_channels,
        widths=(dim, 2 * dim, 4 * dim),
        attention_levels=(0, 1, 2),
        attention="linear",
        head_channels=32,
        block="convnext",
        norm="layer",
        activation="gelu",
        downsample="conv4",
        upsample="transposed",
        skip_stem_and_downsamples=False,
        stem_kernel=7,
        head_kernel=1,
        num_classes=num_classes,
    )


def labml_cifar(in_channels: int = 3, num_classes: int | None = None, n_channels: int = 32) -> UNetConfig:
    """The labml.ai DDPM U-Net of the CIFAR-10 tutorial: n_channels 32 with multipliers
    1/2/2/4, two ResNet blocks a level, single-head attention at the two lowest levels and in the
    middle, dropout 0.1, 3x3 strided-conv down and 4x4 transposed-conv up sampling, up blocks
    that narrow to their skip's width, timestep embedding 32 -> 128. 4,166,371 parameters with
    3 channels. Chosen: attention normalises its input (labml builds the GroupNorm but skips
    it), and the head's GroupNorm has 32 groups (labml: 8); parameters are equal."""
    widths = (n_channels, 2 * n_channels, 2 * n_channels, 4 * n_channels)
    return UNetConfig(
        in_channels=in_channels,
        widths=widths,
        attention_levels=(2, 3),
        head_channels=max(widths),
        dropout=0.1,
        upsample="transposed",
        up_block_width="skip",
        embedding_frequencies=(1e-4, 1.0),
        num_classes=num_classes,
    )


def residual_mnist(in_channels: int = 1, num_classes: int | None = None) -> UNetConfig:
    """A fast network for small grayscale images on a CPU: a plain residual U-Net, widths
    32/64/96 with one block a level, no attention, GroupNorm with 8 groups, timestep embedding
    32 -> 128, bilinear up-sampling without a convolution (the blocks after it convolve; a 3x3
    convolution at the doubled size was a fifth of the forward FLOPs, docs/performance.md).
    1,535,393 parameters with 1 channel."""
    return UNetConfig(
        in_channels=in_channels,
        widths=(32, 64, 96),
        blocks_per_level=1,
        attention_levels=(),
        mid_attention=False,
        groups=8,
        upsample="bilinear",
        num_classes=num_classes,
    )


def patch_mnist(in_channels: int = 1, num_classes: int | None = None) -> UNetConfig:
    """The `mnist` preset's network: residual-mnist on 2x2 patches (space-to-depth), so that its
    levels run at 14x14 and 7x7 with widths 64/96, one block a level, no attention, GroupNorm
    with 8 groups, timestep embedding 64 -> 256, bilinear up-sampling. 0.232 GFLOP a 28x28 image
    against residual-mnist's 0.358, and the 28x28 level it drops was the least efficient per
    FLOP on a CPU; it trains 1.8x the steps in the same minutes (docs/performance.md).
    1,613,636 parameters with 1 channel."""
    return dataclasses.replace(residual_mnist(in_channels, num_classes), widths=(64, 96), patch_size=2)


def patch_cifar(in_channels: int = 3, num_classes: int | None = None) -> UNetConfig:
    """The `cifar10` preset's network for small colour images: a residual U-Net on 2x2 patches,
    widths 64/128 at 16x16 and 8x8 with one block a level, self-attention (heads of 64) in the
    8x8 middle, GroupNorm with 8 groups, bilinear up-sampling. 2,459,468 parameters with 3
    channels. Chosen by the recipe trials of docs/performance.md over a third level (64/128/192
    with attention at 4x4: 25% fewer steps in the same minutes, worse FID) and batch 128."""
    return UNetConfig(
        in_channels=in_channels,
        widths=(64, 128),
        blocks_per_level=1,
        attention_levels=(),
        mid_attention=True,
        head_channels=64,
        groups=8,
        upsample="bilinear",
        patch_size=2,
        num_classes=num_classes,
    )


def patch_64(in_channels: int = 3, num_classes: int | None = None) -> UNetConfig:
    """patch-cifar on 4x4 patches, for 64x64 colour images (the `colour-64` preset): the same
    16x16 and 8x8 levels, so that it costs about what patch-cifar costs at 32x32.
    2,500,976 parameters with 3 channels."""
    return dataclasses.replace(patch_cifar(in_channels, num_classes), patch_size=4)


def photo_64(in_channels: int = 3, num_classes: int | None = None) -> UNetConfig:
    """The `colour-64` presets' network for 64x64 photos: patch-cifar on 2x2 patches with a third
    level, widths 32/64/128 at 32x32, 16x16 and 8x8, self-attention in the 8x8 middle. Chosen by
    the Tiny ImageNet-100 recipe trials over patch-64's 4x4 patches, whose samples kept a grain
    of the patch size (docs/performance.md). 2,357,868 parameters with 3 channels."""
    return dataclasses.replace(patch_cifar(in_channels, num_classes), widths=(32, 64, 128))


def basic_mnist(in_channels: int = 1, num_classes: int | None = None) -> BasicUNetConfig:
    """The MNIST tutorial's BasicUNet (part 1): 5x5 convolutions 32/64/64 down and up, max-pool,
    nearest upsampling, additive skips, no noise-level input; predicts the clean image.
    309,057 parameters with 1 channel."""
    if num_classes is not None:
        raise ValueError("the BasicUNet has no class conditioning; choose another network for labels")
    return BasicUNetConfig(in_channels=in_channels)


NETWORKS = {
    "keras-ddim": keras_ddim,
    "ddpm-mnist": ddpm_mnist,
    "ddpm-64": ddpm_64,
    "convnext-fashion": convnext_fashion,
    "labml-cifar": labml_cifar,
    "basic-mnist": basic_mnist,
    "residual-mnist": residual_mnist,
    "patch-mnist": patch_mnist,
    "patch-cifar": patch_cifar,
    "patch-64": patch_64,
    "photo-64": photo_64,
}


def network_config(name: str, **kwargs):
    """A named configuration, with its keyword arguments (in_channels, num_classes, ...)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETWORKS)}")
    return NETWORKS[name](**kwargs)


def config_to_dict(config) -> dict:
    """A JSON-ready dict that `build_network` turns back into the same network."""
    return dataclasses.asdict(config)


def config_from_dict(data, where: str = "network"):
    """A network config from its JSON form (`typed.read`); `kind` picks the config class."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table of a network config's fields; got {type(data).__name__}")
    data = dict(data)
    kind = data.pop("kind", "unet")
    if not isinstance(kind, str) or kind not in CONFIG_KINDS:
        raise ValueError(f"{where}.kind: unknown network kind {kind!r}; expected one of {', '.join(CONFIG_KINDS)}")
    return read(CONFIG_KINDS[kind][0], data, where)


def build_network(config) -> nn.Module:
    """A network from its config dataclass or from `config_to_dict`'s dict."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    return CONFIG_KINDS[config.kind][1](config)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def summary(net: nn.Module) -> str:
    """One line: kind, widths, parameters."""
    c = net.config
    extra = ""
    if isinstance(c, UNetConfig):
        attention = ",".join(map(str, c.attention_levels)) or "none"
        extra = f" {c.block} blocks x{c.blocks_per_level}, attention at levels {attention} ({c.attention})"
        extra += f", noise level {c.noise_entry}" + (f", {c.num_classes} classes" if c.num_classes else "")
    widths = "/".join(map(str, c.widths))
    millions = parameter_count(net) / 1e6
    return f"{type(net).__name__} {widths},{extra} - {millions:.{max(1, 3 - int(math.log10(max(millions, 1e-3))))}f}M parameters"
