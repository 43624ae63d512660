"""The InceptionV3 used for FID (Szegedy et al. 2016; Heusel et al. 2017), as in the TensorFlow FID
code (TTUR), StyleGAN's and EDM's `fid.py`, clean-fid's "legacy_tensorflow" and pytorch-fid:
parameter names and shapes follow torchvision's Inception3 without the auxiliary head and the
logits, so both standard weights files map onto it (features/inception_weights.py). The FID
variant averages without the padded zeros in blocks 5b-7b and max-pools in 7c.

Images go in as uint8 and are prepared as the reference code does (`PREPROCESSING["tf1"]`): cast
to float on 0..255, resized to 299x299 with TensorFlow 1's legacy bilinear resize (the source
pixel of output pixel i is i * in / out, neighbours clamped at the edge), mapped by
(x - 128) / 128. pytorch-fid resizes [0, 1] images with half-pixel bilinear interpolation and maps
by 2x - 1 (`PREPROCESSING["pytorch-fid"]`); on 32x32 images the two give pool features about 25%
apart, so only the first gives FIDs that stand beside published ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .inception_weights import find_weights, read_weights

SIZE = 299


class BasicConv2d(nn.Module):
    """Convolution without bias -> BatchNorm (eps 0.001) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)

    def fold(self) -> None:
        """Fold the (inference) BatchNorm into the convolution: one operation instead of two."""
        self.conv, self.bn = fuse_conv_bn_eval(self.conv, self.bn), nn.Identity()


def _avg_pool(x):  # TensorFlow's average pool leaves the padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x):  # between the stem's convolutions
    return F.max_pool2d(x, 3, stride=2)


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
    """Prepared images (B, 3, 299, 299) -> 2048 pool features (B, 2048)."""

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

    def layers(self) -> list:
        """The network as a sequence, (B, 3, 299, 299) in, (B, 2048, 8, 8) out."""
        return [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, _max_pool, self.Conv2d_3b_1x1,
                self.Conv2d_4a_3x3, _max_pool, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers():
            x = layer(x)
        return x.float().mean(dim=(2, 3))  # (B, 2048)


# ---- preparing uint8 images -------------------------------------------------------------------------


def legacy_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) weights of TensorFlow 1's ResizeBilinear (align_corners=False, no
    half-pixel centres): output i reads source i * scale in float32, scale = in / out, between
    floor and floor + 1, the upper one clamped to the last pixel."""
    source = torch.arange(size_out, dtype=torch.float32) * torch.tensor(size_in / size_out, dtype=torch.float32)
    lower = source.floor()
    fraction = source - lower
    lower = lower.long().clamp(max=size_in - 1)
    upper = (lower + 1).clamp(max=size_in - 1)
    weights = torch.zeros(size_out, size_in)
    weights[torch.arange(size_out), lower] += 1 - fraction
    weights[torch.arange(size_out), upper] += fraction
    return weights


def tf1_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> (B, 3, 299, 299): the TF FID graph's resize on 0..255, (x - 128) / 128
    (the shift taken before the resize, which keeps constants, and the scale inside its weights)."""
    x = images.float() - 128
    if x.shape[-2:] == (SIZE, SIZE):
        return x / 128
    rows = legacy_resize_matrix(x.shape[-2], SIZE).to(x.device) / 128
    columns = legacy_resize_matrix(x.shape[-1], SIZE).to(x.device)
    return torch.einsum("oh,bchw,pw->bcop", rows, x, columns)


def pytorch_fid_preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> (B, 3, 299, 299) as pytorch-fid: [0, 1], half-pixel bilinear, 2x - 1."""
    x = F.interpolate(images.float() / 255, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


@dataclass(frozen=True)
class Preprocessing:
    fn: object  # uint8 (B, 3, H, W) -> float (B, 3, 299, 299)
    description: str


# name -> how uint8 images become the network's input; "tf1" is the reference code's.
PREPROCESSING = {
    "tf1": Preprocessing(tf1_preprocess, "TensorFlow 1 legacy bilinear resize on 0..255, (x - 128) / 128: the standard FID"),
    "pytorch-fid": Preprocessing(pytorch_fid_preprocess, "pytorch-fid's half-pixel bilinear resize on [0, 1], 2x - 1"),
}


# ---- the network with the standard weights ----------------------------------------------------------


def load_inception(weights: str | Path | None = None) -> FIDInception:
    """The FID Inception with the standard weights, loaded strictly and without running code."""
    path = find_weights(weights)
    net = FIDInception()
    expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = read_weights(path, expected)
    missing, extra = sorted(set(expected) - set(state))[:3], sorted(set(state) - set(expected))[:3]
    if missing or extra:
        raise ValueError(f"{path} is not the FID Inception's weights (missing {missing}, unexpected {extra})")
    wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)][:3]
    if wrong:
        raise ValueError(f"{path} is not the FID Inception's weights (shapes differ at {wrong})")
    counters = {k: v for k, v in net.state_dict().items() if k.endswith("num_batches_tracked")}
    net.load_state_dict({**counters, **{k: v.float() for k, v in state.items()}}, strict=True)
    return net.eval()


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 in hardware (AVX-512 BF16 or AMX on a CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = [getattr(torch.cpu, name, lambda: False) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return device.type == "cpu" and any(probe() for probe in probes)


# The extractor's arithmetic: "auto" takes bf16 where the device has it in hardware.
PRECISIONS = ("auto", "fp32", "bf16")
# In bf16, this many of the network's first layers (of `FIDInception.layers()`) stay in float32.
BF16_FLOAT32_LAYERS = 5  # through Conv2d_3b_1x1: FID within 0.5% of float32 (docs/metrics.md)


class InceptionFeatures:
    """2048 pool features of the FID Inception (no class probabilities). For speed the network runs
    with each BatchNorm folded into its convolution and in the channels-last layout (both exact to
    float32 rounding) and, with precision bf16, in bf16 after its first `float32_layers` layers
    (docs/metrics.md measures the speed and what each costs in FID)."""

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu", *, preprocess: str = "tf1",
                 precision: str = "auto", batch_size: int = 50, channels_last: bool = True, fold: bool = True,
                 float32_layers: int = BF16_FLOAT32_LAYERS):
        if preprocess not in PREPROCESSING:
            raise ValueError(f"unknown Inception preprocessing {preprocess!r}; expected one of {', '.join(PREPROCESSING)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown Inception precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        if precision == "auto":
            precision = "bf16" if native_bf16(self.device) else "fp32"
        self.net = load_inception(weights)
        if fold:
            for module in self.net.modules():
                if isinstance(module, BasicConv2d):
                    module.fold()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = self.net.to(self.device, memory_format=self.memory_format)
        self.preprocess, self.precision, self.batch_size = preprocess, precision, batch_size
        self.float32_layers = float32_layers if precision == "bf16" else 0
        if precision == "bf16":  # cast once: autocast would cast every weight again at every batch
            for layer in self.net.layers()[self.float32_layers :]:
                if isinstance(layer, nn.Module):
                    layer.to(torch.bfloat16)
        stem = f"-float32-{self.float32_layers}" if self.float32_layers else ""
        self.key = f"inception-2015-12-05-{preprocess}-{precision}{stem}"

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, None]:
        """uint8 (N, H, W, C) -> (features (N, 2048) float32, None); grayscale is repeated to 3 channels."""
        from tqdm.auto import tqdm

        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
            raise ValueError(f"the Inception takes uint8 images (N, H, W, 1 or 3); got {images.dtype} {images.shape}")
        prepare = PREPROCESSING[self.preprocess].fn
        # Written in place: small per-batch results kept between the large activations would
        # fragment the heap, which then grows with every batch.
        features = np.empty((len(images), 2048), np.float32)
        batches = range(0, len(images), self.batch_size)
        for start in tqdm(batches, desc="Inception features", disable=len(batches) <= 1):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size])).to(self.device)
            x = x.permute(0, 3, 1, 2).expand(-1, 3, -1, -1)  # (B, 3, H, W); one channel is repeated
            x = prepare(x).contiguous(memory_format=self.memory_format)
            features[start : start + len(x)] = self.features(x).cpu().numpy()
        return features, None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared images (B, 3, 299, 299) -> (B, 2048) float32; in bf16, the first
        `float32_layers` layers of the network stay in float32."""
        layers = self.net.layers()
        for layer in layers[: self.float32_layers]:
            x = layer(x)
        x = x.to(torch.bfloat16 if self.precision == "bf16" else torch.float32)
        for layer in layers[self.float32_layers :]:
            x = layer(x)
        return x.float().mean(dim=(2, 3))
