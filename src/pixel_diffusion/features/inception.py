"""The InceptionV3 used for FID (Szegedy et al. 2016; Heusel et al. 2017), as in the TensorFlow FID
code and pytorch-fid: parameter names and shapes follow torchvision's Inception3 with 1008
classes and no auxiliary head, so the standard FID weights file (pt_inception-2015-12-05) loads
strictly. The FID variant averages without the padded zeros in blocks 5b-7b and max-pools in 7c.

Weights are found, in order: the `weights` argument, the PIXEL_DIFFUSION_INCEPTION environment
variable, the cache (~/.cache/pixel-diffusion/pt_inception-2015-12-05-6726825d.pth), or a
download checked against its SHA-256 prefix. The file is a pickle of tensors, read with
torch.load(weights_only=True), which executes no code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
WEIGHTS_SHA256_PREFIX = "6726825d"
ENVIRONMENT = "PIXEL_DIFFUSION_INCEPTION"


class BasicConv2d(nn.Module):
    """Convolution without bias -> BatchNorm (eps 0.001) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):  # TensorFlow's average pool leaves the padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        double = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            double,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the FID model's last block max-pools (as TensorFlow's graph does)
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        single = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(single), self.branch3x3_2b(single),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class FIDInception(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> 2048 pool features and 1008 logits."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # as pytorch-fid
        x = 2 * x - 1
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        features = x.mean(dim=(2, 3))  # (B, 2048)
        return features, self.fc(features)


def find_weights(weights: str | Path | None = None, *, download: bool = True) -> Path:
    """The FID weights file: given, from the environment, cached, or downloaded with a checksum."""
    for candidate in (weights, os.environ.get(ENVIRONMENT)):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise ValueError(f"FID Inception weights not found at {path}")
            return path
    cached = Path.home() / ".cache" / "pixel-diffusion" / WEIGHTS_NAME
    if cached.is_file():
        return cached
    where = (f"put {WEIGHTS_NAME} (from {WEIGHTS_URL}) at {cached}, or point {ENVIRONMENT} "
             "or --inception-weights at it")
    if not download:
        raise ValueError(f"the FID Inception weights are missing; {where}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(WEIGHTS_URL, str(cached), hash_prefix=WEIGHTS_SHA256_PREFIX, progress=True)
    except Exception as error:  # no network, refused, or a corrupt download (hash mismatch)
        cached.unlink(missing_ok=True)
        raise ValueError(f"could not download the FID Inception weights ({type(error).__name__}); {where}") from None
    return cached


def load_inception(weights: str | Path | None = None, *, download: bool = True) -> FIDInception:
    """The FID Inception with the standard weights, loaded strictly and without running code."""
    path = find_weights(weights, download=download)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a weights file of plain tensors ({str(error).splitlines()[0][:80]})") from None
    net = FIDInception()
    # Files saved before BatchNorm counted batches lack num_batches_tracked; those are not weights.
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    given = {k for k in state if not k.endswith("num_batches_tracked")}
    if expected != given:
        missing, extra = sorted(expected - given)[:3], sorted(given - expected)[:3]
        raise ValueError(f"{path} is not the FID Inception's weights (missing {missing}, unexpected {extra})")
    defaults = net.state_dict()
    state = {**{k: v for k, v in defaults.items() if k.endswith("num_batches_tracked")}, **state}
    net.load_state_dict(state, strict=True)
    return net.eval()


class InceptionFeatures:
    """2048 pool features of the FID Inception (no class probabilities)."""

    key = "inception-fid-2015-12-05"

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu"):
        self.net = load_inception(weights).to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 50) -> tuple[np.ndarray, None]:
        """uint8 (N, H, W, C) -> (features (N, 2048), None); grayscale is repeated to 3 channels."""
        from tqdm.auto import tqdm

        images = np.asarray(images)
        features = []
        for start in tqdm(range(0, len(images), batch_size), desc="Inception features", disable=len(images) <= batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2).float() / 255
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            features.append(self.net(x.to(self.device))[0].double().cpu())
        return torch.cat(features).numpy(), None
