"""Speed of the `mnist` network's 3x3 convolutions, one shape at a time, in a training step.

    python benchmarks/conv_shapes.py                 # table to stdout
    python benchmarks/conv_shapes.py --repeats 7 --batch 64

Each row is one 3x3 convolution of residual-mnist (widths 32/64/96 at 28x28 / 14x14 / 7x7),
forward under bf16 autocast and backward, on a batch of `--batch`; the time is the median of
`--repeats` rounds of `--iterations` steps, with the spread (min-max). GFLOP/s counts 3x the
forward multiply-adds x 2. The shapes alternate within each round, so drift of the machine hits
all of them alike. The ratio column divides by the 64->64 convolution at 14x14, which does the
same FLOPs as 32->32 at 28x28 on a quarter of the positions with twice the channels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

# (in channels, out channels, side): the convolutions the network runs, by level
SHAPES = [(32, 32, 28), (64, 32, 28), (96, 32, 28), (64, 64, 14), (128, 64, 14), (96, 96, 7), (192, 96, 7)]
REFERENCE = (64, 64, 14)


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
    steps = {shape: step_function(*shape, args.batch) for shape in SHAPES}
    for step in steps.values():  # warm the caches and oneDNN's primitives
        for _ in range(3):
            step()
    times = {shape: [] for shape in SHAPES}
    for _ in range(args.repeats):
        for shape, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.iterations):
                step()
            times[shape].append((time.perf_counter() - start) / args.iterations)

    reference = statistics.median(times[REFERENCE])
    print(f"batch {args.batch}, bf16 autocast, forward + backward, {torch.get_num_threads()} threads\n")
    print("| convolution | side | ms (median) | spread | GFLOP/s | time vs 64->64 at 14x14 |")
    print("|---|---:|---:|---:|---:|---:|")
    for (cin, cout, side), measured in times.items():
        median = statistics.median(measured)
        flops = 3 * 2 * args.batch * side * side * 9 * cin * cout
        print(f"| {cin}->{cout} | {side} | {median * 1e3:.2f} | {min(measured) * 1e3:.2f}-{max(measured) * 1e3:.2f} | "
              f"{flops / median / 1e9:.0f} | {median / reference:.2f}x |")


if __name__ == "__main__":
    main()
