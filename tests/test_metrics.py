import math

import numpy as np
import pytest
import torch

from pixel_diffusion.metrics import FeatureStats, classifier_scores, fid, frechet_distance, kid, precision_recall

RNG = np.random.default_rng(0)


def _gaussian(n, mean, std):
    return mean + std * RNG.standard_normal((n, len(mean)))


def test_fid_of_a_set_with_itself_is_zero():
    x = _gaussian(2000, np.zeros(16), np.ones(16))
    assert abs(fid(x, x)) < 1e-8


def test_fid_of_gaussians_equals_the_closed_form():
    # Diagonal covariances: FID = |mu_1 - mu_2|^2 + sum (s_1 - s_2)^2, in any rotated basis.
    d = 12
    mu_1, mu_2 = RNG.standard_normal(d), RNG.standard_normal(d)
    s_1, s_2 = RNG.uniform(0.5, 2, d), RNG.uniform(0.5, 2, d)
    expected = ((mu_1 - mu_2) ** 2).sum() + ((s_1 - s_2) ** 2).sum()
    q, _ = np.linalg.qr(RNG.standard_normal((d, d)))
    a = FeatureStats(q @ mu_1, q @ np.diag(s_1**2) @ q.T, 10**6)
    b = FeatureStats(q @ mu_2, q @ np.diag(s_2**2) @ q.T, 10**6)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # From samples, within sampling error.
    x, y = _gaussian(200000, mu_1, s_1), _gaussian(200000, mu_2, s_2)
    assert fid(x, y) == pytest.approx(expected, rel=0.02, abs=0.01)


def test_fid_and_kid_equal_torchmetrics_on_the_same_features():
    torchmetrics_fid = pytest.importorskip("torchmetrics.image.fid")
    torchmetrics_kid = pytest.importorskip("torchmetrics.image.kid")
    x = torch.from_numpy(_gaussian(500, np.zeros(8), np.ones(8)))
    y = torch.from_numpy(_gaussian(400, np.full(8, 0.3), np.full(8, 1.2)))
    a, b = FeatureStats.of(x), FeatureStats.of(y)
    theirs = torchmetrics_fid._compute_fid(*(torch.from_numpy(v) for v in (a.mean, a.covariance, b.mean, b.covariance)))
    assert fid(x, y) == pytest.approx(float(theirs), rel=1e-7)
    subset = x[:400]
    mean, std = kid(subset, y, subsets=1, subset_size=400)
    assert mean == pytest.approx(float(torchmetrics_kid.poly_mmd(subset, y)), rel=1e-7) and std == 0.0


def test_kid_of_one_distribution_is_zero_within_its_spread():
    x, y = _gaussian(3000, np.zeros(32), np.ones(32)), _gaussian(3000, np.zeros(32), np.ones(32))
    mean, std = kid(x, y, subsets=50, subset_size=500)
    assert abs(mean) < 3 * std
    shifted_mean, shifted_std = kid(x, y + 0.5, subsets=50, subset_size=500)
    assert shifted_mean > 10 * shifted_std


def test_precision_and_recall_see_quality_and_coverage():
    real = _gaussian(2000, np.zeros(4), np.ones(4))
    same = _gaussian(2000, np.zeros(4), np.ones(4))
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    far = same + 20
    assert precision_recall(real, far) == (0.0, 0.0)
    collapsed = _gaussian(2000, np.zeros(4), np.full(4, 0.1))  # good samples, little variety
    p, r = precision_recall(real, collapsed)
    assert p > 0.95 and r < 0.3


def test_classifier_scores():
    probabilities = torch.tensor([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.99, 0.01]])
    scores = classifier_scores(probabilities, requested=torch.tensor([0, 1, 1, 0]))
    assert scores["confidence"] == 0.75
    assert scores["accuracy"] == 0.75
    share = np.array([3, 1]) / 4
    assert scores["class_balance"] == pytest.approx(-(share * np.log(share)).sum() / math.log(2))
    assert classifier_scores(torch.eye(10))["class_balance"] == pytest.approx(1.0)


def test_feature_stats_round_trip_and_errors(tmp_path):
    stats = FeatureStats.of(_gaussian(50, np.zeros(3), np.ones(3)))
    stats.save(tmp_path / "s.npz")
    again = FeatureStats.load(tmp_path / "s.npz")
    assert np.array_equal(again.mean, stats.mean) and np.array_equal(again.covariance, stats.covariance) and again.count == 50
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        FeatureStats.of(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(stats, FeatureStats.of(np.zeros((5, 4))))
    with pytest.raises(ValueError, match="one D"):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))


def test_precision_and_recall_in_float32_match_a_float64_count():
    """The float32 k-NN balls give the counts of a plain float64 computation on Inception-sized features."""
    rng = np.random.default_rng(1)
    scales = rng.uniform(0.5, 2, 256)
    real = rng.standard_normal((600, 256)) * scales
    fake = rng.standard_normal((500, 256)) * scales + 0.4  # shifted a little: about 30% inside either way

    def float64_share(points, centres, k=3):
        within = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
        radii = np.sort(within, axis=1)[:, k]  # the k-th neighbour; column 0 is the point itself
        to_centres = np.sqrt(((points[:, None] - centres[None]) ** 2).sum(-1))
        return (to_centres <= radii[None]).any(1).mean()

    precision, recall = precision_recall(real, fake)
    assert abs(precision - float64_share(fake, real)) <= 1 / len(fake)  # at most one point on a ball's edge
    assert abs(recall - float64_share(real, fake)) <= 1 / len(real)
    assert 0.05 < precision < 0.95 and 0.05 < recall < 0.95  # a case where the balls decide


def test_statistics_files_load_in_both_forms(tmp_path):
    x = _gaussian(50, np.zeros(8), np.ones(8))
    stats = FeatureStats.of(x)
    stats.save(tmp_path / "ours.npz")
    np.savez(tmp_path / "ttur.npz", mu=stats.mean.astype(np.float32), sigma=stats.covariance)
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    assert FeatureStats.in_file(tmp_path / "ours.npz") and FeatureStats.in_file(tmp_path / "ttur.npz")
    assert not FeatureStats.in_file(tmp_path / "images.npz") and not FeatureStats.in_file(tmp_path / "missing.npz")
    assert frechet_distance(FeatureStats.load(tmp_path / "ttur.npz"), stats) < 1e-5
    assert frechet_distance(FeatureStats.load(tmp_path / "ours.npz"), stats) == pytest.approx(0, abs=1e-9)
