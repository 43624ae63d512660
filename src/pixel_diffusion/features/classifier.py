"""A small CNN classifier trained by the toolkit on a labelled dataset: the offline feature
extractor for MNIST-like data (FID/KID on its penultimate layer, confidence and class balance
from its probabilities).

    pixel-diffusion train-classifier --data mnist-5k --out classifiers/mnist-5k
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import atomic_write_text, load_weights
from ..data import DataConfig, Normalisation, load_images


@dataclass(frozen=True)
class ClassifierConfig:
    channels: int
    image_size: tuple[int, int]
    num_classes: int
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 128
    reject_class: bool = False  # one more output: "not an image of this data set"


class Classifier(nn.Module):
    """Per width: conv3x3 -> BatchNorm -> SiLU -> conv3x3 -> BatchNorm -> SiLU -> 2x2 average
    pool; then global average pool -> Linear -> SiLU (the features) -> Linear (the logits)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers, channels = [], config.channels
        for width in config.widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU(),
                       nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.SiLU(), nn.AvgPool2d(2, ceil_mode=True)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.features = nn.Sequential(nn.Linear(channels, config.feature_dim), nn.SiLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes + config.reject_class)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.body(x).mean(dim=(2, 3)))
        return features, self.head(features)


def corrupt(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images of the data made into non-examples of it, for the reject class, (B, C, H, W) in
    [-1, 1]: a third drowned in Gaussian noise (sigma in [0.35, 1], variance preserving), a third
    cut into a 4x4 grid of tiles and shuffled (strokes that form no character), a third shuffled
    and lifted onto a grey background; a third of the shuffled ones are noised too. These are the
    failure modes of an undertrained generator."""
    b = x.shape[0]
    u = lambda *shape: torch.rand(shape, generator=generator)  # noqa: E731
    kind = torch.randint(3, (b,), generator=generator)
    out = x.clone()
    # Tiles shuffled: a random permutation of the 4x4 grid per image.
    h, w = x.shape[-2] // 4 * 4, x.shape[-1] // 4 * 4
    tiles = x[..., :h, :w].unfold(2, h // 4, h // 4).unfold(3, w // 4, w // 4)  # B, C, 4, 4, h/4, w/4
    tiles = tiles.reshape(b, x.shape[1], 16, h // 4, w // 4)
    order = torch.argsort(u(b, 16), dim=1)
    shuffled = tiles[torch.arange(b)[:, None], :, order].transpose(1, 2)  # B, C, 16, h/4, w/4
    shuffled = shuffled.reshape(b, x.shape[1], 4, 4, h // 4, w // 4).permute(0, 1, 2, 4, 3, 5).reshape(b, x.shape[1], h, w)
    tiled = kind != 0
    out[tiled, :, :h, :w] = shuffled[tiled]
    # Noise: kind 0 always, the others one time in three.
    sigma = (0.35 + 0.65 * u(b)).view(b, 1, 1, 1)
    noisy = (kind == 0) | (u(b) < 1 / 3)
    noised = (1 - sigma**2).sqrt() * out + sigma * torch.randn(out.shape, generator=generator)
    out = torch.where(noisy.view(b, 1, 1, 1), noised, out)
    # Grey background: the black level raised to a grey in [0.25, 0.6] of the range, kind 2 only.
    grey = (0.25 + 0.35 * u(b)).view(b, 1, 1, 1)
    lifted = (out + 1) / 2 * (1 - grey) + grey
    out = torch.where((kind == 2).view(b, 1, 1, 1), lifted * 2 - 1, out)
    return out.clamp(-1, 1)


def train_classifier(
    data_config: DataConfig, out: Path, *, epochs: int = 8, batch_size: int = 128, lr: float = 2e-3,
    seed: int = 0, progress: bool = True, reject_class: bool = True, flip: bool = False, device: str | torch.device = "cpu",
) -> dict:
    """Train on a labelled source with 10% held out; write classifier.safetensors and
    classifier.json (config, normalisation, validation accuracy) to `out`; return that JSON.

    With `reject_class`, every batch also holds a quarter as many corrupted images (`corrupt`)
    labelled "not a data image", so noise and scribbles are not called digits with confidence.
    `flip` mirrors training images at random (photos; not digits). The network trains on `device`;
    the batches and their corruption are drawn on the CPU, so a seed gives the same data anywhere."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    data_config = dataclasses.replace(data_config, validation_fraction=data_config.validation_fraction or 0.1, flip=flip)
    data = load_images(data_config, progress=progress)
    if data.labels is None:
        raise ValueError(f"a classifier needs labels, and {data_config.source!r} has none (use class folders or a labelled set)")
    num_classes = int(data.labels.max()) + 1
    config = ClassifierConfig(data.channels, data.size, num_classes, reject_class=reject_class)
    torch.manual_seed(seed)
    net = Classifier(config).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    total = epochs * (len(data.train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total, 1))
    with tqdm(total=total, desc="training classifier", disable=not progress) as bar:
        for _ in range(epochs):
            net.train()
            for x, labels in data.batches(batch_size, generator=generator):
                shift = torch.randint(-2, 3, (2,), generator=generator).tolist()  # small translations
                x = torch.roll(x, shifts=shift, dims=(2, 3))
                if reject_class:
                    fakes = corrupt(x[: max(1, len(x) // 4)], generator)
                    x = torch.cat([x, fakes])
                    labels = torch.cat([labels, torch.full((len(fakes),), num_classes, dtype=labels.dtype)])
                loss = F.cross_entropy(net(x.to(device))[1], labels.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    correct, rejected = 0, 0
    with torch.no_grad():
        for x, labels in data.batches(256, generator=generator, split="validation", drop_last=False):
            correct += int((net(x.to(device))[1].argmax(1).cpu() == labels).sum())
            if reject_class:
                rejected += int((net(corrupt(x, generator).to(device))[1].argmax(1) == num_classes).sum())
    accuracy = correct / max(len(data.validation), 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".classifier.safetensors.tmp"
    save_file({k: v.cpu().contiguous() for k, v in net.state_dict().items()}, tmp)
    tmp.replace(out / "classifier.safetensors")
    info = {
        "config": dataclasses.asdict(config),
        "normalisation": dataclasses.asdict(data.normalisation),
        "validation_accuracy": accuracy,
        "validation_corrupted_rejected": rejected / max(len(data.validation), 1) if reject_class else None,
        "data": dataclasses.asdict(data_config),
        "class_names": data.class_names,
    }
    atomic_write_text(out / "classifier.json", json.dumps(info, indent=2) + "\n")
    return info


class ClassifierFeatures:
    """Features and class probabilities from a classifier written by `train_classifier`."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu"):
        folder = Path(folder)
        if not (folder / "classifier.json").exists():
            raise ValueError(f"{folder} holds no classifier; train one with pixel-diffusion train-classifier --data SOURCE --out {folder}")
        info = json.loads((folder / "classifier.json").read_text())
        raw = info["config"]
        self.config = ClassifierConfig(raw["channels"], tuple(raw["image_size"]), raw["num_classes"], tuple(raw["widths"]),
                                       raw["feature_dim"], raw.get("reject_class", False))
        self.normalisation = Normalisation(**info["normalisation"])
        self.net = Classifier(self.config)
        self.net.load_state_dict(load_weights(folder / "classifier.safetensors"))
        self.net.eval().to(device)
        self.device = device
        digest = hashlib.sha256((folder / "classifier.safetensors").read_bytes()).hexdigest()[:16]
        self.key = f"classifier-{digest}"
        self.info = info

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, C) -> (features (N, D), probabilities (N, K)), float64. With a reject
        class, the probabilities are the K data classes' shares of the softmax over K + 1, so an
        image the classifier rejects has no class with much probability."""
        images = np.asarray(images)
        c = self.config
        if images.ndim != 4 or images.shape[1:3] != c.image_size or images.shape[3] != c.channels:
            raise ValueError(f"the classifier takes images of {c.image_size[0]}x{c.image_size[1]}x{c.channels}; got {images.shape[1:]}")
        from tqdm.auto import tqdm

        features, probabilities = [], []
        for start in tqdm(range(0, len(images), batch_size), desc="classifier features", disable=len(images) <= 4 * batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).permute(0, 3, 1, 2)
            f, logits = self.net(self.normalisation.to_model(x).to(self.device))
            features.append(f.double().cpu())
            probabilities.append(logits.double().softmax(1)[:, : c.num_classes].cpu())
        return torch.cat(features).numpy(), torch.cat(probabilities).numpy()
