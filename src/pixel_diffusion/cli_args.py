"""The command line's argument types and the options several commands share, defined once."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, never a traceback
        self.exit(2, f"{self.prog}: error: {message}\n")


LARGEST = 2**31 - 1  # counts and labels; anything larger is a typo, refused rather than attempted


def _integer(text: str, low: int, high: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1, LARGEST, "a positive integer")


def seed_number(text: str) -> int:
    return _integer(text, 0, 2**63 - 1, "a seed from 0 to 2^63 - 1")


def class_label(text: str) -> int:
    return _integer(text, 0, LARGEST, "a class number from 0")


def port_number(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return int(text)


def _number(text: str, accepts, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")  # refused below, with the same message
    if not accepts(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _number(text, lambda v: 0 < v < math.inf, "a positive number")


def sigma_level(text: str) -> float:
    return _number(text, lambda v: v > 0, "a positive noise level (inf: the schedule's t = 1)")


def finite_float(text: str) -> float:
    return _number(text, math.isfinite, "a finite number")


def bounded_int(text: str) -> int:
    return _integer(text, -LARGEST, LARGEST, "an integer")


def fraction(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def positive_fraction(text: str) -> float:
    return _number(text, lambda v: 0 < v <= 1, "a number in (0, 1]")


def guidance_scale(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 20, "a guidance scale in [0, 20] (1: none)")


def checkpoint_name(text: str) -> str:
    if text in ("latest", "best") or text.removeprefix("step-").isdigit():
        return text
    raise argparse.ArgumentTypeError(f"expected latest, best or a step number, got {text!r}")


def numbers(kind):
    def parse(text: str):
        try:
            values = tuple(kind(part) for part in text.split(","))
            if not all(math.isfinite(v) for v in values):
                raise ValueError(text)
            return values
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,2,5; got {text!r}") from None
    return parse


# The options that several commands share, defined once: (flags, argparse keywords).
OPTIONS = {
    "run": (("--run",), dict(type=Path, required=True, help="run directory written by train, a checkpoint folder, "
                                                       "or a diffusers pipeline folder")),
    "checkpoint": (("--checkpoint",), dict(type=checkpoint_name, default="latest",
                                           help="latest, best (kept by KID during training) or a step number (default: latest)")),
    "weights": (("--weights",), dict(help="which weights: ema, model, or an EMA profile the checkpoint holds such as "
                                     "ema-0.100 (default: the run's own, its preset's measured best)")),
    "device": (("--device",), dict(default="auto", help="cpu, cuda, cuda:1, ... (default: auto, a GPU when there is one)")),
    "seed": (("--seed",), dict(type=seed_number, default=0, help="seed; image k depends only on (seed, k) (default: 0)")),
    "no_progress": (("--no-progress",), dict(action="store_true", help="no progress bars (default: shown)")),
    "sampler": (("--sampler",), dict(help="sampler (default: the run's own walk's, {default} for every preset); one of {samplers}")),
    "steps": (("--steps",), dict(type=positive_int, help="sampling steps (default: the run's own walk's, {default} for every preset)")),
    "guidance": (("--guidance",), dict(type=guidance_scale, help="classifier-free guidance scale for runs on labels or "
                                       "clusters, 1 for none (default: the run's own, its preset's measured best)")),
    "report_to": (("--report-to",), dict(nargs="+", choices=("tensorboard", "wandb", "mlflow", "none"), metavar="TRACKER",
                                          help="also log to these experiment trackers: tensorboard, wandb, mlflow, or none "
                                          "(default: the config's report_to, none; metrics.jsonl always)")),
    "label": (("--label",), dict(type=class_label, help="class to draw, for runs trained with labels or clusters (default: every class)")),
}


def add_options(command, *names: str, **changes) -> None:
    """Add the shared options `names` to a command; `changes` replaces keywords of one option
    (`seed={"default": None}`)."""
    from .samplers import DEFAULT_SAMPLER, DEFAULT_STEPS, SAMPLERS

    said = {"sampler": DEFAULT_SAMPLER, "steps": DEFAULT_STEPS}  # the library's Walk(), beside the registry
    for name in names:
        flags, keywords = OPTIONS[name]
        keywords = {**keywords, **changes.get(name, {})}
        if "help" in keywords:
            keywords["help"] = (keywords["help"].replace("{samplers}", ", ".join(SAMPLERS))
                                .replace("{default}", str(said.get(name, keywords.get("default")))))
        command.add_argument(*flags, **keywords)


def add_walk_arguments(command) -> None:
    """The sampling walk's options, shared by sample and evaluate."""
    from .samplers import SAMPLERS, samplers_with_option
    from .schedules import SPACINGS

    with_eta = samplers_with_option("eta")
    defaults = {}
    for name in with_eta:
        defaults.setdefault(SAMPLERS[name].options["eta"], []).append(name)
    said = "; ".join(f"{value:g} for {', '.join(names)}" for value, names in defaults.items())
    own = {}
    for name, entry in SAMPLERS.items():
        own.setdefault(entry.spacing, []).append(name)
    said_spacing = "; ".join(f"{spacing} for {', '.join(names)}" for spacing, names in own.items())
    command.add_argument("--spacing", help=f"time spacing, one of {', '.join(SPACINGS)} (default: the sampler's own, {said_spacing})")
    command.add_argument("--sigma-max", type=sigma_level,
                         help="karras and log-snr spacings: start at this EDM noise level sigma/alpha (default: 80; inf for the schedule's t = 1)")
    command.add_argument("--sigmas", type=positive_float, nargs="+", metavar="SIGMA",
                         help="the noise level sigma/alpha of each step, decreasing, instead of a spacing (a consistency "
                         "model's: 80 0.821; --steps defaults to their number)")
    command.add_argument("--eta", type=fraction, help=f"noise per step in [0, 1] for {', '.join(with_eta)} (default: {said})")
    command.add_argument("--no-clip", action="store_true",
                         help="leave the image estimate unclipped at each step (default: clipped to the data range; docs/samplers.md measures both)")
    for name, (kind, takers) in sampler_options().items():
        said = ", ".join(f"{n} {SAMPLERS[n].options[name]}" for n in takers)
        command.add_argument(f"--{name.replace('_', '-')}", type=OPTION_TYPES[kind], dest=f"walk_{name}", metavar=name.upper(),
                             help=f"{name.replace('_', ' ')} of the {', '.join(takers)} samplers (default: {said})")


def sampler_options() -> dict[str, tuple[type, list[str]]]:
    """The walks' own numeric and yes/no options, read from the sampler registry (eta and
    clip have flags of their own): name -> (type, the samplers taking it)."""
    from .samplers import SAMPLERS

    found: dict[str, tuple[type, list[str]]] = {}
    for sampler, entry in SAMPLERS.items():
        for name, default in entry.options.items():
            if name not in ("eta", "clip") and type(default) in (int, float, bool):
                found.setdefault(name, (type(default), []))[1].append(sampler)
    return found


def yes_no(text: str) -> bool:
    if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false; got {text!r}")
    return text.lower() in ("true", "yes", "1")


OPTION_TYPES = {bool: yes_no, int: bounded_int, float: finite_float}  # a sampler option's type -> its converter


def walk_changes(args) -> dict:
    """What the walk options on the command line change of a run's own walk (`Run.walk` checks
    them all, in one line, before anything is sampled): Walk fields and the sampler's options."""
    changes = {"sampler": args.sampler, "steps": args.steps, "spacing": getattr(args, "spacing", None),
               "sigma_max": getattr(args, "sigma_max", None), "guidance": getattr(args, "guidance", None),
               "clip": False if getattr(args, "no_clip", False) else None, "eta": getattr(args, "eta", None)}
    sigmas = getattr(args, "sigmas", None)
    if sigmas:
        changes.update(sigmas=tuple(sigmas), steps=args.steps or len(sigmas))
    for name in sampler_options():
        changes[name] = getattr(args, f"walk_{name}", None)
    return changes


def device_of(name: str):
    """The torch device --device names, by the one rule of every command (`devices.pick_device`)."""
    from .devices import pick_device

    return pick_device(name)


def load_named_run(args):
    """The run that --run, --checkpoint, --weights and --device name."""
    from .runs import load_run

    return load_run(args.run, checkpoint=args.checkpoint, weights=args.weights, device=device_of(args.device))
