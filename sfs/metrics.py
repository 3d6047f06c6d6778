"""Sample quality, offline: Frechet distance, KID, precision and recall, class accuracy.

Book chapter 9 ("Evaluation"). All distances are computed on features: by default the penultimate
layer (D = 128) of the MNIST / Fashion-MNIST ``sfs.classifier.Classifier`` shipped in models/, so no
download is ever needed. "FID" proper (Heusel et al. 2017) uses Inception-v3 features; it stays
available for readers online with ``feature="inception"`` (torchmetrics + torch-fidelity, which
download the weights), and is never touched otherwise; ``sfs.inception_fid.inception_fid`` computes
the standard FID itself. Numbers on different features, or at
different N, are not comparable: always report the real-vs-real floor at the same N
(``real_floor``).

    feats_real = extract_features(real_images, classifier)       # (N, D)
    feats_fake = extract_features(samples, classifier)           # (M, D)
    frechet_distance(feats_real, feats_fake)                     # book eq. (9.1)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sfs.validate import check_choice, check_finite, check_int, check_tensor

FEATURES = ("classifier", "inception")


def _check_feats(name: str, feats: torch.Tensor, min_n: int = 2) -> torch.Tensor:
    """Features must be a finite float tensor (N, D) with N >= min_n; returns them in float64."""
    check_tensor(name, feats, "float", (None, None), "(N, D)")
    if feats.shape[0] < min_n:
        raise ValueError(f"{name} must have shape (N, D) with N >= {min_n}, got {tuple(feats.shape)}")
    return check_finite(name, feats).double()


def _check_same_d(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} must have the same feature dimension D, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


# ----------------------------------------------------------------------------------------------
# Features.

@torch.no_grad()
def extract_features(images: torch.Tensor, classifier: nn.Module | None = None,
                     feature: str = "classifier", batch_size: int = 500) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] -> features (N, D), float64 on the CPU.

    ``feature="classifier"``: ``classifier.features`` (D = 128 for ``sfs.classifier.Classifier``).
    ``feature="inception"``: Inception-v3 pool features (D = 2048) through torchmetrics; needs
    ``torch-fidelity`` and downloads weights on first use (for readers online only).
    """
    check_choice("feature", feature, FEATURES)
    check_tensor("images", images, "float", ndim=4)
    check_finite("images", images)  # NaN samples would give NaN features and silent scores
    batch_size = check_int("batch_size", batch_size, low=1)
    if feature == "inception":
        net = _inception()
    elif classifier is None:
        raise ValueError("feature='classifier' needs a classifier, e.g. "
                         "sfs.classifier.load_classifier('mnist-classifier')[0]")
    else:
        net = classifier.eval()
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        if feature == "inception":  # uint8 RGB, resized inside torch-fidelity's network
            x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
            f = net(x.to(device))
        else:
            f = net.features(x.to(device))
        out.append(f.double().cpu())
    return torch.cat(out)


def _inception() -> nn.Module:
    """torchmetrics' Inception-v3 (pool3, 2048 features). Downloads its weights on first use; when
    torch-fidelity or the network is missing, ``sfs.inception_fid.load_metric`` says what to do."""
    from sfs.inception_fid import load_metric  # lazy: needs torch-fidelity
    return load_metric(download=True).inception.eval()


# ----------------------------------------------------------------------------------------------
# Frechet distance.

def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = _check_feats("feats", feats)
    mu = f.mean(0)
    centered = f - mu                                    # (N, D)
    return mu, centered.T @ centered / (f.shape[0] - 1)  # (D,), (D, D)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (D, D), via eigh."""
    vals, vecs = torch.linalg.eigh(a)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance_from_stats(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                                sigma2: torch.Tensor) -> float:
    """d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64.

    Book eq. (9.1); Frechet 1957, Dowson & Landau 1982; Heusel et al. 2017, eq. 6. The trace of the
    matrix square root is computed as tr((s1^(1/2) s2 s1^(1/2))^(1/2)), the same eigenvalues but of
    a symmetric matrix, so no complex parts appear. mu: (D,), sigma: (D, D).
    """
    mu1, mu2, s1, s2 = (check_finite(name, check_tensor(name, a, "float")).double()
                        for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"need mu (D,) and sigma (D, D) of the same D, got {tuple(mu1.shape)}, "
                         f"{tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)}")
    r1 = _sqrt_psd(s1)
    middle = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return float(d2.clamp(min=0))


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D), (M, D). Book eq. (9.1)."""
    return frechet_distance_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


# ----------------------------------------------------------------------------------------------
# Kernel Inception Distance.

def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / D + 1)^3. x: (m, D), y: (n, D).

    Book eq. (9.2); Binkowski et al. 2018, eq. 3 (diagonal terms left out of the within-set means,
    each set's mean over its own m (m - 1) or n (n - 1) pairs; m and n may differ).
    """
    x, y = _check_feats("x", x), _check_feats("y", y)
    _check_same_d("x", x, "y", y)
    (m, D), n = x.shape, y.shape[0]
    k_xx = (x @ x.T / D + 1) ** 3  # (m, m)
    k_yy = (y @ y.T / D + 1) ** 3  # (n, n)
    k_xy = (x @ y.T / D + 1) ** 3  # (m, n)
    return float((k_xx.sum() - k_xx.trace()) / (m * (m - 1)) + (k_yy.sum() - k_yy.trace()) / (n * (n - 1))
                 - 2 * k_xy.mean())


def kid(feats_a: torch.Tensor, feats_b: torch.Tensor, num_subsets: int = 100,
        subset_size: int = 1000, generator: torch.Generator | None = None) -> tuple[float, float]:
    """KID: mean and std of ``mmd2_unbiased`` over ``num_subsets`` random subsets of each set.

    Binkowski et al. 2018, sec. 3; subsets of ``min(subset_size, N, M)`` drawn without replacement
    with ``generator``. Unbiased: near 0 (possibly negative) for two samples of one distribution.
    When the subsets are the whole of both sets (``subset_size >= N`` and ``>= M``) every subset
    gives the same value: the std is then NaN, not 0 (choose ``subset_size`` below N for a spread).
    """
    a, b = _check_feats("feats_a", feats_a), _check_feats("feats_b", feats_b)
    _check_same_d("feats_a", a, "feats_b", b)
    num_subsets = check_int("num_subsets", num_subsets, low=1)
    m = min(check_int("subset_size", subset_size, low=2), len(a), len(b))
    g = generator or torch.Generator().manual_seed(0)
    vals = torch.tensor([mmd2_unbiased(a[torch.randperm(len(a), generator=g)[:m]],
                                       b[torch.randperm(len(b), generator=g)[:m]])
                         for _ in range(num_subsets)])
    whole = m == len(a) and m == len(b)
    return float(vals.mean()), float(vals.std()) if num_subsets > 1 and not whole else float("nan")


# ----------------------------------------------------------------------------------------------
# Precision and recall on k-NN manifolds.

def _knn_radii(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each feature (N, D) to its k-th nearest other feature: (N,)."""
    radii = []
    for i in range(0, len(feats), chunk):
        d = torch.cdist(feats[i:i + chunk], feats)  # (chunk, N); column i is the point itself (0)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
              chunk: int = 1024) -> float:
    """Fraction of points (M, D) inside at least one ball (centers (N, D), radii (N,))."""
    inside = [(torch.cdist(points[i:i + chunk], centers) <= radii[None, :]).any(1)
              for i in range(0, len(points), chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real_feats: torch.Tensor, fake_feats: torch.Tensor, k: int = 3
                     ) -> tuple[float, float]:
    """Improved precision and recall. Book eq. (9.3); Kynkaanniemi et al. 2019, eqs. 1-2.

    Each set's manifold is the union of balls around its points, each reaching the point's k-th
    nearest neighbour. Precision: share of fake samples inside the real manifold (fidelity);
    recall: share of real samples inside the fake manifold (diversity). Features (N, D), (M, D).
    """
    real, fake = _check_feats("real_feats", real_feats), _check_feats("fake_feats", fake_feats)
    _check_same_d("real_feats", real, "fake_feats", fake)
    k = check_int("k", k, 1, min(len(real), len(fake)) - 1,
                  hint=f"the upper end is min(N, M) - 1 for N={len(real)}, M={len(fake)}")
    precision = _coverage(fake, real, _knn_radii(real, k))
    recall = _coverage(real, fake, _knn_radii(fake, k))
    return precision, recall


# ----------------------------------------------------------------------------------------------
# Class accuracy, and everything at once.

@torch.no_grad()
def class_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int = 500) -> float:
    """Share of images (N, C, H, W) the classifier assigns to the class they were sampled for (N,)."""
    check_tensor("images", images, "float", ndim=4)
    check_tensor("labels", labels, "int", (len(images),), "(N,)")
    batch_size = check_int("batch_size", batch_size, low=1)
    classifier.eval()
    device = next(classifier.parameters()).device
    preds = torch.cat([classifier(images[i:i + batch_size].to(device)).argmax(1).cpu()
                       for i in range(0, len(images), batch_size)])
    return float((preds == labels.cpu()).double().mean())


def evaluate(real_images: torch.Tensor, fake_images: torch.Tensor, classifier: nn.Module,
             labels: torch.Tensor | None = None, k: int = 3, feature: str = "classifier",
             kid_subsets: int = 100, kid_subset_size: int = 1000,
             generator: torch.Generator | None = None) -> dict:
    """FD, KID, precision, recall (and class accuracy when ``labels`` (M,) are given) of
    ``fake_images`` (M, C, H, W) against ``real_images`` (N, C, H, W), both in [-1, 1]."""
    fr = extract_features(real_images, classifier, feature)
    ff = extract_features(fake_images, classifier, feature)
    kid_mean, kid_std = kid(fr, ff, kid_subsets, kid_subset_size, generator)
    precision, recall = precision_recall(fr, ff, k)
    out = dict(fd=frechet_distance(fr, ff), kid=kid_mean, kid_std=kid_std,
               precision=precision, recall=recall, n_real=len(fr), n_fake=len(ff), feature=feature)
    if labels is not None:
        out["accuracy"] = class_accuracy(classifier, fake_images, labels)
    return out


def real_floor(real_images: torch.Tensor, n: int, classifier: nn.Module,
               other_images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               generator: torch.Generator | None = None, **kwargs) -> dict:
    """The scores of real data against real data at the same N: what a perfect model would get.

    Two disjoint random draws of ``n`` from ``real_images`` (N, C, H, W), or one draw of ``n`` from
    each of ``real_images`` and ``other_images`` (e.g. train vs test). The second draw plays the
    samples; with ``labels`` (N,) of ``real_images`` the class accuracy is that of the real draw.
    """
    g = generator or torch.Generator().manual_seed(0)
    n = check_int("n", n, 2, len(real_images) // (1 if other_images is not None else 2),
                  hint=f"for {len(real_images)} real images")
    perm = torch.randperm(len(real_images), generator=g)
    a = real_images[perm[:n]]
    if other_images is None:
        idx_b = perm[n:2 * n]
        b, b_labels = real_images[idx_b], (labels[idx_b] if labels is not None else None)
    else:
        if len(other_images) < n:
            raise ValueError(f"n must be <= len(other_images) = {len(other_images)}, got n={n}")
        b = other_images[torch.randperm(len(other_images), generator=g)[:n]]
        b_labels = None
    return evaluate(a, b, classifier, b_labels, generator=g, **kwargs)
