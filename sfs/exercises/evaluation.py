"""Exercises for the evaluation chapter: feature statistics and the Frechet distance (FID's formula).

    from sfs.exercises import evaluation as check
    check.gaussian_stats(my_stats)          # my_stats(features (N, D)) -> (mu (D,), sigma (D, D))
    check.frechet_distance(my_fd)           # my_fd(mu1, sigma1, mu2, sigma2) -> a number
"""

from __future__ import annotations

import torch

from sfs.exercises.core import Case, Exercise, Mistake


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def _fd(mu1, s1, mu2, s2, two=2.0, sqrt=True, squared=True):
    """|mu1 - mu2|^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)), with tr (s1 s2)^(1/2) = tr (r s2 r), r = s1^(1/2)."""
    r = _sqrtm_psd(s1)
    cross = torch.trace(_sqrtm_psd(r @ s2 @ r)) if sqrt else torch.trace(s1 @ s2)
    d = (mu1 - mu2).pow(2).sum()
    return float((d if squared else d.sqrt()) + torch.trace(s1) + torch.trace(s2) - two * cross)


# -- 1. mean and covariance of features -----------------------------------------------------------

def gaussian_stats_solution(features):
    """Mean (D,) and unbiased covariance (D, D) of N feature vectors (N, D), as FID fits them."""
    mu = features.mean(dim=0)
    centred = features - mu
    sigma = centred.T @ centred / (features.shape[0] - 1)
    return mu, sigma


def _stats_cases(gen):
    a = torch.randn(50, 4, generator=gen, dtype=torch.float64) @ torch.randn(4, 4, generator=gen, dtype=torch.float64)
    return [Case((a + 3.0,), "50 features of dimension 4, mean 3"),
            Case((torch.randn(7, 3, generator=gen, dtype=torch.float64) * 2 - 1,), "7 features of dimension 3"),
            Case((torch.randn(2, 3, generator=gen, dtype=torch.float64),),
                 "N = 2 features, the fewest an unbiased covariance allows", boundary=True)]


gaussian_stats = Exercise(
    "gaussian_stats",
    reference=lambda f: (f.mean(0), torch.cov(f.T)),
    cases=_stats_cases,
    solution=gaussian_stats_solution,
    hint="Rows are samples, columns are feature dimensions. mu is the column mean (D,); sigma is the "
         "(D, D) covariance with the unbiased 1 / (N - 1), as numpy.cov and torch.cov compute it.",
    output="tensors", output_names=("mu", "sigma"), broadcast_hint=None, rtol=1e-6, atol=1e-9,
    mistakes=[
        Mistake(lambda f: (f.mean(0), torch.cov(f.T, correction=0)),
                "you divided by N; the unbiased covariance divides by N - 1 (torch.cov's default)."),
        Mistake(lambda f: (f.mean(0), torch.cov(f)),
                "your covariance is (N, N): rows are samples, so take the covariance of the columns "
                "(torch.cov(features.T))."),
        Mistake(lambda f: (f.mean(0), f.T @ f / (f.shape[0] - 1)),
                "center the features before the product: subtract the mean from every row."),
        Mistake(lambda f: (f.mean(1), torch.cov(f.T)), "your mean is over the wrong axis: average over "
                "samples (dim 0), giving one value per feature dimension."),
    ],
)


# -- 2. the Frechet distance ---------------------------------------------------------------------

def frechet_distance_solution(mu1, sigma1, mu2, sigma2):
    """d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) (Heusel et al. 2017, FID).

    tr (sigma1 sigma2)^(1/2) is the sum of the square roots of the eigenvalues of sigma1 sigma2,
    which are real and >= 0 (it is similar to the PSD matrix sigma1^(1/2) sigma2 sigma1^(1/2)).
    """
    eigvals = torch.linalg.eigvals(sigma1 @ sigma2).real.clamp(min=0)
    tr_sqrt = eigvals.sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_sqrt)


def _psd(d, gen):
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _fd_cases(gen):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    mu, s = r(3), _psd(3, gen)
    return [Case((r(4), _psd(4, gen), r(4), _psd(4, gen)), "two random Gaussians in 4-D"),
            Case((mu, s, mu.clone(), s.clone()), "two equal Gaussians (distance 0)", boundary=True),
            Case((r(5), _psd(5, gen), r(5) + 2, _psd(5, gen) * 3), "5-D, different scales")]


frechet_distance = Exercise(
    "frechet_distance",
    reference=_fd,
    cases=_fd_cases,
    solution=frechet_distance_solution,
    hint="|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)). The last term needs a "
         "matrix square root, not an elementwise one: use the eigenvalues of sigma1 @ sigma2.",
    # atol: at distance 0 the answer is a cancellation of traces of about 10, so float32
    # arithmetic leaves errors near 1e-6 (4.8e-7 measured on an Intel Xeon, 0 on an AMD EPYC,
    # where LAPACK takes another path); each mistake below is off by 2 or more on some case
    output="number", broadcast_hint=None, rtol=1e-5, atol=1e-5,
    mistakes=[
        Mistake(lambda m1, s1, m2, s2: _fd(m1, s1, m2, s2, sqrt=False),
                "off by a square root: the cross term is tr((sigma1 sigma2)^(1/2)), a matrix square root."),
        Mistake(lambda m1, s1, m2, s2: float((m1 - m2).pow(2).sum() + torch.trace(s1 + s2 - 2 * (s1 * s2).sqrt())),
                "(sigma1 * sigma2).sqrt() is an elementwise square root; the formula needs the matrix "
                "square root (e.g. from the eigenvalues of sigma1 @ sigma2)."),
        Mistake(lambda m1, s1, m2, s2: _fd(m1, s1, m2, s2, two=1.0),
                "the cross term has a factor 2: - 2 tr((sigma1 sigma2)^(1/2))."),
        Mistake(lambda m1, s1, m2, s2: _fd(m1, s1, m2, s2, squared=False),
                "the mean term is the squared distance |mu1 - mu2|^2, not |mu1 - mu2|."),
        Mistake(lambda m1, s1, m2, s2: float((m1 - m2).pow(2).sum()),
                "you kept only the means; the covariance terms tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)) "
                "are part of the distance."),
    ],
)

__all__ = ["gaussian_stats", "frechet_distance"]
