"""Training speed of self-attention by PyTorch's fused kernel and by two plain matrix products.

    python benchmarks/attention.py                   # table to stdout and docs/performance_attention.md
    python benchmarks/attention.py --repeats 7 --batch 64

The shapes are read from the networks (forward hooks on every full-attention block at the
network's preset resolution): tokens, heads and channels per head, and two probes either side
of the 256-token limit of `layers.attend`. Each shape is timed forward
and backward (q, k and v need gradients, as in training) in float32 and in bf16, by
`F.scaled_dot_product_attention` and by `layers.product_attention` (softmax(q k^T / sqrt(d)) v
as two products); the time is the median of `--repeats` rounds of `--iterations` steps, with the
spread (min-max), the two routes alternating within each round so that drift of the machine hits
both alike. `layers.attend` takes the products where this table finds them faster.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pixel_diffusion.networks import build_network, network_config
from pixel_diffusion.networks.layers import Attention, product_attention

# network: (input channels, side) at its preset's resolution
NETWORKS = {"patch-cifar": (3, 32), "patch-64": (3, 64), "ddpm-mnist": (1, 28), "labml-cifar": (3, 32)}
# Shapes no network has, either side of `layers.attend`'s limit of 256 tokens.
PROBES = {(256, 2, 64): "(the limit)", (1024, 2, 64): "(past the limit)"}
ROUTES = {"fused": F.scaled_dot_product_attention, "products": product_attention}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "performance_attention.md"


def attention_shapes() -> dict[tuple[int, int, int], list[str]]:
    """(tokens, heads, channels per head): the networks that attend at that shape."""
    shapes: dict[tuple[int, int, int], list[str]] = {}
    for name, (channels, side) in NETWORKS.items():
        net = build_network(network_config(name, in_channels=channels)).eval()

        def record(block, inputs, output, name=name):
            _, c, h, w = inputs[0].shape
            shape = (h * w, block.heads, c // block.heads)
            if name not in shapes.setdefault(shape, []):
                shapes[shape].append(name)

        hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, Attention)]
        with torch.no_grad():
            net(torch.randn(1, channels, side, side), torch.tensor([500.0]))
        for hook in hooks:
            hook.remove()
    shapes.update({shape: [label] for shape, label in PROBES.items() if shape not in shapes})
    return dict(sorted(shapes.items()))


def step_time(route, shape: tuple[int, int, int], batch: int, dtype, iterations: int) -> float:
    tokens, heads, head_channels = shape
    q, k, v = (torch.randn(batch, heads, tokens, head_channels, dtype=dtype, requires_grad=True) for _ in range(3))
    route(q, k, v).float().square().mean().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        route(q, k, v).float().square().mean().backward()
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    shapes = attention_shapes()
    cells = [(shape, dtype) for shape in shapes for dtype in (torch.float32, torch.bfloat16)]
    times = {(cell, route): [] for cell in cells for route in ROUTES}
    for _ in range(args.repeats):
        for cell in cells:
            for route, f in ROUTES.items():
                times[cell, route].append(1e3 * step_time(f, cell[0], args.batch, cell[1], args.iterations))
    lines = [f"<!-- written by: python benchmarks/attention.py --repeats {args.repeats} --iterations {args.iterations} "
             f"--batch {args.batch} on {platform.machine()}, {torch.get_num_threads()} threads -->",
             f"Self-attention forward + backward, batch {args.batch}, ms per step: median (min-max).", "",
             "| tokens | heads x channels | networks | dtype | fused kernel | two products | fused / products |",
             "|---:|---|---|---|---:|---:|---:|"]
    for (shape, dtype) in cells:
        fused, products = (times[(shape, dtype), route] for route in ROUTES)
        spread = lambda t: f"{statistics.median(t):.2f} ({min(t):.2f}-{max(t):.2f})"  # noqa: E731
        lines.append(f"| {shape[0]} | {shape[1]} x {shape[2]} | {', '.join(shapes[shape])} | {str(dtype).split('.')[1]} | "
                     f"{spread(fused)} | {spread(products)} | {statistics.median(fused) / statistics.median(products):.2f}x |")
    text = "\n".join(lines)
    print(text)
    DOCS.write_text(text + "\n")


if __name__ == "__main__":
    main()
