"""The BasicUNet of the MNIST tutorial's first part: three 5x5 convolutions down, three up, with
additive skips and no noise-level input at all. It is trained to predict the clean image from
one mixed with noise by an unknown amount, so `noise_level` is accepted and ignored."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class BasicUNetConfig:
    in_channels: int = 1
    out_channels: int | None = None
    widths: tuple[int, int, int] = (32, 64, 64)
    kind: str = field(default="basic", init=False)

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != 3 or min(self.widths) < 1 or self.in_channels < 1:
            raise ValueError(f"BasicUNet takes three positive widths; got {self.widths}")

    @property
    def downsamplings(self) -> int:
        return 2


class BasicUNet(nn.Module):
    """Down: conv-act (skip, max-pool) x2, conv-act; up: conv-act, (upsample, add skip, conv-act) x2.
    As in the tutorial, the last convolution is also followed by the activation."""

    def __init__(self, config: BasicUNetConfig):
        super().__init__()
        self.config = config
        a, b, c = config.widths
        out = config.out_channels or config.in_channels
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 5, padding=2)
        self.down_layers = nn.ModuleList([conv(config.in_channels, a), conv(a, b), conv(b, c)])
        self.up_layers = nn.ModuleList([conv(c, b), conv(b, a), conv(a, out)])
        self.act = nn.SiLU()
        self.downscale = nn.MaxPool2d(2)
        self.upscale = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor | None = None, labels=None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images shaped (B, {self.config.in_channels}, H, W); got {tuple(x.shape)}")
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"image size {x.shape[-2]}x{x.shape[-1]} is not divisible by 4 (2 downsamplings); expected multiples of 4")
        if labels is not None:
            raise ValueError("labels given to a network built without num_classes")
        skips = []
        for i, layer in enumerate(self.down_layers):
            x = self.act(layer(x))
            if i < 2:
                skips.append(x)
                x = self.downscale(x)
        for i, layer in enumerate(self.up_layers):
            if i > 0:
                x = self.upscale(x) + skips.pop()
            x = self.act(layer(x))
        return x
