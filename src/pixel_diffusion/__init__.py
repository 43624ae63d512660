"""pixel-diffusion: train, sample, measure and look at denoising diffusion models of images."""

from .diffusion import Denoiser, Split, add_noise, forward_chain
from .objectives import OBJECTIVES, Diffusion, FlowMatching
from .runs import ModelSpec, Run, load_run
from .samplers import SAMPLERS, ImageNoise, Walk, ddim, ddpm, sample
from .schedules import SCHEDULES, SPACINGS, make_schedule, sampling_times

__version__ = "0.1.0"

__all__ = [
    "Denoiser",
    "Diffusion",
    "FlowMatching",
    "ImageNoise",
    "ModelSpec",
    "OBJECTIVES",
    "Run",
    "SAMPLERS",
    "SCHEDULES",
    "SPACINGS",
    "Split",
    "Walk",
    "add_noise",
    "ddim",
    "ddpm",
    "forward_chain",
    "load_run",
    "make_schedule",
    "sample",
    "sampling_times",
]
