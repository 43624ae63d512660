"""Building blocks of the U-Nets: noise-level embeddings, residual and ConvNeXt blocks, attention,
down- and up-sampling. Each registry is a plain dict from a config name to a constructor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


class SinusoidalEmbedding(nn.Module):
    """(B,) noise levels -> (B, dim) features [cos(w_k x), sin(w_k x)], with dim / 2 angular
    frequencies w_k spaced geometrically from `max_frequency` down to `min_frequency` (Vaswani et
    al. 2017; diffusers' Timesteps(flip_sin_to_cos=True) is min = 10000^(-(dim/2 - 1)/(dim/2)), max = 1)."""

    def __init__(self, dim: int, min_frequency: float, max_frequency: float):
        super().__init__()
        if dim % 2 or dim < 2:
            raise ValueError(f"embedding size must be a positive even number; got {dim}")
        half = dim // 2
        exponents = torch.arange(half, dtype=torch.float64) / max(half - 1, 1)
        frequencies = max_frequency * (min_frequency / max_frequency) ** exponents
        self.register_buffer("frequencies", frequencies.float(), persistent=False)

    def forward(self, level: Tensor) -> Tensor:
        angles = level.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def timestep_frequencies(dim: int, max_period: float = 10000.0) -> tuple[float, float]:
    """(min, max) angular frequencies of the DDPM / diffusers timestep embedding of size dim."""
    half = dim // 2
    return max_period ** (-(half - 1) / half), 1.0


class NoiseEmbedding(nn.Module):
    """Sinusoidal features -> Linear -> act -> Linear: the vector added in every block."""

    def __init__(self, sinusoid: SinusoidalEmbedding, in_dim: int, dim: int, activation: str):
        super().__init__()
        self.sinusoid = sinusoid
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = ACTIVATIONS[activation]()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, level: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(self.sinusoid(level))))


# ---- normalisation and activation -------------------------------------------------------------


def _group_norm(channels: int, groups: int) -> nn.Module:
    if channels % groups:
        raise ValueError(f"GroupNorm with {groups} groups needs channels divisible by {groups}; got {channels}")
    return nn.GroupNorm(groups, channels, eps=1e-5)


NORMS = {
    "group": _group_norm,
    # The Keras DDIM example's BatchNormalization(center=False, scale=False).
    "batch": lambda channels, groups: nn.BatchNorm2d(channels, affine=False),
    # GroupNorm with one group: LayerNorm over channels and pixels (the ConvNeXt U-Net's choice).
    "layer": lambda channels, groups: nn.GroupNorm(1, channels),
}

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


# ---- blocks -----------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """Pre-activation residual block (Ho et al. 2020 / diffusers ResnetBlock2D):
    norm -> act -> conv3x3 -> (+ projected embedding) -> norm -> act -> dropout -> conv3x3, plus a
    1x1 shortcut when the width changes."""

    def __init__(self, in_channels, out_channels, emb_dim, *, norm, groups, activation, dropout):
        super().__init__()
        self.norm1 = NORMS[norm](in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels) if emb_dim else None
        self.norm2 = NORMS[norm](out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        if self.emb_proj is not None:
            h = h + self.emb_proj(self.act(emb))[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.shortcut(x) + h


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block as in the annotated-diffusion / MindSpore U-Net (Liu et al. 2022):
    depthwise 7x7 -> (+ embedding) -> norm -> conv3x3 (x mult) -> GELU -> norm -> conv3x3, plus a
    1x1 shortcut when the width changes."""

    def __init__(self, in_channels, out_channels, emb_dim, *, norm, groups, activation, dropout, mult: int = 2):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 7, padding=3, groups=in_channels)
        self.emb_proj = nn.Linear(emb_dim, in_channels) if emb_dim else None
        self.act = ACTIVATIONS[activation]()
        self.net = nn.Sequential(
            NORMS[norm](in_channels, groups),
            nn.Conv2d(in_channels, out_channels * mult, 3, padding=1),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            NORMS[norm](out_channels * mult, groups),
            nn.Conv2d(out_channels * mult, out_channels, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.depthwise(x)
        if self.emb_proj is not None:
            h = h + self.emb_proj(self.act(emb))[:, :, None, None]
        return self.shortcut(x) + self.net(h)


BLOCKS = {"resnet": ResBlock, "convnext": ConvNeXtBlock}


# ---- attention --------------------------------------------------------------------------------


def attention_heads(channels: int, head_channels: int) -> int:
    """channels // head_channels heads, lowered to the nearest count that divides the channels."""
    heads = max(channels // head_channels, 1)
    while channels % heads:
        heads -= 1
    return heads


def product_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v as two matrix products; q, k, v are (..., tokens, d)."""
    weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # (..., tokens, tokens)
    return weights @ v


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention by the faster route: two plain products for bf16 on a CPU at
    up to 256 tokens (PyTorch's fused CPU kernel trains slower there, up to 9x at 49 tokens;
    benchmarks/attention.py), the fused kernel everywhere else."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= 256:
        return product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self-attention over pixels with a residual connection (diffusers' Attention
    block of UNet2DModel): norm -> q, k, v -> softmax(q k^T / sqrt(d)) v -> out."""

    def __init__(self, channels: int, head_channels: int, *, norm: str, groups: int):
        super().__init__()
        self.heads = attention_heads(channels, head_channels)
        self.norm = NORMS[norm](channels, groups)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (proj(tokens).view(b, h * w, self.heads, -1).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v))
        out = attend(q, k, v)  # (B, heads, HW, C / heads)
        out = self.to_out(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class LinearAttention(nn.Module):
    """Linear attention (Katharopoulos et al. 2020; Shen et al. 2021) as in the annotated-diffusion
    U-Net: softmax over channels for q and over pixels for k, so cost is linear in pixels."""

    def __init__(self, channels: int, head_channels: int, *, norm: str, groups: int):
        super().__init__()
        self.heads = max(channels // head_channels, 1)
        self.head_channels = head_channels
        inner = self.heads * head_channels
        self.norm = NORMS[norm](channels, groups)
        self.to_qkv = nn.Conv2d(channels, inner * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(inner, channels, 1), nn.GroupNorm(1, channels))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, self.heads, self.head_channels, h * w) for t in self.to_qkv(self.norm(x)).chunk(3, 1))
        q = q.softmax(dim=-2) * self.head_channels**-0.5
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, heads, d, d)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, h, w)
        return x + self.to_out(out)


ATTENTIONS = {"full": Attention, "linear": LinearAttention}


# ---- resampling -------------------------------------------------------------------------------


class Downsample(nn.Module):
    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "avgpool":
            self.op = nn.AvgPool2d(2)
        else:
            kernel = {"conv": 3, "conv4": 4, "conv-asym": 3}[kind]
            self.op = nn.Conv2d(channels, channels, kernel, stride=2, padding=0 if kind == "conv-asym" else 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "conv-asym":  # one row and column of zeros after the image (original DDPM)
            x = F.pad(x, (0, 1, 0, 1))
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "transposed":
            self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        elif kind == "nearest":
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        else:
            self.conv = None

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "transposed":
            return self.conv(x)
        if self.kind == "nearest":
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


# strided 3x3 conv, strided 4x4 conv, 2x2 average pool, strided 3x3 conv padded after the image only
DOWNSAMPLES = ("conv", "conv4", "avgpool", "conv-asym")
UPSAMPLES = ("nearest", "bilinear", "transposed")  # nearest + 3x3 conv, bilinear, 4x4 transposed conv


def sinusoid_frequencies_for(noise_input: str, dim: int) -> tuple[float, float]:
    """Sensible embedding frequencies for each kind of noise-level input (see diffusion.py)."""
    if noise_input == "timestep":  # 0 .. 999
        return timestep_frequencies(dim)
    if noise_input == "variance":  # 0 .. 1: the Keras example's 1 to 1000 cycles
        return 2 * math.pi, 2000 * math.pi
    return 1e-3, 1.0  # log-SNR, roughly -20 .. 20
