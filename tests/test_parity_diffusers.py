"""Our DDPM, DDIM and DPM-Solver++ steps against diffusers' DDPMScheduler, DDIMScheduler and
DPMSolverMultistepScheduler, step by step, for the same model outputs, timesteps and noise.

Each step of our walk is recorded through the callback; diffusers is then asked to take the same
step from the same x_t with the same network output and the same noise draw. Where diffusers
differs on purpose-free grounds, the test says so (see docs/core.md)."""

import pytest
import torch

from pixel_diffusion import schedules
from pixel_diffusion.diffusion import Denoiser
from pixel_diffusion.exact import GaussianDenoiser
from pixel_diffusion.samplers import ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, unipc
from pixel_diffusion.schedules import sampling_times

diffusers = pytest.importorskip("diffusers")
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

THEIR_PREDICTION = {"noise": "epsilon", "image": "sample", "velocity": "v_prediction"}
THEIR_SPACING = {"uniform": "linspace", "leading": "leading", "trailing": "trailing"}


SCHEDULE = schedules.linear()


def make_net(prediction):
    """A stand-in for a trained network: the exact answer for Gaussian data in the given
    parameterisation, plus a smooth nonlinear error, so x_t stays of the data's scale."""
    exact = GaussianDenoiser.iid(SCHEDULE, 0.1, 0.5)

    def net(x, level, labels=None):
        alpha, sigma = SCHEDULE.rates((level.double() + 1) / 1000)
        a, s = alpha.view(-1, 1, 1, 1).float(), sigma.view(-1, 1, 1, 1).float()
        image, noise = exact(x, (level.double() + 1) / 1000)
        out = {"noise": noise, "image": image, "velocity": a * noise - s * image}[prediction]
        return out + 0.05 * torch.sin(3 * x + level.view(-1, 1, 1, 1) / 97.0)

    return net


class RecordedNoise:
    """Draw k of a walk comes from a generator seeded 1000 + k, as diffusers can be given."""

    def __init__(self):
        self.draws = []

    def __call__(self, like):
        z = torch.randn(like.shape, generator=torch.Generator().manual_seed(1000 + len(self.draws)))
        self.draws.append(z)
        return z


@pytest.fixture
def ddpm_noise(monkeypatch):
    """DDPMScheduler.step draws its own noise from a generator; hand it ours instead."""
    given = {}
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, dtype=None, **kw: given["noise"].to(dtype))
    return given


def _in_float64(scheduler):
    """diffusers keeps its tables in float32; rebuilt in float64 from the same betas, its steps
    show the algorithm without float32 rounding (which costs it up to 2e-4 near t = 0, below)."""
    scheduler.betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    scheduler.alphas = 1 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, 0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def _walk(sampler, schedule, net, prediction, steps, spacing, **options):
    denoiser = Denoiser(net, schedule, prediction, "timestep")
    times = sampling_times(schedule, steps, spacing)
    states = []
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = RecordedNoise()
    out = sampler(denoiser, x, times, noise=noise, callback=lambda i, x_t, image: states.append(x_t.clone()), **options)
    timesteps = (times[:-1] * schedule.num_steps - 1).round().long()
    return states + [out], timesteps, noise.draws


@pytest.mark.parametrize("prediction", THEIR_PREDICTION)
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("steps, spacing", [(1000, "uniform"), (50, "uniform"), (37, "leading"), (20, "trailing")])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_steps_equal_diffusers(prediction, variance, steps, spacing, clip, ddpm_noise):
    schedule, net = SCHEDULE, make_net(prediction)
    states, timesteps, draws = _walk(
        ddpm, schedule, net, prediction, steps, spacing, variance=variance, clip=(-1, 1) if clip else None
    )
    reference = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type=THEIR_PREDICTION[prediction],
        variance_type={"posterior": "fixed_small", "beta": "fixed_large"}[variance],
        clip_sample=clip,
        timestep_spacing=THEIR_SPACING[spacing],
    )
    reference.set_timesteps(steps)
    _in_float64(reference)
    assert torch.equal(reference.timesteps, timesteps)
    for i, t in enumerate(timesteps.tolist()):
        if i == len(timesteps) - 1 and t > 0 and variance == "beta":
            # diffusers adds noise of variance beta on a last step that does not start at
            # timestep 0 (trailing spacing); the walk ends at clean data, so we add none.
            break
        x = states[i]
        ddpm_noise["noise"] = draws[i] if i < len(draws) else torch.zeros_like(x)
        output = net(x, torch.tensor([float(t)])).double()
        theirs = reference.step(output, t, x.double()).prev_sample
        torch.testing.assert_close(states[i + 1], theirs.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction", THEIR_PREDICTION)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps, spacing", [(1000, "leading"), (50, "leading"), (10, "trailing"), (8, "trailing")])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_steps_equal_diffusers(prediction, eta, steps, spacing, clip):
    schedule, net = SCHEDULE, make_net(prediction)
    states, timesteps, draws = _walk(ddim, schedule, net, prediction, steps, spacing, eta=eta, clip=(-1, 1) if clip else None)
    reference = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type=THEIR_PREDICTION[prediction],
        clip_sample=clip,
        set_alpha_to_one=True,
        timestep_spacing=THEIR_SPACING[spacing],
    )
    reference.set_timesteps(steps)
    _in_float64(reference)
    assert torch.equal(reference.timesteps, timesteps)
    for i, t in enumerate(timesteps.tolist()):
        x = states[i]
        noise = draws[i] if i < len(draws) else torch.zeros_like(x)  # no noise is drawn on the last step
        theirs = reference.step(
            net(x, torch.tensor([float(t)])).double(),
            t,
            x.double(),
            eta=eta,
            # Re-deriving the noise from the clipped image keeps x_t = alpha x_0 + sigma eps; diffusers
            # does so only when asked.
            use_clipped_model_output=clip,
            variance_noise=noise.double() if eta > 0 else None,
        ).prev_sample
        torch.testing.assert_close(states[i + 1], theirs.float(), rtol=1e-5, atol=1e-5)


def _their_multistep(prediction, algorithm, order, solver_type, timesteps, kind="DPMSolverMultistepScheduler",
                     **options):
    """diffusers' multistep solver on our timesteps, its tables and EDM sigmas (which it stores in
    float32 once set) rebuilt in float64 from the same betas."""
    options = {"algorithm_type": algorithm, "lower_order_final": False, **options} if algorithm else options
    reference = getattr(diffusers, kind)(
        num_train_timesteps=1000, beta_schedule="linear", prediction_type=THEIR_PREDICTION[prediction],
        solver_order=order, solver_type=solver_type,
        final_sigmas_type="zero",  # the walk ends at clean data, the last step first order
        **options,
    )
    _in_float64(reference)
    reference.alpha_t, reference.sigma_t = reference.alphas_cumprod.sqrt(), (1 - reference.alphas_cumprod).sqrt()
    if kind == "UniPCMultistepScheduler":  # it takes no timesteps of ours: set as many, then replace them
        reference.set_timesteps(len(timesteps))
        reference.timesteps = timesteps.clone()
    else:
        reference.set_timesteps(timesteps=timesteps.tolist())
    cumprod = reference.alphas_cumprod[timesteps]
    reference.sigmas = torch.cat([((1 - cumprod) / cumprod).sqrt(), torch.zeros(1, dtype=torch.float64)])
    return reference


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers' set_timesteps
@pytest.mark.parametrize("prediction", THEIR_PREDICTION)
@pytest.mark.parametrize("sampler, algorithm", [(dpmpp_2m, "dpmsolver++"), (dpmpp_2m_sde, "sde-dpmsolver++")])
@pytest.mark.parametrize("steps, spacing", [(50, "uniform"), (20, "trailing"), (7, "leading")])
def test_dpmpp_2m_steps_equal_diffusers(prediction, sampler, algorithm, steps, spacing):
    # diffusers' multistep keeps the previous image estimates itself; it is fed our states in order.
    schedule, net = SCHEDULE, make_net(prediction)
    states, timesteps, draws = _walk(sampler, schedule, net, prediction, steps, spacing)
    reference = _their_multistep(prediction, algorithm, 2, "midpoint", timesteps)
    for i, t in enumerate(timesteps.tolist()):
        x = states[i]
        noise = draws[i] if i < len(draws) else torch.zeros_like(x)
        output = net(x, torch.tensor([float(t)])).double()
        theirs = reference.step(output, t, x.double(), variance_noise=noise.double()).prev_sample
        torch.testing.assert_close(states[i + 1], theirs.float(), rtol=1e-5, atol=1e-5)
    assert len(draws) == (steps - 1 if sampler is dpmpp_2m_sde else 0)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("prediction", THEIR_PREDICTION)
@pytest.mark.parametrize("steps, spacing", [(50, "uniform"), (20, "trailing"), (7, "leading")])
def test_dpmpp_3m_steps_equal_diffusers(prediction, steps, spacing):
    # Third order from the third step, second order on the second: diffusers' solver_order 3 with
    # solver_type "heun", whose second-order step is the 3M formula with D_2 = 0 (phi_2 D_1).
    schedule, net = SCHEDULE, make_net(prediction)
    states, timesteps, _ = _walk(dpmpp_3m, schedule, net, prediction, steps, spacing)
    reference = _their_multistep(prediction, "dpmsolver++", 3, "heun", timesteps)
    for i, t in enumerate(timesteps.tolist()):
        output = net(states[i], torch.tensor([float(t)])).double()
        theirs = reference.step(output, t, states[i].double()).prev_sample
        torch.testing.assert_close(states[i + 1], theirs.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("prediction", THEIR_PREDICTION)
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps, spacing", [(50, "uniform"), (20, "trailing"), (6, "leading")])
def test_unipc_steps_equal_diffusers(prediction, order, steps, spacing):
    # diffusers' UniPCMultistep (bh2, data prediction, its default lower_order_final) is handed the
    # state our walk gave the network; it corrects it with the new estimate and predicts the next.
    schedule, net = SCHEDULE, make_net(prediction)
    states, timesteps, _ = _walk(unipc, schedule, net, prediction, steps, spacing, order=order)
    reference = _their_multistep(prediction, None, order, "bh2", timesteps, "UniPCMultistepScheduler",
                                 predict_x0=True, lower_order_final=True)
    for i, t in enumerate(timesteps.tolist()):
        output = net(states[i], torch.tensor([float(t)])).double()
        theirs = reference.step(output, t, states[i].double()).prev_sample
        torch.testing.assert_close(states[i + 1], theirs.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_diffusers_third_order_sde_step_differs_from_the_sde_solution_by_its_d2_term():
    # diffusers' third-order sde-dpmsolver++ weights D_2 by alpha_s ((1 - e^(-2h) - 2h) / (2h)^2 - 1/2),
    # which stays near -alpha_s as h -> 0, where the integral of the SDE solution gives
    # -alpha_s phi_3(2h) = alpha_s ((1 - e^(-2h) - 2h) / (2h)^2 + 1/2) -> 0 (k-diffusion's dpmpp_3m_sde).
    # Ours agrees with diffusers on every step but by exactly that difference, alpha_s D_2.
    schedule, net = SCHEDULE, make_net("noise")
    states, timesteps, draws = _walk(dpmpp_3m, schedule, net, "noise", 20, "trailing", eta=1.0)
    reference = _their_multistep("noise", "sde-dpmsolver++", 3, "heun", timesteps)
    seen = 0
    for i, t in enumerate(timesteps.tolist()):
        output = net(states[i], torch.tensor([float(t)])).double()
        noise = draws[i] if i < len(draws) else torch.zeros_like(states[i])
        theirs = reference.step(output, t, states[i].double(), variance_noise=noise.double()).prev_sample
        if i < 2 or i == len(timesteps) - 1:  # first, second and final steps have no D_2 term
            torch.testing.assert_close(states[i + 1], theirs.float(), rtol=1e-5, atol=1e-5)
            continue
        cumprod = reference.alphas_cumprod[timesteps[i - 2 : i + 2]]
        lam = (0.5 * (cumprod / (1 - cumprod)).log()).tolist()  # log(alpha / sigma) at steps i - 2 .. i + 1
        r_0, r_1 = (lam[2] - lam[1]) / (lam[3] - lam[2]), (lam[1] - lam[0]) / (lam[3] - lam[2])
        images = [reference.model_outputs[-k] for k in (1, 2, 3)]
        d_0, d_1 = (images[0] - images[1]) / r_0, (images[1] - images[2]) / r_1
        alpha_s = float(cumprod[3].sqrt())
        torch.testing.assert_close(states[i + 1].double(), theirs + alpha_s * (d_0 - d_1) / (r_0 + r_1),
                                   rtol=1e-5, atol=1e-5)
        seen += 1
    assert seen == len(timesteps) - 3


def test_diffusers_float32_tables_lose_precision_near_t0_where_ours_do_not(ddpm_noise):
    # Near t = 0, 1 - alpha-bar is a difference of nearly equal float32 numbers in diffusers;
    # our coefficients are computed in float64, so our float32 steps stay within 1e-6 of exact.
    net = make_net("noise")
    states, timesteps, draws = _walk(ddpm, SCHEDULE, net, "noise", 1000, "uniform")
    float32 = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    float64 = _in_float64(diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False))
    worst_ours = worst_theirs = 0.0
    for i in range(990, 999):  # timesteps 9 .. 1
        t, x = 999 - i, states[i]
        output = net(x, torch.tensor([float(t)]))
        ddpm_noise["noise"] = draws[i]
        exact = float64.step(output.double(), t, x.double()).prev_sample
        theirs = float32.step(output, t, x).prev_sample
        worst_ours = max(worst_ours, (states[i + 1].double() - exact).abs().max().item())
        worst_theirs = max(worst_theirs, (theirs.double() - exact).abs().max().item())
    assert worst_ours < 1e-6 < 1e-5 < worst_theirs


def test_diffusers_ddim_linspace_steps_off_its_own_grid():
    # diffusers' DDIM steps from t to t - T // n whatever the spacing, so with 'linspace' (our
    # 'uniform') and n not dividing T it lands on timesteps that are not the next one listed and
    # then jumps. Our walk always steps to the next listed time.
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
    reference.set_timesteps(7)
    listed = reference.timesteps.tolist()
    stepped_to = [t - 1000 // 7 for t in listed]
    assert stepped_to[:-1] != listed[1:]
    ours = (sampling_times(schedules.linear(), 7, "uniform")[:-1] * 1000 - 1).round().long().tolist()
    assert ours == listed
