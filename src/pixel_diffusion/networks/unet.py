"""One configurable U-Net (Ronneberger et al. 2015; Ho et al. 2020) for every reference system.

    net(x, noise_level, labels=None) -> tensor shaped like x

Layout, for levels 0 .. L-1 of widths w_0 .. w_{L-1} (level 0 at the stem's resolution):

    [patch_size p > 1: pixel-unshuffle, (B, C, H, W) -> (B, C p^2, H/p, W/p)]
    stem conv                                         -> skip (if skip_stem_and_downsamples)
    level i: blocks_per_level x [block (+ attention)]  -> one skip per block
             downsample (not after the last level unless down_after_last)
                                                       -> skip (if skip_stem_and_downsamples)
    middle:  mid_blocks blocks of mid_width, full attention after the first (if mid_attention)
    level i, from L-1 to 0: upsample (where level i was downsampled), then one block per skip of
             the level, each taking the concatenation of x and that skip (+ attention)
    head:    [norm -> act] -> conv to out_channels (zero-initialised if asked)
             [patch_size p > 1: conv to out_channels p^2, then pixel-shuffle back to H x W]

Patches (space-to-depth, as in Hoogeboom et al. 2023, "simple diffusion") move every level one
halving down for each factor of 2 in p: the full-resolution level, the slowest per FLOP, is gone.

The noise level enters either as a vector (sinusoidal features -> MLP) added in every block, or
as sinusoidal features broadcast over the image and concatenated to the stem's output (the Keras
DDIM example). With `num_classes`, a learned label embedding is added to that vector; label
`num_classes` means "no label", so the same network serves classifier-free guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import (
    ACTIVATIONS,
    ATTENTIONS,
    BLOCKS,
    DOWNSAMPLES,
    NORMS,
    UPSAMPLES,
    Attention,
    Downsample,
    NoiseEmbedding,
    SinusoidalEmbedding,
    Upsample,
    timestep_frequencies,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 1
    out_channels: int | None = None  # defaults to in_channels
    widths: tuple[int, ...] = (32, 64, 64)
    blocks_per_level: int = 2
    attention_levels: tuple[int, ...] = ()  # level indices with attention after each block
    attention: str = "full"  # full | linear, at the levels (the middle always uses full)
    head_channels: int = 8  # channels per attention head; a value >= the width gives one head
    mid_blocks: int = 2
    mid_width: int | None = None  # defaults to widths[-1]
    mid_attention: bool = True
    block: str = "resnet"  # resnet | convnext
    norm: str = "group"  # group | batch | layer
    groups: int = 32
    norm_eps: float = 1e-5  # epsilon of every GroupNorm
    activation: str = "silu"  # silu | gelu
    dropout: float = 0.0
    downsample: str = "conv"  # conv (3x3, stride 2) | conv4 (4x4, stride 2) | avgpool | conv-asym (pad 0, 1)
    upsample: str = "nearest"  # nearest (+ 3x3 conv) | bilinear | transposed (4x4)
    down_after_last: bool = False
    skip_stem_and_downsamples: bool = True
    up_block_width: str = "level"  # level: up blocks output the level's width; skip: the skip's width
    noise_entry: str = "add"  # add (MLP vector in every block) | concat (features at the input)
    embedding_dim: int | None = None  # sinusoid size; defaults to widths[0]
    embedding_frequencies: tuple[float, float] | None = None  # (min, max) angular; default: timesteps
    embedding_mlp_dim: int | None = None  # defaults to 4 * widths[0]
    stem_kernel: int = 3
    head_norm: bool = True
    head_kernel: int = 3
    zero_init_output: bool = False
    patch_size: int = 1  # p > 1: the network sees (C p^2, H/p, W/p) patches
    num_classes: int | None = None
    kind: str = field(default="unet", init=False)

    def __post_init__(self):
        for name, value, options in (
            ("attention", self.attention, ATTENTIONS),
            ("block", self.block, BLOCKS),
            ("norm", self.norm, NORMS),
            ("activation", self.activation, ACTIVATIONS),
            ("downsample", self.downsample, DOWNSAMPLES),
            ("upsample", self.upsample, UPSAMPLES),
            ("noise_entry", self.noise_entry, ("add", "concat")),
            ("up_block_width", self.up_block_width, ("level", "skip")),
        ):
            if value not in options:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(options)}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "attention_levels", tuple(int(i) for i in self.attention_levels))
        if self.embedding_frequencies is not None:
            object.__setattr__(self, "embedding_frequencies", tuple(float(f) for f in self.embedding_frequencies))
        if not self.widths or min(self.widths) < 1 or self.blocks_per_level < 1 or self.in_channels < 1:
            raise ValueError("widths, blocks_per_level and in_channels must be positive")
        bad = [i for i in self.attention_levels if not 0 <= i < len(self.widths)]
        if bad:
            raise ValueError(f"attention levels {bad} out of range; expected 0 to {len(self.widths) - 1}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer; got {self.patch_size}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be positive or None; got {self.num_classes}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1); got {self.dropout}")

    @property
    def downsamplings(self) -> int:
        return len(self.widths) - (0 if self.down_after_last else 1)

    @property
    def least_blocks(self) -> int:
        """The encoder's and middle's blocks, fewer than the network's weight tensors (each holds one
        or more): a cheap bound to check a description against its weights before building it."""
        return len(self.widths) * self.blocks_per_level + self.mid_blocks


class _Layer(nn.Module):
    """A block, optionally followed by attention."""

    def __init__(self, block: nn.Module, attention: nn.Module | None):
        super().__init__()
        self.block, self.attention = block, attention

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        x = self.block(x, emb)
        return x if self.attention is None else self.attention(x)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        levels = len(c.widths)
        mid_width = c.mid_width or c.widths[-1]
        sinusoid_dim = c.embedding_dim or c.widths[0]
        frequencies = c.embedding_frequencies or timestep_frequencies(sinusoid_dim)
        sinusoid = SinusoidalEmbedding(sinusoid_dim, *frequencies)

        if c.noise_entry == "add":
            emb_dim = c.embedding_mlp_dim or 4 * c.widths[0]
            self.embedding = NoiseEmbedding(sinusoid, sinusoid_dim, emb_dim, c.activation)
            label_dim, block_emb_dim, stem_extra = emb_dim, emb_dim, 0
        else:
            self.embedding = sinusoid
            label_dim, block_emb_dim, stem_extra = sinusoid_dim, 0, sinusoid_dim
        self.label_embedding = nn.Embedding(c.num_classes + 1, label_dim) if c.num_classes else None

        def block(cin, cout):
            return BLOCKS[c.block](
                cin, cout, block_emb_dim, norm=c.norm, groups=c.groups, activation=c.activation, dropout=c.dropout
            )

        def attention(channels, level):
            if level is None:
                return Attention(channels, c.head_channels, norm=c.norm, groups=c.groups)
            if level in c.attention_levels:
                return ATTENTIONS[c.attention](channels, c.head_channels, norm=c.norm, groups=c.groups)
            return None

        patch_area = c.patch_size**2
        self.stem = nn.Conv2d(c.in_channels * patch_area, c.widths[0], c.stem_kernel, padding=c.stem_kernel // 2)
        channels = c.widths[0] + stem_extra
        skip_widths = [channels] if c.skip_stem_and_downsamples else []
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for level, width in enumerate(c.widths):
            layers = nn.ModuleList()
            for _ in range(c.blocks_per_level):
                layers.append(_Layer(block(channels, width), attention(width, level)))
                channels = width
                skip_widths.append(width)
            self.down.append(layers)
            if level < levels - 1 or c.down_after_last:
                self.downsample.append(Downsample(channels, c.downsample))
                if c.skip_stem_and_downsamples:
                    skip_widths.append(channels)
            else:
                self.downsample.append(nn.Identity())

        self.middle = nn.ModuleList()
        for k in range(c.mid_blocks):
            with_attention = c.mid_attention and k == 0 and c.mid_blocks > 1
            self.middle.append(_Layer(block(channels, mid_width), attention(mid_width, None) if with_attention else None))
            channels = mid_width

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        per_level = c.blocks_per_level + (1 if c.skip_stem_and_downsamples else 0)
        for level in reversed(range(levels)):
            resampled = level < levels - 1 or c.down_after_last
            self.upsample.append(Upsample(channels, c.upsample) if resampled else nn.Identity())
            layers = nn.ModuleList()
            for _ in range(per_level):
                skip = skip_widths.pop()
                width = c.widths[level] if c.up_block_width == "level" else skip
                layers.append(_Layer(block(channels + skip, width), attention(width, level)))
                channels = width
            self.up.append(layers)

        head = [NORMS[c.norm](channels, c.groups), ACTIVATIONS[c.activation]()] if c.head_norm else []
        out_channels = (c.out_channels or c.in_channels) * patch_area
        out = nn.Conv2d(channels, out_channels, c.head_kernel, padding=c.head_kernel // 2)
        if c.zero_init_output:
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        self.head = nn.Sequential(*head, out)
        for module in self.modules():
            if isinstance(module, nn.GroupNorm):
                module.eps = c.norm_eps

    def check_input(self, x: Tensor, labels: Tensor | None) -> None:
        c = self.config
        factor = c.patch_size * 2**c.downsamplings
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected images shaped (B, {c.in_channels}, H, W); got {tuple(x.shape)}")
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"image size {x.shape[-2]}x{x.shape[-1]} is not divisible by {factor} "
                f"({c.downsamplings} downsamplings" + (f", patches of {c.patch_size}" if c.patch_size > 1 else "")
                + f"); expected multiples of {factor}"
            )
        if labels is not None:  # their values are checked where they come in (runs.ModelSpec.check_labels)
            if c.num_classes is None:
                raise ValueError("labels given to a network built without num_classes")
            if labels.shape != (x.shape[0],):
                raise ValueError(f"labels must be {x.shape[0]} integers, one per image; got shape {tuple(labels.shape)}")

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None = None) -> Tensor:
        c = self.config
        self.check_input(x, labels)
        emb = self.embedding(noise_level.reshape(-1).expand(x.shape[0]))
        if self.label_embedding is not None:
            if labels is None:  # unconditional: the reserved "no label" index
                labels = torch.full((x.shape[0],), c.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_embedding(labels)

        if c.patch_size > 1:
            x = nn.functional.pixel_unshuffle(x, c.patch_size)  # (B, C p^2, H/p, W/p)
        h = self.stem(x)
        if c.noise_entry == "concat":  # (B, D) features broadcast over the image
            h = torch.cat([h, emb[:, :, None, None].to(h.dtype).expand(-1, -1, *h.shape[-2:])], 1)
            emb = None
        skips = [h] if c.skip_stem_and_downsamples else []
        for layers, down in zip(self.down, self.downsample):
            for layer in layers:
                h = layer(h, emb)
                skips.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                if c.skip_stem_and_downsamples:
                    skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for up, layers in zip(self.upsample, self.up):
            h = up(h)
            for layer in layers:
                h = layer(torch.cat([h, skips.pop()], 1), emb)
        h = self.head(h)
        return h if c.patch_size == 1 else nn.functional.pixel_shuffle(h, c.patch_size)
