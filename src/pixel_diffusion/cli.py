"""The `pixel-diffusion` command. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, never a traceback
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pixel-diffusion", description="Denoising diffusion models of images, in pixel space.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="draw the forward process of the built-in MNIST subset and sample from the exact "
        "denoiser of a Gaussian fitted to it",
        description="Draws the forward process of the built-in mnist-5k images, then samples with "
        "DDIM from the exact denoiser of a Gaussian fitted to those images (no network is trained).",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the pictures (default: runs/demo)")
    demo.add_argument("--steps", type=_positive_int, default=50, help="DDIM sampling steps (default: 50)")
    demo.add_argument("--n", type=_positive_int, default=64, help="number of samples in the grid (default: 64)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(run=run_demo)
    return parser


def run_demo(args) -> None:
    import torch

    from .data import from_model_range, load_builtin, to_model_range
    from .exact import GaussianDenoiser
    from .samplers import ddim, sample
    from .schedules import linear, sampling_times
    from .viz import forward_strip, image_grid, trajectory

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    images, _ = load_builtin("mnist-5k")
    x = to_model_range(images)  # (5000, 1, 28, 28) in [-1, 1]
    schedule = linear()
    written = {}

    path = args.out / "forward_process.png"
    spread = x[:: len(x) // 4][:4]  # the subset is sorted by label: take four different digits
    forward_strip(schedule, spread, [0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0], seed=args.seed).save(path)
    written["forward process"] = path

    # The best a model can do if it only knows the mean and pixel covariance of the data.
    gaussian = GaussianDenoiser.fit(schedule, x)
    samples = sample(gaussian, (1, 28, 28), args.n, sampler="ddim", steps=args.steps, seed=args.seed, clip=(-1, 1))
    path = args.out / "samples_gaussian.png"
    image_grid(from_model_range(samples), columns=8, scale=2).save(path)
    written["samples"] = path

    states = []
    times = sampling_times(schedule, 10)
    x_T = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
    ddim(gaussian, x_T, times, clip=(-1, 1), callback=lambda i, x_t, image: states.append((x_t, image)))
    path = args.out / "trajectory.png"
    trajectory(states).save(path)
    written["denoising trajectory"] = path

    print(f"done in {time.perf_counter() - start:.1f} s. No network is trained yet: the samples come from the "
          "exact denoiser of a Gaussian fitted to mnist-5k (mean and full pixel covariance), the best any "
          "model knowing only those statistics can do.")
    for what, path in written.items():
        print(f"  {what:22s} {path}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"pixel-diffusion {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pixel-diffusion {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
