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
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(self.body(x).mean(dim=(2, 3)))
        return features, self.head(features)


def train_classifier(
    data_config: DataConfig, out: Path, *, epochs: int = 8, batch_size: int = 128, lr: float = 2e-3,
    seed: int = 0, progress: bool = True,
) -> dict:
    """Train on a labelled source with 10% held out; write classifier.safetensors and
    classifier.json (config, normalisation, validation accuracy) to `out`; return that JSON."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    data_config = dataclasses.replace(data_config, validation_fraction=data_config.validation_fraction or 0.1, flip=False)
    data = load_images(data_config, progress=progress)
    if data.labels is None:
        raise ValueError(f"a classifier needs labels, and {data_config.source!r} has none (use class folders or a labelled set)")
    config = ClassifierConfig(data.channels, data.size, int(data.labels.max()) + 1)
    torch.manual_seed(seed)
    net = Classifier(config)
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
                loss = F.cross_entropy(net(x)[1], labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, labels in data.batches(256, generator=generator, split="validation", drop_last=False):
            correct += int((net(x)[1].argmax(1) == labels).sum())
    accuracy = correct / max(len(data.validation), 1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".classifier.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)
    tmp.replace(out / "classifier.safetensors")
    info = {
        "config": dataclasses.asdict(config),
        "normalisation": dataclasses.asdict(data.normalisation),
        "validation_accuracy": accuracy,
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
        self.config = ClassifierConfig(raw["channels"], tuple(raw["image_size"]), raw["num_classes"], tuple(raw["widths"]), raw["feature_dim"])
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
        """uint8 (N, H, W, C) -> (features (N, D), probabilities (N, K)), float64."""
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
            probabilities.append(logits.double().softmax(1).cpu())
        return torch.cat(features).numpy(), torch.cat(probabilities).numpy()
