"""EDM2's power-function EMA (ema.py): its profile, its length, and rebuilding one length from
snapshots of two others, against the same average kept step by step."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pixel_diffusion.ema import PowerEMA, combine, gamma_to_sigma_rel, posthoc_coefficients, power_beta, profile_overlap, sigma_rel_to_gamma


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2():
    # EDM2 (Karras et al. 2024, sec. 3.1): sigma_rel 0.10 is gamma 6.94, 0.05 is gamma 16.97.
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    for sigma_rel in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-9)
    for bad in (0.0, 0.3, -0.1, True):
        with pytest.raises(ValueError, match="sigma_rel must lie in"):
            sigma_rel_to_gamma(bad)


def _profile_average(values: np.ndarray, gamma: float) -> np.ndarray:
    """The step-by-step power EMA of a sequence: row t holds the average after step t + 1."""
    out, average = [], 0.0
    for step, value in enumerate(values, start=1):
        beta = power_beta(gamma, step)
        average = beta * average + (1 - beta) * value
        out.append(average)
    return np.array(out)


def test_the_step_by_step_average_is_the_power_function_profile():
    # theta(tau) = tau gives (gamma + 1) / (gamma + 2) t, and its relative spread is sigma_rel.
    gamma, steps = sigma_rel_to_gamma(0.1), 20000
    tau = np.arange(1, steps + 1, dtype=np.float64)
    mean = _profile_average(tau, gamma)[-1]
    assert mean / steps == pytest.approx((gamma + 1) / (gamma + 2), rel=1e-3)
    second = _profile_average(tau**2, gamma)[-1]
    assert math.sqrt(second - mean**2) / steps == pytest.approx(0.1, rel=1e-3)


def test_profile_overlap_is_the_integral_of_the_two_profiles():
    tau = np.linspace(0, 3000, 3_000_001)[1:]
    for t_a, g_a, t_b, g_b in ((1000.0, 6.94, 3000.0, 16.97), (3000.0, 2.0, 1000.0, 5.0), (2000.0, 3.0, 2000.0, 3.0)):
        p_a = np.where(tau <= t_a, (g_a + 1) * tau**g_a / t_a ** (g_a + 1), 0.0)
        p_b = np.where(tau <= t_b, (g_b + 1) * tau**g_b / t_b ** (g_b + 1), 0.0)
        numeric = np.sum(p_a * p_b) * (tau[1] - tau[0])
        assert float(profile_overlap(t_a, g_a, t_b, g_b)) == pytest.approx(numeric, rel=1e-3)


def test_a_profile_rebuilt_from_snapshots_of_two_others_matches_it_kept_step_by_step():
    # A trajectory of two "weights" that wander; snapshots of the 0.05 and 0.10 profiles every 250 steps.
    steps = 4000
    tau = np.arange(1, steps + 1, dtype=np.float64)
    theta = np.stack([np.sin(tau / 300) + tau / steps, np.cos(tau / 700) * (1 + tau / steps)], 1)
    kept = {s: np.stack([_profile_average(theta[:, k], sigma_rel_to_gamma(s)) for k in range(2)], 1)
            for s in (0.05, 0.10, 0.07, 0.15)}
    every = np.arange(250, steps + 1, 250)
    snapshots = [(float(t), sigma_rel_to_gamma(s)) for s in (0.05, 0.10) for t in every]
    values = [kept[s][t - 1] for s in (0.05, 0.10) for t in every]
    for target in (0.07, 0.15):
        x = posthoc_coefficients(snapshots, steps, target)
        rebuilt = np.tensordot(x, np.stack(values), 1)
        exact = kept[target][-1]
        spread = np.abs(kept[0.05][-1] - kept[0.10][-1]).max()
        assert np.abs(rebuilt - exact).max() < 0.05 * spread, (rebuilt, exact)
    # a stored profile at a snapshot's own step is that snapshot
    x = posthoc_coefficients(snapshots, steps, 0.10)
    assert x[len(every) * 2 - 1] == pytest.approx(1.0, abs=1e-6) and np.abs(np.delete(x, len(every) * 2 - 1)).max() < 1e-6


def test_power_ema_keeps_each_profile_of_a_network_and_combine_sums_states():
    net = nn.Linear(3, 2)
    averages = PowerEMA(net, (0.05, 0.10))
    assert averages.names() == ["ema-0.050", "ema-0.100"]
    history = []
    for step in range(1, 51):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1)
        history.append(net.weight.detach().double().clone())
        averages.update(net, step)
    for gamma, average in zip(averages.gammas, averages.nets):
        expected = _profile_average(np.stack([h.numpy() for h in history]), gamma)[-1]
        np.testing.assert_allclose(average.weight.double().numpy(), expected, rtol=1e-5)
    states = [a.state_dict() for a in averages.nets]
    mixed = combine(states, [0.25, 0.75])
    torch.testing.assert_close(mixed["weight"], 0.25 * states[0]["weight"] + 0.75 * states[1]["weight"])
    assert mixed["weight"].dtype == torch.float32


# ---- in training, in checkpoints, and `pixel-diffusion ema` ----------------------------------------

TINY = ["data.source=digits", 'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
        "batch_size=16", "preview_every=0", "progress=false", "precision=fp32", "clusters=0", "checkpoint_every=6",
        "keep_checkpoints=5", "ema_snapshot_every=2", "steps=12", "lr_decay=constant"]


def _train(run, profiles, *extra):
    from pixel_diffusion.config import apply_overrides
    from pixel_diffusion.presets import preset
    from pixel_diffusion.training import train

    return train(apply_overrides(preset("mnist"), [*TINY, f"ema_profiles={list(profiles)}", *extra]), run)


def test_a_rebuilt_ema_profile_matches_the_one_training_kept(tmp_path):
    from pixel_diffusion import load_run
    from pixel_diffusion.checkpoints import list_snapshots, load_weights, snapshot_info, verify_checkpoint
    from pixel_diffusion.cli import main

    last = _train(tmp_path / "two", (0.05, 0.1))
    assert [snapshot_info(p)[0] for p in list_snapshots(tmp_path / "two")] == [2, 4, 6, 8, 10, 12]
    assert {"ema-0.050", "ema-0.100"} <= {p.stem for p in last.glob("*.safetensors")}
    assert main(["ema", "--run", str(tmp_path / "two"), "--sigma-rel", "0.15"]) == 0
    verify_checkpoint(last)  # the manifest lists the new weights
    truth = _train(tmp_path / "three", (0.05, 0.1, 0.15))  # the same training, keeping 0.15 as it goes
    rebuilt, kept = load_weights(last / "ema-0.150.safetensors"), load_weights(truth / "ema-0.150.safetensors")
    a, b = load_weights(last / "ema-0.050.safetensors"), load_weights(last / "ema-0.100.safetensors")
    for key in kept:
        if kept[key].is_floating_point() and (a[key] - b[key]).abs().max() > 1e-4:
            assert (rebuilt[key] - kept[key]).abs().max() < 0.2 * (a[key] - b[key]).abs().max(), key
    run = load_run(tmp_path / "two", weights="ema-0.150")
    assert run.weights == "ema-0.150" and run.sample(2, steps=2, progress=False).shape == (2, 8, 8, 1)


def test_post_hoc_ema_says_what_is_missing_in_one_line(tmp_path, capsys):
    from pixel_diffusion.cli import main

    _train(tmp_path / "none", (), "ema_snapshot_every=0")
    assert main(["ema", "--run", str(tmp_path / "none"), "--sigma-rel", "0.1"]) == 2
    assert "kept no EMA profiles to rebuild from; train with ema_profiles" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "none"), "--weights", "ema-0.100", "--n", "1", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "holds no ema-0.100 weights; it holds ema, model" in err and err.count("\n") == 1
    assert main(["sample", "--run", str(tmp_path / "none"), "--weights", "../config", "--n", "1", "--out",
                 str(tmp_path / "x")]) == 2
    assert "weights name '../config' must be lower-case letters" in capsys.readouterr().err


def test_ema_profiles_resume_exactly(tmp_path):
    from pixel_diffusion.checkpoints import load_weights

    straight = _train(tmp_path / "straight", (0.05, 0.1))
    _train(tmp_path / "resumed", (0.05, 0.1), "steps=6")
    resumed = _train(tmp_path / "resumed", (0.05, 0.1))
    for name in ("ema-0.050", "ema-0.100"):
        ours, theirs = load_weights(resumed / f"{name}.safetensors"), load_weights(straight / f"{name}.safetensors")
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_a_run_samples_with_its_own_weights_unless_told(tmp_path):
    """A preset names the weights its measured best samples with; load_run, sample and the page
    take them unless told, and a name no checkpoint would keep is refused before training."""
    from pixel_diffusion import load_run
    from pixel_diffusion.config import apply_overrides
    from pixel_diffusion.presets import preset

    _train(tmp_path / "run", (0.05,), "weights=ema-0.050")
    own = load_run(tmp_path / "run")
    assert own.weights == "ema-0.050" and own.spec.weights == "ema-0.050"
    named = load_run(tmp_path / "run", weights="ema-0.050").sample(3, steps=2, seed=1, progress=False)
    assert np.array_equal(own.sample(3, steps=2, seed=1, progress=False), named)
    fixed = load_run(tmp_path / "run", weights="ema").sample(3, steps=2, seed=1, progress=False)
    assert not np.array_equal(named, fixed)
    with pytest.raises(ValueError, match="weights must be one of the weights every checkpoint keeps: ema, model, "
                                         "ema-0.050"):
        apply_overrides(preset("mnist"), ["ema_profiles=[0.05]", "weights=ema-0.200"])
