"""Diffusers pipeline folders: UNet2DModels of several configurations saved by diffusers itself load
here with the same network output, and sample the same images as DDPMPipeline and DDIMPipeline
with the same noise; a run trained here, exported, samples the same images in DDIMPipeline."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixel_diffusion.checkpoints import CheckpointError
from pixel_diffusion.cli import main
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import export_diffusers, load_run
from pixel_diffusion.samplers import SAMPLERS
from pixel_diffusion.schedules import sampling_times
from pixel_diffusion.training import train

diffusers = pytest.importorskip("diffusers")

# name: (UNet2DModel arguments, DDPMScheduler arguments)
CASES = {
    "attention-grayscale": (
        dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=1,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
             norm_num_groups=8, attention_head_dim=16),
        dict(beta_schedule="linear")),
    "original-ddpm-colour": (  # the layout of google/ddpm-cifar10-32: [sin, cos], shift 1, padding 0
        dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1,
             down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, add_attention=False,
             norm_num_groups=8, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6),
        dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")),
    "class-conditional": (
        dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=2,
             down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
             norm_num_groups=4, attention_head_dim=None, num_class_embeds=3),
        dict(beta_schedule="sigmoid", prediction_type="sample")),
}


def _unet(arguments: dict):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**arguments).eval()
    with torch.no_grad():  # random weights of the scale a trained network has, biases and norms included
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return unet


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory):
    """(case name, their unet, their scheduler, a nested pipeline folder saved by diffusers)."""
    arguments, schedule = CASES[request.param]
    unet, scheduler = _unet(arguments), diffusers.DDPMScheduler(**schedule)
    folder = tmp_path_factory.mktemp(request.param) / "pipeline"
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return request.param, unet, scheduler, folder


def _outputs_agree(run, unet, labels=None):
    x = torch.randn(3, *run.spec.shape, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([0, 437, 999])
    with torch.no_grad():
        theirs = unet(x, timesteps, class_labels=labels).sample
        ours = run.denoiser.net(x, timesteps.float(), labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_an_imported_unet_gives_diffusers_network_output(saved):
    name, unet, _, folder = saved
    run = load_run(folder)
    labels = torch.tensor([0, 2, 1]) if name == "class-conditional" else None
    _outputs_agree(run, unet, labels)
    assert run.spec.num_classes == (3 if labels is not None else None)
    assert run.spec.schedule == {"attention-grayscale": "linear", "original-ddpm-colour": "cosine",
                                 "class-conditional": "betas"}[name]


def _their_images(pipeline, steps: int, n: int = 2):
    # Our DDIM re-derives the noise from the clipped image (docs/core.md): diffusers' option for that.
    options = {"use_clipped_model_output": True} if isinstance(pipeline, diffusers.DDIMPipeline) else {}
    return torch.from_numpy(pipeline(batch_size=n, generator=torch.Generator().manual_seed(7), num_inference_steps=steps,
                                     output_type="np", **options).images)


def _their_labelled_images(unet, scheduler, steps: int, labels):
    # DDPMPipeline's loop, with the class labels the stock pipeline does not pass.
    generator = torch.Generator().manual_seed(7)
    size = unet.config.sample_size
    image = torch.randn((len(labels), unet.config.in_channels, size, size), generator=generator)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            image = scheduler.step(unet(image, t, class_labels=labels).sample, t, image, generator=generator).prev_sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def _our_images(run, sampler: str, steps: int, n: int = 2, labels=None):
    # The pipelines draw the first x_T and then each step's noise from one generator: so do we.
    generator = torch.Generator().manual_seed(7)
    x = torch.randn((n, *run.spec.shape), generator=generator)
    times = sampling_times(run.denoiser.schedule, steps, "leading")  # the schedulers' default spacing
    out = SAMPLERS[sampler](run.denoiser, x, times, labels=labels, noise=generator, clip=run.spec.data_range())
    return (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def test_imported_models_sample_what_ddpm_and_ddim_pipelines_sample(saved):
    name, unet, scheduler, folder = saved
    run = load_run(folder)
    if name == "class-conditional":
        labels = torch.tensor([2, 0])
        torch.testing.assert_close(_our_images(run, "ddpm", 20, labels=labels),
                                   _their_labelled_images(unet, scheduler, 20, labels), rtol=0, atol=1e-4)
        return
    ddpm = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    ddim = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler.from_config(scheduler.config))
    torch.testing.assert_close(_our_images(run, "ddpm", 20), _their_images(ddpm, 20), rtol=0, atol=1e-4)
    torch.testing.assert_close(_our_images(run, "ddim", 20), _their_images(ddim, 20), rtol=0, atol=1e-4)


def test_the_flat_layout_old_attention_names_and_weights_only_bin_load_alike(tmp_path):
    arguments, schedule = CASES["attention-grayscale"]
    unet = _unet(arguments)
    flat = tmp_path / "flat"
    unet.save_pretrained(flat, safe_serialization=False)  # config.json + diffusion_pytorch_model.bin
    diffusers.DDPMScheduler(**schedule).save_pretrained(flat)  # scheduler_config.json beside them
    assert (flat / "diffusion_pytorch_model.bin").is_file()
    _outputs_agree(load_run(flat), unet)

    old = tmp_path / "old-names"
    unet.save_pretrained(old)
    diffusers.DDPMScheduler(**schedule).save_pretrained(old)
    weights = load_file(old / "diffusion_pytorch_model.safetensors")
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for new, was in renames.items():
        weights = {k.replace(f".{new}.", f".{was}."): v for k, v in weights.items()}
    assert any(".query." in k for k in weights)
    save_file(weights, old / "diffusion_pytorch_model.safetensors")
    _outputs_agree(load_run(old), unet)


class Payload:
    """Unpickling this would create the marker file: the code a hostile .bin could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_bin_whose_pickle_holds_code_is_refused_without_running_it(tmp_path):
    arguments, schedule = CASES["attention-grayscale"]
    folder = tmp_path / "hostile"
    _unet(arguments).save_pretrained(folder, safe_serialization=False)
    diffusers.DDPMScheduler(**schedule).save_pretrained(folder)
    marker = tmp_path / "ran"
    with open(folder / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"conv_in.weight": Payload(marker)}, f)
    with pytest.raises(CheckpointError, match="refused because loading it could run code"):
        load_run(folder)
    assert not marker.exists()
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"PK\x03\x04 cut short")  # a truncated file: unreadable
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.bin cannot be read"):
        load_run(folder)


@pytest.mark.parametrize("where, field, value, says", [
    ("unet", "down_block_types", ["CrossAttnDownBlock2D", "DownBlock2D"], "down_block_types = 'CrossAttnDownBlock2D'"),
    ("unet", "out_channels", 2, "learned variance is not supported"),
    ("unet", "time_embedding_type", "fourier", "time_embedding_type = 'fourier'"),
    ("unet", "attention_head_dim", 24, "attention_head_dim = 24"),
    ("scheduler", "variance_type", "learned_range", "variance_type = 'learned_range'"),
    ("scheduler", "beta_schedule", "laplace", "beta_schedule = 'laplace'"),
    ("unet", "down_block_types", "DownBlock2D", "a list of block types"),  # fields of the wrong kind
    ("unet", "layers_per_block", "two", "a field has a value of the wrong kind"),
    ("scheduler", "num_train_timesteps", "many", "schedule_options.num_steps: expected an integer, got 'many'"),
])
def test_what_cannot_be_mapped_is_refused_naming_the_field(tmp_path, where, field, value, says):
    arguments, schedule = CASES["attention-grayscale"]
    folder = tmp_path / "pipeline"
    diffusers.DDPMPipeline(unet=_unet(arguments), scheduler=diffusers.DDPMScheduler(**schedule)).save_pretrained(folder)
    path = folder / where / ("config.json" if where == "unet" else "scheduler_config.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(CheckpointError) as error:
        load_run(folder)
    assert says in str(error.value) and "\n" not in str(error.value)
    assert main(["sample", "--run", str(folder), "--n", "1", "--no-progress"]) == 2


# ---- export -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory):
    """A few steps of the MNIST tutorial's recipe (ddpm-mnist, the cosine schedule), narrowed."""
    config = apply_overrides(preset("mnist-tutorial"), [
        "data.source=digits", "data.mixed_sizes_to=null", "steps=3", "batch_size=16", "progress=false",
        "preview_every=0", 'network_options={"widths": [16, 16, 32], "groups": 4}'])
    out = tmp_path_factory.mktemp("tutorial") / "run"
    train(config, out)
    return out


def test_an_exported_run_samples_in_ddim_pipeline_as_here_and_loads_back_identical(tutorial_run, tmp_path):
    run = load_run(tutorial_run)
    folder = export_diffusers(run, tmp_path / "exported")
    pipeline = diffusers.DDIMPipeline.from_pretrained(folder)
    torch.testing.assert_close(_our_images(run, "ddim", 10, n=3), _their_images(pipeline, 10, n=3), rtol=0, atol=1e-4)
    back = load_run(folder)
    ours, theirs = run.denoiser.net.state_dict(), back.denoiser.net.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert back.spec == run.spec
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\npipeline_tag: unconditional-image-generation\n")
    assert "mnist-tutorial" in card and "digits" in card


def test_export_refuses_networks_unet2dmodel_cannot_express_and_writes_nothing(tutorial_run, tmp_path, capsys):
    out = tmp_path / "patches"
    config = apply_overrides(preset("mnist"), ["data.source=digits", "steps=1", "batch_size=8", "progress=false",
                                               "preview_every=0", "clusters=0"])
    train(config, tmp_path / "mnist")
    assert main(["export", "--run", str(tmp_path / "mnist"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "patch_size = 2 (UNet2DModel sees pixels, not patches)" in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".patches.*"))
    assert main(["export", "--run", str(tutorial_run), "--out", str(tmp_path / "fine")]) == 0
    assert main(["export", "--run", str(tutorial_run), "--out", str(tmp_path / "fine")]) == 2  # exists
    assert "exists; choose a new --out folder" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "fine"), "--n", "2", "--steps", "2", "--no-progress",
                 "--out", str(tmp_path / "drawn")]) == 0
    assert (tmp_path / "drawn" / "00001.png").is_file()


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_a_shifted_schedule_is_written_as_its_table(name):
    from pixel_diffusion.diffusers_io import scheduler_config
    from pixel_diffusion.schedules import make_schedule

    config = scheduler_config({"schedule": name, "schedule_options": {"shift": 2.0}, "prediction": "velocity"})
    assert config["trained_betas"] is not None
    theirs = diffusers.DDPMScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})
    ours = make_schedule(name, shift=2.0)
    torch.testing.assert_close(theirs.alphas_cumprod.double(), ours.alphas_cumprod, rtol=1e-4, atol=0)  # theirs: float32


def test_a_flow_model_is_refused_by_the_diffusers_scheduler_config_in_one_line():
    from pixel_diffusion.diffusers_io import scheduler_config

    with pytest.raises(ValueError, match=r"schedule = 'rectified-flow' \(diffusers' DDPM and DDIM schedulers take a table"):
        scheduler_config({"schedule": "rectified-flow", "schedule_options": {}, "prediction": "flow"})
    with pytest.raises(ValueError, match=r"prediction = 'flow' \(diffusers' DDPM and DDIM schedulers take noise"):
        scheduler_config({"schedule": "cosine", "schedule_options": {}, "prediction": "flow"})
