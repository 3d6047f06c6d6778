"""Metrics: closed forms, parity with torchmetrics, and the offline default."""

import math
import sys

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import sfs.metrics as metrics
from sfs.classifier import Classifier, ClassifierConfig
from sfs.metrics import (evaluate, extract_features, feature_stats, frechet_distance,
                         frechet_distance_from_stats, kid, mmd2_unbiased, precision_recall,
                         real_floor)



def gaussian_feats(n, d=8, shift=0.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def test_fd_of_a_set_with_itself_is_zero():
    f = gaussian_feats(500)
    assert abs(frechet_distance(f, f)) < 1e-8


def test_fd_closed_forms():
    D = 6
    mu1, mu2 = torch.zeros(D, dtype=torch.float64), torch.arange(D, dtype=torch.float64)
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    S = A @ A.T + torch.eye(D, dtype=torch.float64)
    # Same covariance: only the means count.
    assert frechet_distance_from_stats(mu1, S, mu2, S) == pytest.approx(float((mu1 - mu2).square().sum()))
    # Diagonal covariances: the trace term is sum (sqrt(a_i) - sqrt(b_i))^2.
    a, b = torch.rand(D, dtype=torch.float64) + 0.1, torch.rand(D, dtype=torch.float64) + 0.1
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance_from_stats(mu1, a.diag(), mu2, b.diag()) == pytest.approx(expected)


def test_fd_of_shifted_samples_is_the_squared_shift():
    f = gaussian_feats(2000)
    assert frechet_distance(f, f + 0.5) == pytest.approx(8 * 0.25, rel=1e-9)


def test_fd_matches_torchmetrics_and_a_complex_sqrtm():
    # Independent references: torchmetrics' FrechetInceptionDistance fed features through a
    # custom (identity) feature module, and tr sqrtm(S1 S2) from the complex eigenvalues of S1 S2.
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(nn.Module):
        num_features = 8

        def forward(self, x):
            return x

    a, b = gaussian_feats(300), gaussian_feats(400, shift=0.3, scale=1.5, seed=2)
    fid = FrechetInceptionDistance(feature=Identity())
    fid.update(a.float(), real=True)
    fid.update(b.float(), real=False)
    assert frechet_distance(a, b) == pytest.approx(float(fid.compute()), rel=1e-4)
    (m1, s1), (m2, s2) = feature_stats(a), feature_stats(b)
    tr = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    ref = float((m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * tr)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-9)


def test_kid_is_unbiased_mmd_with_cubic_kernel():
    from torchmetrics.image.kid import poly_mmd
    a, b = gaussian_feats(200), gaussian_feats(200, shift=0.2, seed=3)
    assert mmd2_unbiased(a, b) == pytest.approx(float(poly_mmd(a, b)), rel=1e-9)
    same = kid(gaussian_feats(600, seed=4), gaussian_feats(600, seed=5), 20, 300)
    diff = kid(gaussian_feats(600, seed=4), gaussian_feats(600, shift=0.5, seed=5), 20, 300)
    assert abs(same[0]) < 3 * same[1] + 1e-3
    assert diff[0] > 10 * max(same[1], 1e-3)


def test_precision_recall():
    f = gaussian_feats(500, d=4)
    assert precision_recall(f, f, k=3) == (1.0, 1.0)
    p_far, r_far = precision_recall(f, f + 3.0, k=3)
    assert p_far < 0.2 and r_far < 0.2
    # Mode dropping: fakes from half of the real data keep precision high, lose recall.
    p_half, r_half = precision_recall(f, f[f[:, 0] > 0], k=3)
    assert p_half > 0.9 and r_half < 0.75
    with pytest.raises(ValueError, match="k must be an int in"):
        precision_recall(f, f[:3], k=3)


def tiny_classifier():
    torch.manual_seed(0)
    return Classifier(ClassifierConfig(width=8, feature_dim=16)).eval()


def test_evaluate_and_real_floor_default_path_never_touches_inception(monkeypatch):
    def forbidden():
        raise AssertionError("the default path must not build Inception")
    monkeypatch.setattr(metrics, "_inception", forbidden)
    clf = tiny_classifier()
    g = torch.Generator().manual_seed(0)
    real = torch.rand(120, 1, 28, 28, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (120,), generator=g)
    out = evaluate(real[:60], real[60:], clf, labels[60:], kid_subsets=5, kid_subset_size=50)
    assert set(out) >= {"fd", "kid", "kid_std", "precision", "recall", "accuracy"}
    assert out["feature"] == "classifier" and 0 <= out["accuracy"] <= 1
    floor = real_floor(real, 60, clf, labels=labels, kid_subsets=5, kid_subset_size=50)
    assert floor["n_real"] == floor["n_fake"] == 60
    assert evaluate(real[:60], real[:60], clf, kid_subsets=2, kid_subset_size=50)["fd"] < 1e-6
    assert "torch_fidelity" not in sys.modules
    with pytest.raises(ValueError, match="n must be an int in"):
        real_floor(real, 61, clf)
    with pytest.raises(ValueError, match="feature must be one of"):
        extract_features(real, clf, feature="clip")


def test_kid_std_is_nan_when_every_subset_is_the_whole_set():
    a, b = gaussian_feats(100, seed=1), gaussian_feats(100, seed=2)
    mean_whole, std_whole = kid(a, b, 10, 1000)
    assert math.isnan(std_whole) and abs(mean_whole - mmd2_unbiased(a, b)) < 1e-8 * abs(mean_whole) + 1e-9
    mean_half, std_half = kid(a, b, 50, 50)
    assert std_half > 0 and abs(mean_half - mean_whole) < 4 * std_half


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.integers(2, 9), st.integers(2, 9), st.integers(1, 4), st.integers(0, 2**16))
def test_unbiased_mmd_matches_the_pairwise_sums_for_sets_of_any_sizes(m, n, D, seed):
    """Book eq. (9.2) written out pair by pair: each set's within-set mean is over its own
    m (m - 1) or n (n - 1) ordered pairs, the cross term over m n. Sizes m != n included."""
    x, y = gaussian_feats(m, D, seed=seed), gaussian_feats(n, D, shift=0.3, seed=seed + 1)

    def k(a, b):
        return float((a @ b / D + 1) ** 3)

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-9, abs=1e-9)
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_unbiased(y, x), rel=1e-12, abs=1e-12)
