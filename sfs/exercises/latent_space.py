"""Exercises for the latent-space chapter: the KL term of the autoencoder and the latent scale factor.

    from sfs.exercises import latent_space as check
    check.gaussian_kl_to_standard(my_kl)    # my_kl(mean, logvar), each (B, C, H, W) -> (B,), eq. (10.1)
    check.latent_scale_factor(my_scale)     # my_scale(latents (N, C, h, w)) -> a number, 1 / std
"""

from __future__ import annotations

import torch

from sfs.autoencoder import kl_diagonal_gaussian
from sfs.exercises.core import Case, Exercise, Mistake


def _at_boundary(case: Case) -> Case:
    """Mark a case as lying on a boundary of the input domain (``Case.boundary`` where the core
    has that field; an unused attribute where it has not)."""
    case.boundary = True
    return case


# -- 1. the KL of a diagonal Gaussian against N(0, I), book eq. (10.1) -----------------------------

def gaussian_kl_to_standard_solution(mean, logvar):
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example: (B, ...) and (B, ...) -> (B,).

    Book eq. (10.1): 1/2 sum over every latent dimension of (mean^2 + var - 1 - log var).
    """
    var = torch.exp(logvar)
    per_value = 0.5 * (mean ** 2 + var - 1 - logvar)   # (B, C, H, W)
    return per_value.reshape(per_value.shape[0], -1).sum(dim=1)   # (B,)


def _bracket(mean, logvar, var=None, log=None):
    """(B, ...) -> (B, D): the bracket of eq. (10.1) per latent value, with optional wrong parts."""
    var = torch.exp(logvar) if var is None else var
    log = logvar if log is None else log
    return (mean ** 2 + var - 1 - log).flatten(1)


def _kl_cases(gen):
    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale + shift
    zeros = torch.zeros(2, 4, 3, 3, dtype=torch.float64)
    return [Case((r(3, 4, 6, 6), r(3, 4, 6, 6, scale=0.8, shift=-1.0)), "latents (3, 4, 6, 6) of an encoder"),
            Case((r(5, 2, 4, 4, scale=2.0), r(5, 2, 4, 4, scale=0.5, shift=-3.0)),
                 "(5, 2, 4, 4), small variances"),
            Case((r(4, 8, scale=0.5), r(4, 8, scale=1.5)), "flat latents (4, 8)"),
            _at_boundary(Case((zeros, zeros.clone()), "q = N(0, I) itself: the KL must be 0"))]


gaussian_kl_to_standard = Exercise(
    "gaussian_kl_to_standard",
    reference=kl_diagonal_gaussian,
    cases=_kl_cases,
    solution=gaussian_kl_to_standard_solution,
    hint="Per latent value: 1/2 (mean^2 + var - 1 - log var) with var = exp(logvar); eq. (10.1) sums "
         "it over every dimension of one example (channels and positions), giving one number per "
         "example: shape (B,).",
    broadcast_hint=None, rtol=1e-6, atol=1e-9,
    mistakes=[
        Mistake(lambda m, lv: _bracket(m, lv).sum(1),
                "off by a factor of 2: the bracket has a 1/2 in front of it."),
        Mistake(lambda m, lv: 0.5 * _bracket(m, lv, var=torch.exp(lv / 2)).sum(1),
                "exp(logvar) is the variance; you used exp(logvar / 2), the standard deviation."),
        Mistake(lambda m, lv: 0.5 * _bracket(m, lv, var=torch.exp(2 * lv), log=2 * lv).sum(1),
                "logvar is the log of the variance, not of the standard deviation: var = exp(logvar), "
                "and the log term is logvar itself."),
        Mistake(lambda m, lv: 0.5 * (_bracket(m, lv) + 1).sum(1),
                "the KL of N(0, I) against itself must be 0: the bracket needs its '- 1'."),
        Mistake(lambda m, lv: 0.5 * _bracket(m, lv, log=-lv).sum(1),
                "wrong sign on the log term: it is - log var (= - logvar)."),
        Mistake(lambda m, lv: 0.5 * _bracket(m, lv, var=torch.ones_like(lv), log=torch.zeros_like(lv)).sum(1),
                "you kept only the mean^2 term: the variance terms var - 1 - log var are part of the KL."),
        Mistake(lambda m, lv: 0.5 * _bracket(0 * m, lv).sum(1),
                "the mean^2 term is missing: a posterior whose mean is far from 0 costs KL too."),
        Mistake(lambda m, lv: 0.5 * _bracket(m, lv).mean(1),
                "you averaged over the latent dimensions; eq. (10.1) sums over them (the KLs of "
                "independent coordinates add)."),
        Mistake(lambda m, lv: 0.5 * _bracket(m, lv).sum(),
                "one KL per example: sum over every dimension except the batch (dim 0), not over the "
                "batch too; the result has shape (B,)."),
        Mistake(lambda m, lv: 0.5 * _bracket(m, lv).sum(1).mean(),
                "one KL per example: you averaged over the batch; return shape (B,)."),
        Mistake(lambda m, lv: 0.5 * (m ** 2 + torch.exp(lv) - 1 - lv),
                "sum the per-value terms over each example's dimensions: one number per example, shape (B,)."),
    ],
)


# -- 2. the latent scale factor ------------------------------------------------------------------

def latent_scale_factor_solution(latents):
    """1 / std of all the values of a set of latents (N, C, h, w): the number that gives them unit std."""
    return 1.0 / latents.flatten().std().item()


def _scale_cases(gen):
    def latents(n, std, mean, spread):  # channels with their own mean and scale, examples their own scale
        u = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64) - 0.5  # noqa: E731
        per_example = 1 + spread * u(n, 1, 1, 1)
        per_channel = 1 + 0.6 * u(1, 4, 1, 1)
        shift = mean + 0.5 * std * u(1, 4, 1, 1)
        return shift + std * per_example * per_channel * torch.randn(n, 4, 12, 12, generator=gen,
                                                                      dtype=torch.float64)
    raw = latents(32, 3.0, 0.5, 0.8)
    standardised = (raw - raw.mean()) / raw.std()
    return [Case((latents(64, 5.49, 0.6, 0.8),), "64 latents with std about 5.49, like Stable Diffusion's"),
            Case((latents(48, 0.7, -0.3, 1.2),), "48 latents with std below 1 and a negative mean"),
            Case((latents(96, 2.0, 1.5, 0.5),), "96 latents, mean 1.5"),
            _at_boundary(Case((standardised,), "latents already of mean 0 and std 1: the factor is 1"))]


latent_scale_factor = Exercise(
    "latent_scale_factor",
    reference=lambda z: 1.0 / float(z.std()),
    cases=_scale_cases,
    solution=latent_scale_factor_solution,
    hint="One standard deviation over every value of every latent (all examples, channels and "
         "positions together), and its reciprocal: multiplying the latents by the factor gives them "
         "unit standard deviation.",
    output="number", broadcast_hint=None, rtol=1e-4, atol=1e-8,
    mistakes=[
        Mistake(lambda z: float(z.std()),
                "that is the standard deviation itself; the scale factor is 1 / std (for Stable "
                "Diffusion 0.18215, from a std of about 5.49)."),
        Mistake(lambda z: 1.0 / float(z.var()),
                "that is 1 / variance; the scale factor is 1 / standard deviation (take the square root)."),
        Mistake(lambda z: 1.0 / float(z.pow(2).mean().sqrt()),
                "you divided by the root mean square; the standard deviation is taken around the mean "
                "(subtract it first, or use .std())."),
        Mistake(lambda z: 1.0 / float(z.flatten(1).std(dim=1).mean()),
                "one std over all values of all latents, not the average of per-example stds."),
        Mistake(lambda z: 1.0 / float(z.abs().mean()),
                "the mean absolute value is not the standard deviation: use .std() over all values."),
        Mistake(lambda z: 1.0 / float(z.transpose(0, 1).flatten(1).std(dim=1).mean()),
                "one std over all values together, not the average of per-channel stds."),
    ],
)

__all__ = ["gaussian_kl_to_standard", "latent_scale_factor"]
