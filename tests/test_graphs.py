"""The hot paths trace whole: torch._dynamo.explain finds no graph break (each one a host
synchronisation or a Python fallback under torch.compile) in any network's forward, with and
without labels, or in the training objectives' loss at drawn times and noise."""

import pytest
import torch

from pixel_diffusion.diffusion import Denoiser
from pixel_diffusion.networks import NETWORKS, build_network, config_from_dict, config_to_dict, network_config
from pixel_diffusion.objectives import Diffusion, FlowMatching
from pixel_diffusion.schedules import make_schedule

# Small forms of every registered network (widths and channels cut), so that tracing takes seconds.
SMALL = {"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16, "head_channels": 8}


def small(name: str, num_classes: int | None):
    base = config_to_dict(network_config(name, in_channels=3, num_classes=num_classes))
    levels = len(base["widths"])
    base.update({k: v for k, v in SMALL.items() if k in base})
    base["widths"] = [8] * (levels - 1) + [16]  # as many levels as the network has
    if "attention_levels" in base:
        base["attention_levels"] = [level for level in base["attention_levels"] if level < 2]
    return build_network(config_from_dict(base))


def breaks(fn, *args) -> list[str]:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args)
    return [str(reason.reason) for reason in explanation.break_reasons]


@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_network_forward_traces_as_one_graph(name):
    for num_classes in (None, 5) if name != "basic-mnist" else (None,):  # the BasicUNet takes no labels
        net = small(name, num_classes).eval()
        size = 32 if name in ("ddpm-64", "keras-ddim", "patch-64", "photo-64") else 16
        x, level = torch.randn(2, 3, size, size), torch.rand(2)
        labels = None if num_classes is None else torch.tensor([0, num_classes])  # one with no label
        with torch.no_grad():
            assert breaks(net, x, level, labels) == [], (name, num_classes)


@pytest.mark.parametrize("objective, schedule, prediction, noise_input", [
    (Diffusion(), "cosine", "velocity", "log-snr"),
    (Diffusion(target="noise", weighting="min-snr"), "linear", "noise", "timestep"),
    (FlowMatching(), "rectified-flow", "flow", "time"),
])
def test_the_training_loss_traces_as_one_graph(objective, schedule, prediction, noise_input):
    net = small("patch-cifar", 5).train()
    denoiser = Denoiser(net, make_schedule(schedule), prediction, noise_input)
    x, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 5, 2])
    t, noise = torch.rand(4, dtype=torch.float64) * 0.98 + 0.01, torch.randn_like(x)

    def step(x, labels, t, noise):  # the draw (a generator) stays outside; the loss and its mean are one graph
        return objective.loss(denoiser, x, labels, t, noise).mean()

    assert breaks(step, x, labels, t, noise) == []
    generator = torch.Generator().manual_seed(0)  # and calling the objective is the draw, then that loss
    drawn = objective(denoiser, x, labels, generator=generator)
    torch.testing.assert_close(drawn, objective.loss(denoiser, x, labels, *objective.draw(denoiser, x, torch.Generator().manual_seed(0))))
