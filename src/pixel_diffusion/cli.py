"""The `pixel-diffusion` command. Thin: it parses arguments, builds a config and calls the library."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__

ETA_SAMPLERS = ("ddim", "euler-ancestral", "dpmpp-2m", "dpmpp-2m-sde")  # the samplers with a noise amount `eta`


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_walk_arguments(command) -> None:
    """The sampling walk's options, shared by sample and evaluate."""
    from .schedules import SPACINGS

    command.add_argument("--spacing", default="uniform", help=f"time spacing, one of {', '.join(SPACINGS)} (default: uniform)")
    command.add_argument("--sigma-max", type=_positive_float,
                         help="karras and log-snr spacings: start at this EDM noise level sigma/alpha (default: 80; inf for the schedule's t = 1)")
    command.add_argument("--eta", type=float,
                         help=f"noise per step in [0, 1] for {', '.join(ETA_SAMPLERS)} (default: 0 for ddim and dpmpp-2m, 1 for the others)")
    command.add_argument("--no-clip", action="store_true",
                         help="leave the image estimate unclipped at each step (default: clipped to the data range; docs/samplers.md measures both)")


def _walk_options(args) -> dict:
    options = {"spacing": args.spacing}
    if args.sigma_max is not None:
        options["sigma_max"] = args.sigma_max
    if args.eta is not None:
        if args.sampler not in ETA_SAMPLERS:
            raise ValueError(f"--eta is an option of the {', '.join(ETA_SAMPLERS)} samplers, not of {args.sampler}")
        if not 0 <= args.eta <= 1:  # checked here, before the run is loaded and a progress bar drawn
            raise ValueError(f"--eta must lie in [0, 1] (0: deterministic, 1: the full posterior noise); got {args.eta:g}")
        options["eta"] = args.eta
    if args.no_clip:
        options["clip"] = None
    return options


def build_parser() -> argparse.ArgumentParser:
    from .presets import PRESETS
    from .samplers import SAMPLERS

    parser = _Parser(prog="pixel-diffusion", description="Denoising diffusion models of images, in pixel space.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser(
        "train",
        help="train a model (or continue the run in --out)",
        description="Train a diffusion model. Re-running the same command on the same --out continues "
        "from its newest checkpoint. Any config field can be set as KEY=VALUE (dotted for sections: "
        "data.image_size=32, loss.weighting=min-snr).",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields to override")
    train.add_argument("--preset", default="mnist", help=f"named configuration (default: mnist); one of {', '.join(PRESETS)}")
    train.add_argument("--data", help="data source: a folder, .npz/.npy, idx file, CIFAR folder, hf:NAME, mnist-5k or digits (default: the preset's)")
    train.add_argument("--out", type=Path, help="run directory (default: runs/PRESET)")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive_int, help="train for this many optimiser steps (default: the preset's budget)")
    budget.add_argument("--epochs", type=_positive_int, help="train for this many passes over the data")
    budget.add_argument("--minutes", type=_positive_float, help="train for this many minutes of wall-clock time")
    train.add_argument("--config", type=Path, help="JSON or TOML file of config fields, applied after the preset (default: none)")
    train.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out to continue from (default: continue if there is one)")
    train.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (default: the preset's)")
    train.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: auto)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    train.set_defaults(handler=run_train)

    sample = commands.add_parser("sample", help="draw images from a trained run", description="Draw images from a trained run's newest checkpoint (EMA weights).")
    sample.add_argument("--run", type=Path, required=True, help="run directory written by train")
    sample.add_argument("--sampler", default="ddim", help=f"one of {', '.join(SAMPLERS)} (default: ddim)")
    sample.add_argument("--steps", type=_positive_int, default=50, help="sampling steps (default: 50)")
    _add_walk_arguments(sample)
    sample.add_argument("--n", type=_positive_int, default=64, help="number of images (default: 64)")
    sample.add_argument("--seed", type=int, default=0, help="seed; image k depends only on (seed, k) (default: 0)")
    sample.add_argument("--label", type=int, help="class to draw, for runs trained with labels (default: none)")
    sample.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale with --label (default: 1, no guidance)")
    sample.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default: 64)")
    sample.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="network arithmetic: bf16 autocast is about twice as fast on CPUs with AMX (default: fp32)")
    sample.add_argument("--weights", choices=("ema", "model"), default="ema", help="which weights (default: ema)")
    sample.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    sample.add_argument("--out", type=Path, help="output folder (default: RUN/samples-SAMPLER-STEPS)")
    sample.add_argument("--no-png", action="store_true", help="write only samples.npz and the grid, not one PNG per image")
    sample.set_defaults(handler=run_sample)

    classifier = commands.add_parser(
        "train-classifier",
        help="train the small CNN whose features the metrics use on MNIST-like data",
        description="Train a small classifier on a labelled source (10%% held out) for FID/KID features, "
        "confidence and class balance; writes classifier.safetensors and classifier.json to --out.",
    )
    classifier.add_argument("--data", required=True, help="labelled data source: mnist-5k, digits, idx files, CIFAR, a .npz with labels, class folders")
    classifier.add_argument("--out", type=Path, required=True, help="folder for the classifier")
    classifier.add_argument("--epochs", type=_positive_int, default=8, help="passes over the data (default: 8)")
    classifier.add_argument("--image-size", type=_positive_int, help="square side to resize to (default: the data's)")
    classifier.add_argument("--class-folders", action="store_true", help="image folders: sub-folders are the classes")
    classifier.add_argument("--no-reject-class", action="store_true",
                            help="no 'not a data image' class trained on corrupted images (default: trained)")
    classifier.set_defaults(handler=run_train_classifier)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure sample quality: FID, KID, precision/recall, classifier scores",
        description="Sample from a run (or take --images) and compare with the run's data (or --reference) "
        "in the features of a classifier trained with train-classifier.",
    )
    evaluate.add_argument("--run", type=Path, help="run directory to sample from (default: none; then --images)")
    evaluate.add_argument("--images", help="evaluate these instead: a folder of images or a .npz such as sample writes")
    evaluate.add_argument("--reference", help="reference data source (default: the run's training data)")
    evaluate.add_argument("--extractor", default="classifier", choices=("classifier", "inception"),
                          help="features: a classifier trained by train-classifier, or the FID InceptionV3 (default: classifier)")
    evaluate.add_argument("--classifier", type=Path, help="folder written by train-classifier (for --extractor classifier)")
    evaluate.add_argument("--inception-weights", type=Path, help="the FID weights file pt_inception-2015-12-05-6726825d.pth "
                          "(default: $PIXEL_DIFFUSION_INCEPTION, the cache, or a download)")
    evaluate.add_argument("--n", type=_positive_int, default=1000, help="images to sample from the run (default: 1000)")
    evaluate.add_argument("--sampler", default="ddim", help="sampler (default: ddim)")
    evaluate.add_argument("--steps", type=_positive_int, default=50, help="sampling steps (default: 50)")
    _add_walk_arguments(evaluate)
    evaluate.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    evaluate.add_argument("--guidance", type=float, default=1.0, help="guidance scale for class-conditional runs (default: 1)")
    evaluate.add_argument("--kid-subset-size", type=_positive_int, default=1000, help="KID subset size (default: 1000)")
    evaluate.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pixel-diffusion" / "reference",
                          help="where reference features are cached (default: ~/.cache/pixel-diffusion/reference)")
    evaluate.add_argument("--out", type=Path, help="JSON file for the results (default: RUN/metrics-SAMPLER-STEPS.json, or none)")
    # Options that only mean something when sampling from --run; given with --images they are refused.
    sampling = ("n", "sampler", "steps", "spacing", "sigma_max", "eta", "no_clip", "seed", "guidance")
    evaluate.set_defaults(handler=run_evaluate, sampling_defaults={dest: evaluate.get_default(dest) for dest in sampling})

    show = commands.add_parser(
        "show",
        help="pictures of what a trained model does, and editing",
        description="One picture of a trained run: grid (samples, labelled by class for conditional runs), "
        "forward (the forward process of data images), trajectory (x_t and the image estimate per step), "
        "steps (one noise sampled with 1..20 steps), interpolation (spherical path between two seeds' noises), "
        "evolution (GIF of the training previews), curves (loss, lr, KID), restore (SDEdit from --strength), "
        "inpaint (RePaint inside --mask).",
    )
    show.add_argument("kind", choices=SHOWS, help="which picture")
    show.add_argument("--run", type=Path, required=True, help="run directory written by train")
    show.add_argument("--out", type=Path, help="output file (default: RUN/show-KIND.png, or .gif for evolution)")
    show.add_argument("--n", type=_positive_int, default=None, help="images (default: 64 for grid, 8 for steps, 4 inputs for restore/inpaint)")
    show.add_argument("--sampler", default="ddim", help="sampler for grid, steps, restore (default: ddim)")
    show.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: 50; 10 for trajectory; 20 for interpolation)")
    show.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    show.add_argument("--seed2", type=int, default=1, help="second seed, for interpolation (default: 1)")
    show.add_argument("--frames", type=_positive_int, default=10, help="interpolation frames (default: 10)")
    show.add_argument("--step-counts", default="1,2,3,5,10,20", help="step counts to compare (default: 1,2,3,5,10,20)")
    show.add_argument("--times", default="0,0.05,0.1,0.2,0.35,0.5,0.75,1", help="times for the forward process (default: 0,0.05,...,1)")
    show.add_argument("--label", type=int, help="class for grid, for runs trained with labels (default: every class)")
    show.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default: 1)")
    show.add_argument("--input", help="images to noise or edit: any data source (default: the run's data)")
    show.add_argument("--strength", type=float, default=0.5, help="restore: how far to noise, in (0, 1] (default: 0.5)")
    show.add_argument("--variations", type=_positive_int, default=4, help="restore/inpaint: results per input (default: 4)")
    show.add_argument("--mask", default="right-half", help=f"inpaint: {', '.join(MASKS)}, or an image file, white = generate (default: right-half)")
    show.add_argument("--resample", type=_positive_int, default=5, help="inpaint: RePaint resampling per step (default: 5)")
    show.set_defaults(handler=run_show)

    demo = commands.add_parser(
        "demo",
        help="train the default model on the built-in MNIST subset and draw what it does",
        description="Trains the mnist preset on the built-in mnist-5k images for a few minutes on this "
        "machine, then writes a sample grid, a forward-process strip and a denoising trajectory.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)")
    demo.add_argument("--minutes", type=_positive_float, default=5.0, help="training time in minutes (default: 5)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(handler=run_demo)
    return parser


def _train_config(args):
    from .config import apply_overrides, read_config_file
    from .presets import preset

    config = preset(args.preset)
    if args.config:
        config = apply_overrides(config, read_config_file(args.config))
    chosen: dict = {}
    if args.data:
        chosen["data.source"] = args.data
    for name in ("steps", "epochs", "minutes"):
        if getattr(args, name) is not None:
            chosen.update({"steps": None, "epochs": None, "minutes": None, name: getattr(args, name)})
    if args.checkpoint_every:
        chosen["checkpoint_every"] = args.checkpoint_every
    if args.device:
        chosen["device"] = args.device
    if args.no_progress:
        chosen["progress"] = False
    config = apply_overrides(config, chosen)
    config = apply_overrides(config, args.overrides)
    if not config.data.source:
        raise ValueError(f"preset {args.preset} has no built-in data; pass --data (a folder of images, .npz, ...)")
    return config


def run_train(args) -> None:
    from .checkpoints import latest_checkpoint
    from .training import train

    config = _train_config(args)
    out = args.out or Path("runs") / config.preset
    if args.resume and latest_checkpoint(out) is None:
        raise ValueError(f"--resume: {out} has no checkpoint to continue from")
    last = train(config, out)
    print(f"trained {config.preset}: checkpoint {last}; previews in {out / 'samples'}")


def run_sample(args) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from .samplers import evaluations
    from .training import load_run, sample_images
    from .viz import image_grid

    denoiser, model_config = load_run(args.run, args.weights, args.device)
    labels = None
    if args.label is not None:
        classes = model_config.get("num_classes")
        if classes is None:
            raise ValueError(f"{args.run} was trained without labels; drop --label")
        if not 0 <= args.label < classes:
            raise ValueError(f"--label must lie in 0..{classes - 1}; got {args.label}")
        labels = torch.full((args.n,), args.label, dtype=torch.long)
    images = sample_images(denoiser, model_config, args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                           labels=labels, guidance=args.guidance, batch_size=args.batch_size, device=args.device,
                           precision=args.precision, **_walk_options(args))
    out = args.out or args.run / f"samples-{args.sampler}-{args.steps}"
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".samples.npz.tmp.npz"
    np.savez(tmp, images=images)
    tmp.replace(out / "samples.npz")
    scale = max(1, 64 // images.shape[1])
    image_grid(images, columns=int(np.ceil(np.sqrt(len(images)))), scale=scale).save(out / "grid.png")
    if not args.no_png:
        for k, image in enumerate(images):
            Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out / f"{k:05d}.png")
    guided = (labels is not None or model_config.get("label_prior")) and args.guidance != 1
    calls = evaluations(args.sampler, args.steps) * (2 if guided else 1)
    print(f"{len(images)} images ({args.sampler}, {args.steps} steps, {calls} network evaluations each) in {out}")


def run_train_classifier(args) -> None:
    from .data import DataConfig
    from .features import train_classifier

    config = DataConfig(args.data, image_size=args.image_size, class_folders=args.class_folders)
    info = train_classifier(config, args.out, epochs=args.epochs, reject_class=not args.no_reject_class)
    rejected = info["validation_corrupted_rejected"]
    print(f"classifier in {args.out}: validation accuracy {info['validation_accuracy']:.4f}"
          + ("" if rejected is None else f"; corrupted validation images rejected {rejected:.4f}"))


def run_evaluate(args) -> None:
    import dataclasses
    import json

    import numpy as np

    from .checkpoints import atomic_write_text, read_json
    from .data import DataConfig, load_images
    from .features import load_extractor
    from .metrics import evaluate_images, reference_features

    if (args.run is None) == (args.images is None):
        raise ValueError("give either --run (to sample from) or --images (to evaluate as they are)")
    if args.images is not None:
        given = ["--" + dest.replace("_", "-") for dest, default in args.sampling_defaults.items()
                 if getattr(args, dest) != default]
        if given:
            raise ValueError(f"{', '.join(given)} set how a --run is sampled; --images are evaluated as they are, "
                             "so leave them out")
    extractor = load_extractor(args.extractor, classifier=args.classifier, inception_weights=args.inception_weights)
    # The classifier takes its own image size and channels; the Inception any size, resized to 299.
    config = getattr(extractor, "config", None)
    size, channels = (config.image_size, str(config.channels)) if config else ((None, None), "auto")
    if args.run is not None:
        from .training import classes_in_turn, load_run, sample_images

        denoiser, model_config = load_run(args.run)
        requested = classes_in_turn(model_config, args.n)  # so that a class-conditional run's accuracy is measured
        images = sample_images(denoiser, model_config, args.n, sampler=args.sampler, steps=args.steps, seed=args.seed,
                               labels=requested, guidance=args.guidance, **_walk_options(args))
        run_data = DataConfig(**read_json(args.run / "config.json")["train"]["data"])
    else:
        loaded = load_images(DataConfig(args.images, image_size=size[0], channels=channels))
        images, run_data, requested = loaded.uint8(np.arange(len(loaded))).permute(0, 2, 3, 1).numpy(), None, None
    if args.reference:
        reference_config = DataConfig(args.reference, image_size=size[0], channels=channels)
    elif run_data is not None:
        reference_config = dataclasses.replace(run_data, flip=False, validation_fraction=0.0)
    else:
        raise ValueError("--images needs --reference (the data to compare with)")
    reference = reference_features(extractor, reference_config, args.cache)
    scores = evaluate_images(images, reference, extractor, requested=requested, kid_subset_size=args.kid_subset_size)
    for name, value in scores.items():
        print(f"  {name:14s} {value:.5g}" if isinstance(value, float) else f"  {name:14s} {value}")
    out = args.out or (args.run / f"metrics-{args.sampler}-{args.steps}.json" if args.run else None)
    if out is not None:
        atomic_write_text(out, json.dumps({**scores, "extractor": extractor.key, "reference": reference_config.source,
                                           "sampler": args.sampler if args.run else None,
                                           "steps": args.steps if args.run else None}, indent=2) + "\n")
        print(f"written to {out}")


SHOWS = ("grid", "forward", "trajectory", "steps", "interpolation", "evolution", "curves", "restore", "inpaint")
MASKS = ("left-half", "right-half", "top-half", "bottom-half", "centre")


def _mask(spec: str, size: tuple[int, int]):
    import numpy as np
    from PIL import Image

    h, w = size
    mask = np.zeros((h, w), np.float32)
    boxes = {"left-half": (slice(None), slice(0, w // 2)), "right-half": (slice(None), slice(w // 2, None)),
             "top-half": (slice(0, h // 2), slice(None)), "bottom-half": (slice(h // 2, None), slice(None)),
             "centre": (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))}
    if spec in boxes:
        mask[boxes[spec]] = 1
        return mask
    if not Path(spec).is_file():
        raise ValueError(f"--mask must be one of {', '.join(MASKS)} or an image file; got {spec!r}")
    with Image.open(spec) as picture:
        return (np.asarray(picture.convert("L").resize((w, h), Image.NEAREST)) > 127).astype(np.float32)


def run_show(args) -> None:
    import dataclasses

    import numpy as np

    from . import viz
    from .checkpoints import read_json
    from .data import DataConfig, load_images
    from .training import load_run

    out = args.out or args.run / f"show-{args.kind}.{'gif' if args.kind == 'evolution' else 'png'}"
    if args.kind == "evolution":
        print(viz.training_gif(args.run, out))
        return
    if args.kind == "curves":
        print(viz.curves(args.run, out))
        return
    denoiser, model_config = load_run(args.run)

    def inputs(n):
        data = DataConfig(**read_json(args.run / "config.json")["train"]["data"])
        size = model_config["image_size"][0]
        config = dataclasses.replace(data, flip=False, validation_fraction=0.0) if args.input is None else \
            DataConfig(args.input, image_size=size, channels=str(model_config["channels"]))
        loaded = load_images(config, progress=False)
        picks = np.linspace(0, len(loaded) - 1, n).round().astype(int)  # spread over the set
        return loaded.uint8(picks).permute(0, 2, 3, 1).numpy()

    if args.kind == "grid":
        picture = viz.sample_grid(denoiser, model_config, args.n or 64, seed=args.seed, label=args.label,
                                  guidance=args.guidance, steps=args.steps or 50, sampler=args.sampler)
    elif args.kind == "forward":
        times = [float(t) for t in args.times.split(",")]
        x = viz._normalisation(model_config).to_model(torch_from(inputs(args.n or 4)))
        picture = viz.forward_strip(denoiser.schedule, x, times, seed=args.seed)
    elif args.kind == "trajectory":
        picture = viz.denoising_trajectory(denoiser, model_config, n=args.n or 3, steps=args.steps or 10, seed=args.seed)
    elif args.kind == "steps":
        counts = tuple(int(k) for k in args.step_counts.split(","))
        picture = viz.step_comparison(denoiser, model_config, counts, n=args.n or 8, seed=args.seed, sampler=args.sampler)
    elif args.kind == "interpolation":
        picture = viz.interpolation(denoiser, model_config, seeds=(args.seed, args.seed2), frames=args.frames, steps=args.steps or 20)
    elif args.kind == "restore":
        picture = viz.restoration(denoiser, model_config, inputs(args.n or 4), strength=args.strength,
                                  variations=args.variations, steps=args.steps or 50, sampler=args.sampler, seed=args.seed)
    else:
        picture = viz.inpainting(denoiser, model_config, inputs(args.n or 4), _mask(args.mask, model_config["image_size"]),
                                 steps=args.steps or 50, resample=args.resample, variations=args.variations, seed=args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(out)


def torch_from(images):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2)


def run_demo(args) -> None:
    from .config import apply_overrides
    from .data import load_builtin, to_model_range
    from .presets import preset
    from .training import load_run, sample_images, train
    from .viz import denoising_trajectory, forward_strip, image_grid

    start = time.perf_counter()
    config = apply_overrides(preset("mnist"), {"steps": None, "minutes": args.minutes, "seed": args.seed,
                                              "checkpoint_every": 250, "preview_every": 250})
    train(config, args.out)
    denoiser, model_config = load_run(args.out)
    written = {}

    # 20 DDPM steps: on a briefly trained model the stochastic walk beats the ODE solvers (docs/samplers.md).
    # Each sample's cluster is drawn by its share of the data (the preset trains on 50 clusters).
    images = sample_images(denoiser, model_config, 64, sampler="ddpm", steps=20, seed=args.seed)
    written["samples (DDPM, 20 steps)"] = args.out / "demo_samples.png"
    image_grid(images, columns=8, scale=2).save(written["samples (DDPM, 20 steps)"])

    x = to_model_range(load_builtin("mnist-5k")[0])
    spread = x[:: len(x) // 4][:4]  # the subset is sorted by label: four different digits
    written["forward process"] = args.out / "demo_forward_process.png"
    forward_strip(denoiser.schedule, spread, [0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0], seed=args.seed).save(
        written["forward process"]
    )

    written["denoising trajectory"] = args.out / "demo_trajectory.png"
    denoising_trajectory(denoiser, model_config, n=3, steps=10, seed=args.seed).save(written["denoising trajectory"])

    print(f"demo done in {(time.perf_counter() - start) / 60:.1f} minutes")
    for what, path in written.items():
        print(f"  {what:26s} {path}")


def main(argv=None) -> int:
    from .training import TrainingError

    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"pixel-diffusion {args.command}: error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"pixel-diffusion {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        print(f"pixel-diffusion {args.command}: interrupted{': ' + str(error) if str(error) else ''}", file=sys.stderr)
        return 130
    return 0
