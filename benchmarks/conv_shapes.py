"""Speed of the `mnist` network's 3x3 convolutions, one shape at a time, in a training step.

    python benchmarks/conv_shapes.py                 # table to stdout
    python benchmarks/conv_shapes.py --repeats 7 --batch 64

The shapes are read from residual-mnist itself (forward hooks on a 28x28 forward pass): every
distinct 3x3 stride-1 convolution, with how many times the network runs it. Each is timed
alone, forward under bf16 autocast and backward, on a batch of `--batch`; the time is the median
of `--repeats` rounds of `--iterations` steps, with the spread (min-max). GFLOP/s counts 3x the
forward multiply-adds x 2. The shapes alternate within each round, so drift of the machine hits
all of them alike. The ratio column divides by the 64->64 convolution at 14x14, which does the
same FLOPs as 32->32 at 28x28 on a quarter of the positions with twice the channels; the last
table sums count x time by side, the share of the network's 3x3 convolution time at each level.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from pixel_diffusion.networks import build_network, network_config

REFERENCE = (64, 64, 14)


def network_shapes() -> Counter:
    """(in channels, out channels, side) of each 3x3 stride-1 convolution of residual-mnist: count."""
    net = build_network(network_config("residual-mnist")).eval()
    shapes = Counter()

    def record(conv, inputs, output):
        if conv.kernel_size == (3, 3) and conv.stride == (1, 1):
            shapes[(conv.in_channels, conv.out_channels, inputs[0].shape[-1])] += 1

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.randn(1, 1, 28, 28), torch.tensor([0.5]))
    for hook in hooks:
        hook.remove()
    return shapes


def step_function(cin: int, cout: int, side: int, batch: int):
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    x = torch.randn(batch, cin, side, side, requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()

    torch.manual_seed(0)
    counts = network_shapes()
    shapes = sorted(counts, key=lambda shape: (-shape[2], shape[0], shape[1]))
    steps = {shape: step_function(*shape, args.batch) for shape in shapes}
    for step in steps.values():  # warm the caches and oneDNN's primitives
        for _ in range(3):
            step()
    times = {shape: [] for shape in shapes}
    for _ in range(args.repeats):
        for shape, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.iterations):
                step()
            times[shape].append((time.perf_counter() - start) / args.iterations)

    reference = statistics.median(times[REFERENCE])
    print(f"batch {args.batch}, bf16 autocast, forward + backward, {torch.get_num_threads()} threads\n")
    print("| convolution | side | in the network | ms (median) | spread | GFLOP/s | time vs 64->64 at 14x14 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by_side = Counter()
    for (cin, cout, side), measured in times.items():
        median = statistics.median(measured)
        flops = 3 * 2 * args.batch * side * side * 9 * cin * cout
        by_side[side] += counts[(cin, cout, side)] * median
        print(f"| {cin}->{cout} | {side} | {counts[(cin, cout, side)]}x | {median * 1e3:.2f} | "
              f"{min(measured) * 1e3:.2f}-{max(measured) * 1e3:.2f} | {flops / median / 1e9:.0f} | {median / reference:.2f}x |")
    print("\n| side | share of the 3x3 convolution time |\n|---:|---:|")
    for side, seconds in by_side.items():
        print(f"| {side} | {seconds / sum(by_side.values()):.0%} |")


if __name__ == "__main__":
    main()
