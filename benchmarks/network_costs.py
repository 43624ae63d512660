"""Parameters and forward cost of every named network at its native image size.

    python benchmarks/network_costs.py            # prints the table and rewrites docs/networks.md

FLOPs are counted by torch.utils.flop_counter (a multiply-add is 2 FLOPs; convolutions, matrix
products and attention count, normalisation and activations do not), for one image, forward only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pixel_diffusion.networks import NETWORKS, build_network, network_config, parameter_count

# name: (channels, size, source system)
NATIVE = {
    "keras-ddim": (3, 64, "Keras DDIM example, Oxford flowers 64x64"),
    "ddpm-mnist": (1, 28, "MNIST tutorial, part 2 (diffusers UNet2DModel)"),
    "ddpm-64": (3, 64, "diffusers DDPM walkthrough, anime faces 64x64"),
    "convnext-fashion": (1, 28, "MindSpore DDPM, Fashion-MNIST 28x28"),
    "labml-cifar": (3, 32, "labml.ai DDPM, CIFAR-10 32x32"),
    "basic-mnist": (1, 28, "MNIST tutorial, part 1 (BasicUNet)"),
    "residual-mnist": (1, 28, "plain residual U-Net for small grayscale images"),
    "patch-mnist": (1, 28, "the `mnist` preset: residual-mnist on 2x2 patches"),
    "patch-cifar": (3, 32, "the `cifar10` preset: residual U-Net on 2x2 patches, attention at 8x8"),
    "patch-64": (3, 64, "patch-cifar on 4x4 patches (the `colour-64` preset before the Tiny ImageNet trials)"),
    "photo-64": (3, 64, "the `colour-64` presets: patch-cifar with a 32x32 level, widths 32/64/128"),
}


def measure(name: str) -> tuple[int, float]:
    channels, size, _ = NATIVE[name]
    net = build_network(network_config(name, in_channels=channels)).eval()
    x = torch.randn(1, channels, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, torch.tensor([0.5]))
    return parameter_count(net), counter.get_total_flops() / 1e9


def table() -> str:
    rows = [
        "| network | source | input | parameters | GFLOPs / image (forward) |",
        "|---|---|---|---:|---:|",
    ]
    for name in NETWORKS:
        channels, size, source = NATIVE[name]
        params, gflops = measure(name)
        rows.append(f"| `{name}` | {source} | {channels}x{size}x{size} | {params:,} | {gflops:.3f} |")
    return "\n".join(rows)


DOC = """# Networks

Every network is called as `net(x, noise_level, labels=None)` and returns a tensor shaped like
`x`. All but `basic-mnist` are configurations of one U-Net (`networks/unet.py`, `UNetConfig`);
`basic-mnist` has no noise-level input and is its own small module (`networks/basic.py`).
Build one with `build_network(network_config(name, in_channels=..., num_classes=...))`; save its
`config_to_dict(net.config)` with the weights and `build_network(that_dict)` rebuilds it.

{table}

Produced by `python benchmarks/network_costs.py` (FLOPs from `torch.utils.flop_counter`: a
multiply-add counts 2; normalisation and activations are not counted). Parameter counts are for
the input channels shown and no class conditioning.

## What each configuration follows, and what was chosen

The docstring of each function in `pixel_diffusion.networks` states the source's architecture,
the parameter count (checked by the tests) and the choices made where the source was ambiguous
or where the shared U-Net differs from it:

- `ddpm-mnist` and `ddpm-64` are exactly diffusers' `UNet2DModel` with the tutorials' arguments:
  same parameter count and tensor shapes, and for `ddpm-mnist` the same output to 1e-5 when
  given diffusers' weights (tested).
- `keras-ddim`: same layers and parameter count as the Keras example; blocks apply the
  activation before each convolution instead of after the first.
- `convnext-fashion`: ConvNeXt blocks, linear attention, 4x4 strided / transposed convolutions
  as in the source; it keeps a skip per block (the source keeps one per level), a stem of the
  full first width and a norm -> GELU -> 1x1 head.
- `labml-cifar`: labml's channel plan, with its attention's normalisation actually applied.

## Options of the U-Net

Widths per level, blocks per level, attention levels and kind (`full`, `linear`), channels per
head, ResNet or ConvNeXt blocks, GroupNorm (with a group count), BatchNorm without scale or
centre, or one-group "layer" norm, SiLU or GELU, dropout, down-sampling by strided 3x3 or 4x4
convolution or average pooling, up-sampling by nearest + conv, bilinear or transposed
convolution, noise level added in every block (sinusoidal -> MLP) or concatenated at the input,
zero-initialised output, and `num_classes` for class conditioning: a learned label embedding
added to the noise embedding, with label `num_classes` reserved for "no label" so one network
serves classifier-free guidance.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "networks.md")
    args = parser.parse_args()
    text = table()
    print(text)
    args.out.write_text(DOC.format(table=text))


if __name__ == "__main__":
    main()
