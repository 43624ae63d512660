"""Diffusers pipeline folders: a UNet2DModel with its DDPM or DDIM scheduler read as a model of
this toolkit, and a model of ours written as a folder that DDPMPipeline and DDIMPipeline load.

    FOLDER/model_index.json                               (nested layout, save_pretrained of a pipeline)
    FOLDER/unet/config.json, diffusion_pytorch_model.safetensors (or .bin)
    FOLDER/scheduler/scheduler_config.json
    FOLDER/config.json, diffusion_pytorch_model.*, scheduler_config.json   (the older flat layout)

diffusers is never imported: its folders are JSON and safetensors, and a `.bin` is read with
torch's weights-only unpickler, which refuses anything but tensors. The U-Net of `networks/unet.py`
is UNet2DModel's architecture when configured as `unet_config` says; what it cannot express (a
block type, learned variance, a Fourier time embedding) is refused with the field and its value.
"""

from __future__ import annotations

import math
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import checkpoints
from .checkpoints import CheckpointError
from .networks import UNetConfig, config_to_dict
from .schedules import DiscreteSchedule, make_schedule

Tensor = torch.Tensor

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
OUR_SPEC = "pixel_diffusion_model.json"  # the full model description, in folders exported from here
DIFFUSERS_VERSION = "0.27.0"  # written as _diffusers_version (the folders load in diffusers 0.42, tested)
PREDICTIONS = {"epsilon": "noise", "v_prediction": "velocity", "sample": "image"}
SCHEDULE_NAMES = {"linear": "linear", "scaled_linear": "scaled-linear"}  # theirs -> ours, with start and end

# Their parameter names -> ours. diffusers upsamples at the end of up block k, we at the start of
# up level k + 1; the old attention names (query, key, value, proj_attn) are renamed as diffusers does.
_THEIRS_TO_OURS = [
    (r"^conv_in\.", "stem."), (r"^time_embedding\.", "embedding."), (r"^class_embedding\.", "label_embedding."),
    (r"^conv_norm_out\.", "head.0."), (r"^conv_out\.", "head.2."),
    (r"^down_blocks\.(\d+)\.resnets\.(\d+)\.", r"down.\1.\2.block."),
    (r"^down_blocks\.(\d+)\.attentions\.(\d+)\.", r"down.\1.\2.attention."),
    (r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"downsample.\1.op."),
    (r"^mid_block\.resnets\.(\d+)\.", lambda m: f"middle.{m.group(1)}.block."),
    (r"^mid_block\.attentions\.0\.", "middle.0.attention."),
    (r"^up_blocks\.(\d+)\.resnets\.(\d+)\.", r"up.\1.\2.block."),
    (r"^up_blocks\.(\d+)\.attentions\.(\d+)\.", r"up.\1.\2.attention."),
    (r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.", lambda m: f"upsample.{int(m.group(1)) + 1}.conv."),
]
_THEIR_LEAVES = [(".time_emb_proj.", ".emb_proj."), (".conv_shortcut.", ".shortcut."), (".group_norm.", ".norm."),
                 (".to_out.0.", ".to_out."), (".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."),
                 (".proj_attn.", ".to_out.")]
_OURS_TO_THEIRS = [
    (r"^stem\.", "conv_in."), (r"^embedding\.", "time_embedding."), (r"^label_embedding\.", "class_embedding."),
    (r"^head\.0\.", "conv_norm_out."), (r"^head\.2\.", "conv_out."),
    (r"^down\.(\d+)\.(\d+)\.block\.", r"down_blocks.\1.resnets.\2."),
    (r"^down\.(\d+)\.(\d+)\.attention\.", r"down_blocks.\1.attentions.\2."),
    (r"^downsample\.(\d+)\.op\.", r"down_blocks.\1.downsamplers.0.conv."),
    (r"^middle\.(\d+)\.block\.", r"mid_block.resnets.\1."), (r"^middle\.0\.attention\.", "mid_block.attentions.0."),
    (r"^up\.(\d+)\.(\d+)\.block\.", r"up_blocks.\1.resnets.\2."),
    (r"^up\.(\d+)\.(\d+)\.attention\.", r"up_blocks.\1.attentions.\2."),
    (r"^upsample\.(\d+)\.conv\.", lambda m: f"up_blocks.{int(m.group(1)) - 1}.upsamplers.0.conv."),
]
_OUR_LEAVES = [(".emb_proj.", ".time_emb_proj."), (".shortcut.", ".conv_shortcut."), (".norm.", ".group_norm."),
               (".to_out.", ".to_out.0.")]


def _rename(key: str, rules, leaves) -> str:
    for pattern, replacement in rules:
        key, found = re.subn(pattern, replacement, key)
        if found:
            break
    for old, new in leaves:
        key = key.replace(old, new)
    return key


def their_name_to_ours(key: str) -> str:
    return _rename(key, _THEIRS_TO_OURS, _THEIR_LEAVES)


def our_name_to_theirs(key: str) -> str:
    return _rename(key, _OURS_TO_THEIRS, _OUR_LEAVES)


# ---- the folder ---------------------------------------------------------------------------------


def _layout(folder: Path) -> tuple[Path, Path] | None:
    """(the UNet's folder, the scheduler's config file) of a pipeline folder, or None."""
    folder = Path(folder)
    if (folder / "unet" / "config.json").is_file():
        return folder / "unet", folder / "scheduler" / "scheduler_config.json"
    if (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file():
        config = checkpoints.read_json(folder / "config.json")
        if isinstance(config, dict) and "_class_name" in config:
            return folder, folder / "scheduler_config.json"
    return None


def is_pipeline_folder(folder: Path) -> bool:
    """Whether `folder` is a diffusers pipeline folder (nested or flat) rather than a run."""
    return _layout(folder) is not None


def _read_weights(unet_dir: Path) -> dict[str, Tensor]:
    safe, pickled = (unet_dir / name for name in WEIGHT_FILES)
    if safe.is_file():
        return checkpoints.load_weights(safe)
    if not pickled.is_file():
        raise CheckpointError(f"{unet_dir} holds neither {WEIGHT_FILES[0]} nor {WEIGHT_FILES[1]}")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols is not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(pickled, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # what the weights-only unpickler says of anything but tensors
        raise CheckpointError(f"{pickled} holds more than tensors ({str(error).splitlines()[0][:80]}); it is refused "
                              "because loading it could run code; save the model with safetensors") from None
    except (RuntimeError, EOFError, ValueError, AttributeError) as error:  # truncated or not a torch file
        raise CheckpointError(f"{pickled} cannot be read ({str(error).splitlines()[0][:80]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{pickled} is not a dictionary of tensors")
    return state


def read_pipeline(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    """A pipeline folder as (the model description's JSON form, for runs.ModelSpec.from_dict, and
    the state dict of our network). A folder exported from here keeps its own full description."""
    layout = _layout(folder)
    if layout is None:
        raise CheckpointError(f"{folder} is not a diffusers pipeline folder (no unet/config.json nor a flat "
                              "config.json with scheduler_config.json)")
    unet_dir, scheduler_file = layout
    unet = checkpoints.read_json(unet_dir / "config.json")
    scheduler = checkpoints.read_json(scheduler_file)
    network, flip, classes = _checked(unet_config, unet, str(unet_dir / "config.json"))
    spec = {"network": config_to_dict(network), "noise_input": "timestep",
            "normalisation": {"kind": "minus-one-one"}, "channels": network.in_channels,
            "image_size": _image_size(unet.get("sample_size"), str(unet_dir / "config.json")),
            "num_classes": classes, **_checked(scheduler_fields, scheduler, str(scheduler_file))}
    if (Path(folder) / OUR_SPEC).is_file():
        spec = checkpoints.read_json(Path(folder) / OUR_SPEC)
    state = {their_name_to_ours(k): v for k, v in _read_weights(unet_dir).items()}
    if not flip and "embedding.linear_1.weight" in state:  # their features are [sin, cos], ours [cos, sin]
        weight = state["embedding.linear_1.weight"]
        state["embedding.linear_1.weight"] = torch.cat(weight.chunk(2, dim=1)[::-1], dim=1)
    wanted = (spec.get("num_classes") or 0) + 1
    table = state.get("label_embedding.weight")
    if table is not None and table.shape[0] < wanted:  # a "no label" row for a model trained without one
        state["label_embedding.weight"] = torch.cat([table, table.new_zeros(wanted - table.shape[0], table.shape[1])])
    return spec, state


def _checked(read, config: dict, where: str):
    """`read(config, where)`, with a field of the wrong type said in one line."""
    try:
        return read(config, where)
    except CheckpointError:
        raise
    except (TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{where}: a field has a value of the wrong kind ({str(error).splitlines()[0][:120]})") from None


def _image_size(value, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return list(value)
    raise CheckpointError(f"{where}: field 'sample_size' must be a positive integer or [height, width]; got {value!r}")


# ---- their configs -> ours ------------------------------------------------------------------------


def _refuse(where: str, name: str, value, expected: str) -> CheckpointError:
    return CheckpointError(f"{where}: {name} = {value!r} cannot be mapped onto this toolkit's models ({expected})")


def _frequencies(width: int, shift: float) -> tuple[float, float]:
    """(min, max) angular frequencies of diffusers' Timesteps(width, downscale_freq_shift=shift):
    w_k = 10000^(-k / (half - shift)), k = 0 .. half - 1."""
    half = width // 2
    return 10000.0 ** (-(half - 1) / (half - shift)), 1.0


def unet_config(unet: dict, where: str = "unet config") -> tuple[UNetConfig, bool, int | None]:
    """UNet2DModel's config (missing fields at diffusers' defaults) as (our UNetConfig,
    flip_sin_to_cos, number of classes)."""
    if not isinstance(unet, dict):
        raise CheckpointError(f"{where} must be a JSON object; got {type(unet).__name__}")
    for name, value, expected in (
        ("_class_name", "UNet2DModel", "only UNet2DModel is a pixel-space U-Net of this kind"),
        ("center_input_sample", False, "inputs are taken as they are"), ("time_embedding_type", "positional",
         "only the sinusoidal timestep embedding maps"), ("mid_block_scale_factor", 1, "expected 1"),
        ("downsample_type", "conv", "expected conv"), ("upsample_type", "conv", "expected conv"),
        ("act_fn", "silu", "expected silu"), ("resnet_time_scale_shift", "default", "expected default"),
        ("class_embed_type", None, "only a table of class embeddings (num_class_embeds) maps"),
        ("mid_block_type", "UNetMidBlock2D", "expected UNetMidBlock2D or null"),
    ):
        given = unet.get(name, value)
        if given != value and not (name == "mid_block_type" and given is None):
            raise _refuse(where, name, given, expected)
    widths = unet.get("block_out_channels", [224, 448, 672, 896])
    down = unet.get("down_block_types", ["DownBlock2D"] + ["AttnDownBlock2D"] * 3)
    up = unet.get("up_block_types", ["AttnUpBlock2D"] * 3 + ["UpBlock2D"])
    if not isinstance(widths, list) or not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise _refuse(where, "block_out_channels", widths, "a list of positive widths")
    for name, types, allowed in (("down_block_types", down, ("DownBlock2D", "AttnDownBlock2D")),
                                 ("up_block_types", up, ("UpBlock2D", "AttnUpBlock2D"))):
        if not isinstance(types, list):
            raise _refuse(where, name, types, "a list of block types")
        bad = [t for t in types if t not in allowed]
        if bad or len(types) != len(widths):
            raise _refuse(where, name, bad[0] if bad else types, f"{len(widths)} of {' or '.join(allowed)}")
    attention_levels = tuple(i for i, kind in enumerate(down) if kind == "AttnDownBlock2D")
    mirrored = [("Attn" if len(up) - 1 - i in attention_levels else "") + "UpBlock2D" for i in range(len(up))]
    if up != mirrored:
        raise _refuse(where, "up_block_types", up, f"the down blocks mirrored: {mirrored}")
    channels, out = unet.get("in_channels", 3), unet.get("out_channels", 3)
    if out != channels:
        why = "learned variance is not supported" if out == 2 * channels else "expected out_channels = in_channels"
        raise _refuse(where, "out_channels", out, why)
    padding = unet.get("downsample_padding", 1)
    if padding not in (0, 1):
        raise _refuse(where, "downsample_padding", padding, "expected 0 or 1")
    head = unet.get("attention_head_dim", 8)
    mid = unet.get("mid_block_type", "UNetMidBlock2D") is not None
    with_attention = [widths[i] for i in attention_levels] + ([widths[-1]] if mid and unet.get("add_attention", True) else [])
    if head is not None and any(w % head for w in with_attention):
        raise _refuse(where, "attention_head_dim", head, f"it must divide every width with attention, {with_attention}")
    groups = unet.get("norm_num_groups", 32)
    if unet.get("attn_norm_num_groups") not in (None, groups):
        raise _refuse(where, "attn_norm_num_groups", unet["attn_norm_num_groups"], f"expected null or {groups}")
    shift = unet.get("freq_shift", 0)
    if not isinstance(shift, (int, float)) or not shift < widths[0] // 2:
        raise _refuse(where, "freq_shift", shift, f"expected a number below {widths[0] // 2}")
    config = UNetConfig(
        in_channels=channels, widths=tuple(widths), blocks_per_level=unet.get("layers_per_block", 2),
        attention_levels=attention_levels, head_channels=max(widths) if head is None else head,
        mid_blocks=2 if mid else 0, mid_attention=bool(unet.get("add_attention", True)), groups=groups,
        norm_eps=float(unet.get("norm_eps", 1e-5)), dropout=float(unet.get("dropout", 0.0)),
        downsample="conv" if padding == 1 else "conv-asym", upsample="nearest",
        embedding_frequencies=_frequencies(widths[0], shift),
        embedding_mlp_dim=unet.get("time_embedding_dim") or 4 * widths[0], num_classes=unet.get("num_class_embeds"))
    return config, bool(unet.get("flip_sin_to_cos", True)), unet.get("num_class_embeds")


def scheduler_fields(scheduler: dict, where: str = "scheduler config") -> dict:
    """A DDPMScheduler's or DDIMScheduler's config as our schedule, its options, the prediction
    and whether samples are clipped to the data range."""
    if not isinstance(scheduler, dict):
        raise CheckpointError(f"{where} must be a JSON object; got {type(scheduler).__name__}")
    kind = scheduler.get("_class_name", "DDPMScheduler")
    if kind not in ("DDPMScheduler", "DDIMScheduler"):
        raise _refuse(where, "_class_name", kind, "expected DDPMScheduler or DDIMScheduler")
    for name, value, expected in (("thresholding", False, "dynamic thresholding is not supported"),
                                  ("rescale_betas_zero_snr", False, "zero terminal SNR is not supported")):
        if scheduler.get(name, value) != value:
            raise _refuse(where, name, scheduler[name], expected)
    if scheduler.get("variance_type", "fixed_small") in ("learned", "learned_range"):
        raise _refuse(where, "variance_type", scheduler["variance_type"], "learned variance is not supported")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise _refuse(where, "prediction_type", prediction, f"expected one of {', '.join(PREDICTIONS)}")
    clip = bool(scheduler.get("clip_sample", True))
    if clip and scheduler.get("clip_sample_range", 1.0) != 1.0:
        raise _refuse(where, "clip_sample_range", scheduler["clip_sample_range"], "samples clip to [-1, 1]")
    steps = scheduler.get("num_train_timesteps", 1000)
    start, end = scheduler.get("beta_start", 0.0001), scheduler.get("beta_end", 0.02)
    name = scheduler.get("beta_schedule", "linear")
    if scheduler.get("trained_betas") is not None:
        schedule, options = "betas", {"values": [float(b) for b in scheduler["trained_betas"]]}
    elif name == "sigmoid":  # GeoDiff's: sigmoid(-6 .. 6) scaled into [beta_start, beta_end]
        values = torch.sigmoid(torch.linspace(-6, 6, steps, dtype=torch.float64)) * (end - start) + start
        schedule, options = "betas", {"values": values.tolist()}
    elif name == "squaredcos_cap_v2":
        schedule, options = "cosine", {"num_steps": steps}
    elif name in SCHEDULE_NAMES:
        schedule, options = SCHEDULE_NAMES[name], {"num_steps": steps, "beta_start": start, "beta_end": end}
    else:
        raise _refuse(where, "beta_schedule", name, "expected linear, scaled_linear, squaredcos_cap_v2 or sigmoid")
    return {"schedule": schedule, "schedule_options": options, "prediction": PREDICTIONS[prediction], "clip": clip}


# ---- ours -> their configs ------------------------------------------------------------------------


def _cannot(name: str, value, why: str) -> ValueError:
    return ValueError(f"this model cannot be written as a diffusers UNet2DModel: {name} = {value!r} ({why})")


def _their_shift(config: UNetConfig) -> int:
    """freq_shift of the sinusoid our config uses: 0 or 1 (DDPM's timestep embeddings), else refused."""
    width = config.embedding_dim or config.widths[0]
    if width != config.widths[0]:
        raise _cannot("embedding_dim", width, f"UNet2DModel embeds timesteps with {config.widths[0]} features")
    given = config.embedding_frequencies
    for shift in (0, 1):
        if given is None and shift == 0 or given is not None and all(
                math.isclose(a, b, rel_tol=1e-6) for a, b in zip(given, _frequencies(width, shift))):
            return shift
    raise _cannot("embedding_frequencies", given, "UNet2DModel's timestep sinusoids have freq_shift 0 or 1")


def unet2d_config(config, spec: dict) -> dict:
    """UNet2DModel's config for our network, or a ValueError saying what it cannot express."""
    if not isinstance(config, UNetConfig):
        raise _cannot("network kind", getattr(config, "kind", type(config).__name__), "only the U-Net has that form")
    for name, allowed, why in (
        ("patch_size", (1,), "UNet2DModel sees pixels, not patches"), ("block", ("resnet",), "ResNet blocks only"),
        ("norm", ("group",), "GroupNorm only"), ("activation", ("silu",), "SiLU only"),
        ("attention", ("full",), "softmax attention only"), ("downsample", ("conv", "conv-asym"), "strided 3x3 convs"),
        ("upsample", ("nearest",), "nearest neighbours and a 3x3 conv"), ("down_after_last", (False,), "no"),
        ("skip_stem_and_downsamples", (True,), "skips from the stem and downsamplers"),
        ("up_block_width", ("level",), "up blocks at their level's width"), ("noise_entry", ("add",), "added"),
        ("stem_kernel", (3,), "3x3"), ("head_norm", (True,), "norm and SiLU before the head"),
        ("head_kernel", (3,), "3x3"), ("mid_width", (None, config.widths[-1]), "the last width"),
        ("mid_blocks", (0, 2), "two blocks or none"), ("out_channels", (None, config.in_channels), "as many as in"),
    ):
        if getattr(config, name) not in allowed:
            raise _cannot(name, getattr(config, name), why)
    with_attention = [config.widths[i] for i in config.attention_levels]
    with_attention += [config.widths[-1]] if config.mid_blocks and config.mid_attention else []
    head = None if all(w <= config.head_channels for w in with_attention) else config.head_channels
    if head is not None and any(w % head for w in with_attention):
        raise _cannot("head_channels", head, f"it must divide every width with attention, {with_attention}")
    for name, value, wanted in (("normalisation", spec["normalisation"]["kind"], "minus-one-one"),
                                ("noise_input", spec["noise_input"], "timestep")):
        if value != wanted:
            raise _cannot(name, value, f"diffusers pipelines take {wanted}")
    size = spec["image_size"]
    levels = range(len(config.widths))
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": size[0] if size[0] == size[1] else list(size), "in_channels": config.in_channels,
        "out_channels": config.in_channels, "center_input_sample": False, "time_embedding_type": "positional",
        "time_embedding_dim": config.embedding_mlp_dim or 4 * config.widths[0], "freq_shift": _their_shift(config),
        "flip_sin_to_cos": True, "block_out_channels": list(config.widths), "layers_per_block": config.blocks_per_level,
        "down_block_types": [("Attn" if i in config.attention_levels else "") + "DownBlock2D" for i in levels],
        "up_block_types": [("Attn" if i in config.attention_levels else "") + "UpBlock2D" for i in reversed(levels)],
        "mid_block_type": "UNetMidBlock2D" if config.mid_blocks else None, "mid_block_scale_factor": 1,
        "add_attention": bool(config.mid_attention), "downsample_padding": 1 if config.downsample == "conv" else 0,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": config.dropout, "act_fn": "silu",
        "attention_head_dim": head, "norm_num_groups": config.groups, "attn_norm_num_groups": None,
        "norm_eps": config.norm_eps, "resnet_time_scale_shift": "default", "class_embed_type": None,
        "num_class_embeds": None if config.num_classes is None else config.num_classes + 1,
    }


def scheduler_config(spec: dict) -> dict:
    """DDPMScheduler's config for our schedule and prediction (DDIMPipeline converts it)."""
    schedule = make_schedule(spec["schedule"], **spec["schedule_options"])
    if not isinstance(schedule, DiscreteSchedule):
        raise _cannot("schedule", spec["schedule"], "diffusers' DDPM and DDIM schedulers take a table of betas")
    options = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "trained_betas": None}
    name, given = spec["schedule"], spec["schedule_options"]
    if name in ("linear", "scaled-linear") and "shift" not in given:
        defaults = {"linear": (0.0001, 0.02), "scaled-linear": (0.00085, 0.012)}[name]
        options.update(beta_schedule=name.replace("-", "_"), beta_start=given.get("beta_start", defaults[0]),
                       beta_end=given.get("beta_end", defaults[1]))
    elif name == "cosine" and set(given) <= {"num_steps"}:
        options["beta_schedule"] = "squaredcos_cap_v2"
    else:
        options["trained_betas"] = schedule.betas.tolist()
    theirs = {ours: their for their, ours in PREDICTIONS.items()}
    if spec["prediction"] not in theirs:
        raise _cannot("prediction", spec["prediction"], "diffusers' DDPM and DDIM schedulers take noise, velocity or image")
    return {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": schedule.num_steps, **options, "variance_type": "fixed_small",
            "clip_sample": bool(spec.get("clip", True)), "clip_sample_range": 1.0,
            "prediction_type": theirs[spec["prediction"]], "thresholding": False, "timestep_spacing": "leading",
            "steps_offset": 0}


def write_pipeline(out: Path, spec: dict, config, state: dict[str, Tensor], card: str) -> None:
    """Write a pipeline folder (nested layout) for our model: all of it or, on any error, nothing."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists; choose a new --out folder")
    unet, scheduler = unet2d_config(config, spec), scheduler_config(spec)  # refuse before writing anything
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise ValueError(f"cannot write into {out.parent} ({error.strerror or error})") from None
    try:
        checkpoints.write_json(staging / "model_index.json", {
            "_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]})
        checkpoints.write_json(staging / "unet" / "config.json", unet)
        save_file({our_name_to_theirs(k): v.detach().cpu().contiguous() for k, v in state.items()},
                  str(staging / "unet" / WEIGHT_FILES[0]))
        checkpoints.write_json(staging / "scheduler" / "scheduler_config.json", scheduler)
        checkpoints.write_json(staging / OUR_SPEC, spec)
        checkpoints.atomic_write_text(staging / "README.md", card)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
