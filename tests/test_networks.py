import dataclasses
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixel_diffusion.diffusers_io import their_name_to_ours
from pixel_diffusion.networks import (
    NETWORKS,
    build_network,
    config_from_dict,
    config_to_dict,
    network_config,
    parameter_count,
    summary,
)

# A size each network takes (divisible by its total downsampling), kept small for speed.
SIZES = {"keras-ddim": 32, "ddpm-mnist": 28, "ddpm-64": 64, "convnext-fashion": 28, "labml-cifar": 32, "basic-mnist": 28,
         "residual-mnist": 28, "patch-mnist": 28, "patch-cifar": 32, "patch-64": 64, "photo-64": 64}
FAST = [n for n in NETWORKS if n != "ddpm-64"]  # 113M parameters: built only where needed


def _level(batch, name):
    # A noise level in the range the network's preset feeds it.
    return torch.linspace(0.1, 0.9, batch) if name == "keras-ddim" else torch.linspace(10, 900, batch)


def _forward_backward(name, channels):
    torch.manual_seed(0)
    net = build_network(network_config(name, in_channels=channels))
    if getattr(net.config, "zero_init_output", False):  # let the input reach the output
        torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    x = torch.randn(2, channels, SIZES[name], SIZES[name], requires_grad=True)
    out = net(x, _level(2, name))
    assert out.shape == x.shape and out.dtype == torch.float32
    (out.square().mean() + out.mean()).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_runs_forward_and_backward(name, channels):
    _forward_backward(name, channels)


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_count_matches_the_docstring(name):
    doc = " ".join(NETWORKS[name].__doc__.split())
    figure, channels = re.search(r"([\d,]+) parameters with (\d) channel", doc).groups()
    net = build_network(network_config(name, in_channels=int(channels)))
    assert parameter_count(net) == int(figure.replace(",", ""))
    line = summary(net)
    assert "\n" not in line and "parameters" in line


@pytest.mark.parametrize("name", FAST)
def test_saved_and_rebuilt_network_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(1)
    net = build_network(network_config(name))
    for p in net.parameters():  # leave no zero-initialised layer: outputs must carry every weight
        p.data.add_(0.01 * torch.randn_like(p))
    net.eval()
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(net.config)))
    save_file(net.state_dict(), tmp_path / "model.safetensors")
    rebuilt = build_network(json.loads((tmp_path / "config.json").read_text()))
    rebuilt.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=True)
    rebuilt.eval()
    assert rebuilt.config == net.config
    x = torch.randn(3, net.config.in_channels, SIZES[name], SIZES[name])
    level = _level(3, name)
    assert torch.equal(net(x, level), rebuilt(x, level))


def test_zero_initialised_output_is_zero_at_initialisation():
    net = build_network(network_config("keras-ddim"))
    assert net.config.zero_init_output
    assert torch.equal(net(torch.randn(2, 3, 32, 32), torch.tensor([0.2, 0.7])), torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("name", [n for n in FAST if n != "basic-mnist"])
def test_output_depends_on_noise_level_and_label(name):
    torch.manual_seed(2)
    net = build_network(network_config(name, num_classes=10)).eval()
    for p in net.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    x = torch.randn(1, net.config.in_channels, SIZES[name], SIZES[name]).expand(2, -1, -1, -1)
    levels = _level(2, name)
    by_level = net(x, levels)
    assert (by_level[0] - by_level[1]).abs().max() > 1e-3, "the noise level is ignored"
    same_level = levels[:1].expand(2)
    by_label = net(x, same_level, torch.tensor([3, 7]))
    assert (by_label[0] - by_label[1]).abs().max() > 1e-3, "the label is ignored"
    unconditional = net(x, same_level)
    torch.testing.assert_close(unconditional, net(x, same_level, torch.tensor([10, 10])))  # 10 = no label


@pytest.mark.parametrize("channels", [1, 3])
def test_patches_are_the_plain_network_on_pixel_unshuffled_images(channels):
    # A network with p x p patches must be exactly the same network without patches run on the
    # (C p^2, H/p, W/p) space-to-depth image, its output put back by depth-to-space.
    torch.manual_seed(3)
    patched_config = dataclasses.replace(network_config("residual-mnist", in_channels=channels), patch_size=2, widths=(64, 96))
    patched = build_network(patched_config).eval()
    plain = build_network(dataclasses.replace(patched_config, patch_size=1, in_channels=4 * channels)).eval()
    for p in patched.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    plain.load_state_dict(patched.state_dict(), strict=True)
    x, level = torch.randn(2, channels, 28, 28), torch.tensor([30.0, 700.0])
    expected = torch.nn.functional.pixel_shuffle(plain(torch.nn.functional.pixel_unshuffle(x, 2), level), 2)
    assert torch.equal(patched(x, level), expected)
    assert expected.shape == x.shape
    with pytest.raises(ValueError, match=r"not divisible by 4 \(1 downsamplings, patches of 2\); expected multiples of 4"):
        patched(torch.randn(1, channels, 30, 30), level[:1])
    with pytest.raises(ValueError, match="patch_size must be a positive integer; got 0"):
        dataclasses.replace(patched_config, patch_size=0)


def test_basic_unet_has_no_noise_level_input():
    net = build_network(network_config("basic-mnist"))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(net(x, torch.tensor([1.0, 2.0])), net(x, torch.tensor([5.0, 9.0])))
    with pytest.raises(ValueError, match="no class conditioning"):
        network_config("basic-mnist", num_classes=10)


@pytest.mark.parametrize("name", FAST)
def test_wrong_inputs_get_a_clear_error(name):
    net = build_network(network_config(name, num_classes=None))
    c, size = net.config, SIZES[name]
    with pytest.raises(ValueError, match=r"not divisible by \d+ .*expected multiples of \d+"):
        net(torch.randn(1, c.in_channels, size + 2, size + 2), _level(1, name))
    with pytest.raises(ValueError, match=rf"expected images shaped \(B, {c.in_channels}, H, W\); got \(1, 5,"):
        net(torch.randn(1, 5, size, size), _level(1, name))
    with pytest.raises(ValueError, match="without num_classes"):
        net(torch.randn(1, c.in_channels, size, size), _level(1, name), torch.tensor([1]))


def test_labels_are_checked_where_they_come_in_and_by_shape_in_the_network():
    # The forward checks only shapes (no host synchronisation); values are checked at the edge.
    from pixel_diffusion.data import Normalisation
    from pixel_diffusion.runs import ModelSpec

    config = network_config("ddpm-mnist", num_classes=10)
    net = build_network(config)
    with pytest.raises(ValueError, match=r"labels must be 2 integers, one per image; got shape \(3,\)"):
        net(torch.randn(2, 1, 28, 28), torch.tensor([1.0, 2.0]), torch.tensor([0, 1, 2]))
    spec = ModelSpec(network=config, schedule="cosine", schedule_options={}, prediction="noise", noise_input="timestep",
                     normalisation=Normalisation(), channels=1, image_size=(28, 28), num_classes=10)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9 \(10: no label\); got 0\.\.11"):
        spec.check_labels(torch.tensor([0, 11]), 2)
    with pytest.raises(ValueError, match=r"labels must be 2 integers; got torch.float32 of shape \(2,\)"):
        spec.check_labels(torch.tensor([0.0, 1.0]), 2)
    spec.check_labels(torch.tensor([0, 10]), 2)  # 10: the "no label" index guidance uses


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown network 'vit'"):
        network_config("vit")
    with pytest.raises(ValueError, match="expected one of group, batch, layer"):
        config_from_dict({**config_to_dict(network_config("ddpm-mnist")), "norm": "instance"})
    with pytest.raises(ValueError, match=r"unknown field network.depth; expected one of activation, attention"):
        config_from_dict({**config_to_dict(network_config("ddpm-mnist")), "depth": 3})
    with pytest.raises(ValueError, match="attention levels \\[5\\] out of range"):
        config_from_dict({**config_to_dict(network_config("ddpm-mnist")), "attention_levels": [5]})
    with pytest.raises(ValueError, match="channels divisible by 32"):
        build_network(config_from_dict({**config_to_dict(network_config("ddpm-mnist")), "widths": [24, 48, 48]}))


# ---- against diffusers' UNet2DModel -------------------------------------------------------------

TUTORIAL_MNIST = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    layers_per_block=2,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)


def test_ddpm_mnist_equals_diffusers_unet2dmodel_given_the_same_weights():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(3)
    theirs = diffusers.UNet2DModel(**TUTORIAL_MNIST).eval()
    ours = build_network(network_config("ddpm-mnist")).eval()
    assert parameter_count(ours) == parameter_count(theirs)
    mapped = {their_name_to_ours(k): v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(mapped, strict=True)
    x = torch.randn(4, 1, 28, 28)
    timesteps = torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        expected = theirs(x, timesteps).sample
        got = ours(x, timesteps.float())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_ddpm_64_has_diffusers_parameter_count():
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.UNet2DModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    )
    ours = build_network(network_config("ddpm-64"))
    assert parameter_count(ours) == parameter_count(theirs)
    shapes = {their_name_to_ours(k): tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_docs_table_lists_every_network_with_its_parameter_count():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "networks.md").read_text()
    channels = {"keras-ddim": 3, "ddpm-64": 3, "labml-cifar": 3, "patch-cifar": 3, "patch-64": 3, "photo-64": 3}
    for name in NETWORKS:
        net = build_network(network_config(name, in_channels=channels.get(name, 1)))
        row = next((line for line in docs.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} missing from docs/networks.md"
        assert f"{parameter_count(net):,}" in row, "docs/networks.md is stale: run benchmarks/network_costs.py"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [64, 256, 257])
def test_attention_by_either_route_is_the_fused_kernels_with_its_gradients(dtype, tokens):
    # The plain two-product route (taken for bf16 on a CPU up to 256 tokens) must compute what
    # PyTorch's fused kernel computes, forward and backward, whichever route `attend` takes.
    from pixel_diffusion.networks.layers import attend, product_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, tokens, 16, dtype=dtype, requires_grad=True) for _ in range(3))
    weights = torch.randn(3, 2, tokens, 16, dtype=dtype)
    results = []
    for f in (torch.nn.functional.scaled_dot_product_attention, product_attention, attend):
        out = f(q, k, v)
        grads = torch.autograd.grad((out.float() * weights.float()).sum(), (q, k, v))
        results.append([out.float(), *(g.float() for g in grads)])
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.shape == b.shape and torch.allclose(a, b, atol=tolerance * max(1.0, a.abs().max().item()), rtol=0)
