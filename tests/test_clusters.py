"""k-means cluster labels for unlabelled images, and training and sampling on them."""

import json

import numpy as np
import pytest
import torch

from pixel_diffusion.clusters import cluster_labels, draw_clusters, kmeans, pixel_features
from pixel_diffusion.config import apply_overrides
from pixel_diffusion.data import DataConfig, load_images
from pixel_diffusion.presets import preset
from pixel_diffusion.runs import ModelSpec, load_run
from pixel_diffusion.training import train

TINY = [
    "data.source=digits",
    'network_options={"widths": [8, 16], "groups": 4, "embedding_dim": 8, "embedding_mlp_dim": 16}',
    "batch_size=32", "preview_every=0", "progress=false", "precision=fp32", "lr_warmup=0", "clusters=6",
]


def blobs(sizes=(40, 25, 10), spread=0.1, seed=0):
    """Points around far-apart centres in 5-D, and which centre each came from."""
    rng = np.random.default_rng(seed)
    centres = 10 * np.eye(5)[: len(sizes)]
    points = np.concatenate([c + spread * rng.standard_normal((n, 5)) for c, n in zip(centres, sizes)])
    return torch.from_numpy(points), np.repeat(np.arange(len(sizes)), sizes)


def test_kmeans_finds_separated_blobs():
    points, truth = blobs()
    assignment, centres = kmeans(points, 3, seed=1)
    # One cluster per blob, whatever the numbering.
    assert {(int(a), int(t)) for a, t in zip(assignment, truth)} == {(int(assignment[truth == t][0]), t) for t in range(3)}
    assert len(set(assignment.tolist())) == 3


def test_kmeans_ends_at_a_fixed_point_of_lloyds_algorithm():
    points = torch.from_numpy(np.random.default_rng(3).standard_normal((300, 4)))
    assignment, centres = kmeans(points, 7, seed=0)
    assert torch.equal(assignment, torch.cdist(points, centres).argmin(1))  # each point at its nearest centre
    for k in range(7):
        assert torch.allclose(centres[k], points[assignment == k].mean(0))  # each centre the mean of its points


def test_kmeans_is_reproducible_and_refuses_a_bad_k():
    points, _ = blobs(spread=3.0)
    assert torch.equal(kmeans(points, 4, seed=5)[0], kmeans(points, 4, seed=5)[0])
    with pytest.raises(ValueError, match="1 <= k <= the 75 points"):
        kmeans(points, 76)


def test_cluster_labels_count_from_the_largest_cluster_down():
    points, truth = blobs(sizes=(10, 40, 25))
    labels = cluster_labels(points, 3)
    assert torch.bincount(labels).tolist() == [40, 25, 10]


def test_pixel_features_average_large_images_down():
    images = torch.randint(0, 256, (3, 3, 64, 48), dtype=torch.uint8)
    features = pixel_features(images)  # colour: 16 x 16 x 3 = 768 <= 1024 dimensions
    assert features.shape == (3, 3 * 16 * 16)
    assert torch.allclose(features.mean(1), images.double().div(255).mean((1, 2, 3)).float(), atol=1e-5)
    assert pixel_features(images[..., :8, :8]).shape == (3, 3 * 8 * 8)  # small images stay as they are
    assert pixel_features(images[:, :1, :28, :28]).shape == (3, 28 * 28)  # digits stay whole
    assert pixel_features(images[:, :1]).shape == (3, 32 * 32)


def test_minibatch_kmeans_on_many_points_finds_the_blobs(monkeypatch):
    from pixel_diffusion import clusters

    monkeypatch.setattr(clusters, "MINI_BATCH_ABOVE", 50)
    points, truth = blobs()
    assignment, centres = kmeans(points, 3, seed=1)
    assert {(int(a), int(t)) for a, t in zip(assignment, truth)} == {(int(assignment[truth == t][0]), t) for t in range(3)}
    assert torch.equal(assignment, torch.cdist(points, centres).argmin(1))


def test_draw_clusters_follows_the_prior_and_keeps_each_sample_for_a_seed():
    prior = [0.5, 0.3, 0.15, 0.05]
    many = draw_clusters(prior, 20000, seed=7)
    assert torch.equal(draw_clusters(prior, 10, seed=7), many[:10])
    share = torch.bincount(many, minlength=4).double() / 20000
    tolerance = 4 * np.sqrt(np.array(prior) * (1 - np.array(prior)) / 20000)  # 4 binomial standard deviations
    assert np.all(np.abs(share.numpy() - prior) < tolerance)


def test_clusters_need_a_positive_count_and_exclude_labels():
    with pytest.raises(ValueError, match="clusters must be 0"):
        apply_overrides(preset("mnist"), ["clusters=-1"])
    with pytest.raises(ValueError, match="set one of them"):
        apply_overrides(preset("mnist"), ["conditional=true"])


def test_a_run_on_clusters_keeps_its_labels_and_samples_from_their_shares(tmp_path):
    train(apply_overrides(preset("mnist"), [*TINY, "steps=2", "checkpoint_every=2"]), tmp_path)
    saved = json.loads((tmp_path / "clusters.json").read_text())
    assert saved["k"] == 6 and len(saved["labels"]) == 1797
    # A resumed run trains on the saved labels, even if finding them again would give others.
    saved["labels"] = [5 - label for label in saved["labels"]]
    (tmp_path / "clusters.json").write_text(json.dumps(saved))
    train(apply_overrides(preset("mnist"), [*TINY, "steps=4", "checkpoint_every=2"]), tmp_path)
    assert json.loads((tmp_path / "clusters.json").read_text()) == saved

    run = load_run(tmp_path)
    assert run.spec.num_classes == 6
    # The prior is each cluster's share of the training split, of the labels the run trained on.
    data = load_images(DataConfig(**json.loads((tmp_path / "config.json").read_text())["train"]["data"]), progress=False)
    shares = np.bincount(np.array(saved["labels"])[data.train], minlength=6) / len(data.train)
    assert run.spec.label_prior == pytest.approx(shares.tolist())
    # Without labels, each sample's cluster is drawn from the prior with the sampling seed.
    drawn = draw_clusters(list(run.spec.label_prior), 6, seed=3)
    implicit = run.sample(6, steps=3, seed=3, progress=False)
    explicit = run.sample(6, steps=3, seed=3, labels=drawn, progress=False)
    other = run.sample(6, steps=3, seed=3, labels=(drawn + 1) % 6, progress=False)
    assert np.array_equal(implicit, explicit)
    assert not np.array_equal(implicit, other)


def test_more_clusters_than_training_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"clusters=5000 needs at least as many training images; the data has \d+"):
        train(apply_overrides(preset("mnist"), [*TINY, "clusters=5000", "steps=1"]), tmp_path)


def test_only_runs_on_labels_draw_the_classes_in_turn(tmp_path):
    train(apply_overrides(preset("mnist"), [*TINY, "steps=1"]), tmp_path)
    spec = load_run(tmp_path).spec
    assert spec.classes_in_turn(7) is None  # clusters: drawn by their shares
    on_labels = ModelSpec.from_dict({**spec.to_dict(), "label_prior": None})
    assert on_labels.classes_in_turn(7).tolist() == [0, 1, 2, 3, 4, 5, 0]
    assert ModelSpec.from_dict({**spec.to_dict(), "label_prior": None, "num_classes": None}).classes_in_turn(7) is None
