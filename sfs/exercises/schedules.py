"""Exercises for the noise-schedules chapter: the cosine alpha_bar, betas from alpha_bar, the SNR.

    from sfs.exercises import schedules as check
    check.cosine_alpha_bar(my_cosine_alpha_bar)
"""

from __future__ import annotations

import math

import torch

from sfs.exercises.core import Case, Exercise, Mistake
from sfs.schedules import betas_from_alpha_bar, cosine_schedule


# -- 1. the cosine schedule --------------------------------------------------------------------

def cosine_alpha_bar_solution(T, s=0.008):
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t / T + s) / (1 + s) * pi / 2), at t = 0..T: (T + 1,).

    Nichol & Dhariwal 2021, eq. 17.
    """
    u = torch.linspace(0, 1, T + 1, dtype=torch.float64)          # t / T for t = 0, 1, ..., T
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f / f[0]


def _cosine(T, s=0.008, square=2, normalise=True, offset=True, n=None):
    u = torch.linspace(0, 1, (T + 1) if n is None else n, dtype=torch.float64)
    arg = (u + s) / (1 + s) if offset else u
    f = torch.cos(arg * math.pi / 2) ** square
    return f / f[0] if normalise else f


cosine_alpha_bar = Exercise(
    "cosine_alpha_bar",
    reference=lambda T, s=0.008: _cosine(T, s),
    cases=lambda gen: [Case((1000, 0.008), "T = 1000, s = 0.008"), Case((10, 0.1), "T = 10, s = 0.1"),
                       Case((4, 0.0), "T = 4, s = 0 (no offset)", boundary=True),
                       Case((1, 0.02), "T = 1, s = 0.02: only t = 0 and t = T", boundary=True)],
    solution=cosine_alpha_bar_solution,
    hint="Evaluate f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2) at the T + 1 points t = 0, 1, ..., T "
         "(torch.linspace(0, 1, T + 1)) and divide by f(0) so that alpha_bar starts at exactly 1.",
    broadcast_hint=None, rtol=1e-5, atol=1e-7,
    mistakes=[
        Mistake(lambda T, s=0.008: _cosine(T, s, normalise=False),
                "wrong at t = 0: alpha_bar(0) must be exactly 1. Divide f(t) by f(0)."),
        Mistake(lambda T, s=0.008: _cosine(T, s, square=1),
                "off by a square root: f is the cosine squared, cos(...) ** 2."),
        Mistake(lambda T, s=0.008: _cosine(T, s, offset=False),
                "the offset s is missing: use (t / T + s) / (1 + s) inside the cosine, which keeps the "
                "first betas from being vanishingly small."),
        Mistake(lambda T, s=0.008: _cosine(T, s, n=T),
                "you returned T values; alpha_bar is needed at the T + 1 times t = 0, 1, ..., T."),
        Mistake(lambda T, s=0.008: torch.sin(torch.linspace(0, 1, T + 1, dtype=torch.float64).add(s).div(1 + s) * math.pi / 2) ** 2
                / torch.sin(torch.tensor(s / (1 + s) * math.pi / 2, dtype=torch.float64)) ** 2,
                "sine instead of cosine: alpha_bar must fall from 1 to 0, so it is cos^2."),
    ],
)


# -- 2. betas from alpha_bar -------------------------------------------------------------------

def betas_solution(alpha_bar, max_beta=0.999):
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped at max_beta: (T + 1,) -> (T,)."""
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def _betas_cases(gen):
    return [Case((_cosine(1000), 0.999), "cosine alpha_bar, T = 1000, max_beta = 0.999"),
            Case((_cosine(20, 0.05), 0.5), "cosine alpha_bar, T = 20, max_beta = 0.5"),
            Case((torch.cumprod(torch.cat([torch.ones(1, dtype=torch.float64),
                                           1 - torch.rand(9, generator=gen, dtype=torch.float64) * 0.2]), 0), 0.999),
                 "a random decreasing alpha_bar, T = 9 (no beta reaches max_beta)"),
            Case((_cosine(1, 0.1), 0.9), "T = 1, max_beta = 0.9: the one beta is clipped", boundary=True)]


betas = Exercise(
    "betas",
    reference=lambda ab, max_beta=0.999: betas_from_alpha_bar(ab, max_beta),
    cases=_betas_cases,
    solution=betas_solution,
    hint="alpha_t = alpha_bar_t / alpha_bar_{t-1} (one step's share of the product), so "
         "beta_t = 1 - alpha_bar[1:] / alpha_bar[:-1]. Then clip at max_beta.",
    broadcast_hint=None, rtol=3e-5, atol=1e-7,  # the first cosine betas (4e-5) lose 3 digits in float32
    mistakes=[
        Mistake(lambda ab, m=0.999: 1 - ab[1:] / ab[:-1],
                "the last betas must be clipped at max_beta (alpha_bar reaches 0 at t = T, which makes "
                "beta_T = 1): use .clamp(max=max_beta)."),
        Mistake(lambda ab, m=0.999: (1 - ab[:-1] / ab[1:]).clamp(max=m),
                "the ratio is upside down: alpha_t = alpha_bar_t / alpha_bar_{t-1} <= 1, so betas come out "
                "negative your way."),
        Mistake(lambda ab, m=0.999: (1 - ab[1:]).clamp(max=m),
                "1 - alpha_bar_t is the total noise up to t; beta_t is one step's noise, "
                "1 - alpha_bar_t / alpha_bar_{t-1}."),
        Mistake(lambda ab, m=0.999: (1 - ab / torch.cat([ab[:1], ab[:-1]])).clamp(max=m),
                "you returned T + 1 values; there are T betas, one per step between consecutive alpha_bars."),
        Mistake(lambda ab, m=0.999: (ab[:-1] - ab[1:]).clamp(max=m),
                "a difference alpha_bar_{t-1} - alpha_bar_t is not beta_t; use the ratio, "
                "1 - alpha_bar_t / alpha_bar_{t-1}."),
    ],
)


# -- 3. the signal-to-noise ratio --------------------------------------------------------------

def snr_solution(alpha_bar):
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t): signal variance over noise variance, (T,)."""
    return alpha_bar / (1 - alpha_bar)


snr = Exercise(
    "snr",
    reference=lambda ab: ab / (1 - ab),
    cases=lambda gen: [Case((cosine_schedule(1000).alpha_bar.double(),), "cosine schedule, T = 1000"),
                       Case((torch.rand(7, generator=gen, dtype=torch.float64) * 0.98 + 0.01,), "7 random values"),
                       Case((torch.tensor([0.5, 2.0**-20, 1 - 2.0**-12], dtype=torch.float64),),
                            "alpha_bar = 0.5 (SNR 1), 2^-20 (almost pure noise), 1 - 2^-12 (almost clean)",
                            boundary=True)],
    solution=snr_solution,
    hint="x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps: the signal's variance is alpha_bar, "
         "the noise's is 1 - alpha_bar. The SNR is their ratio.",
    broadcast_hint=None, rtol=2e-6, atol=1e-9,
    mistakes=[
        Mistake(lambda ab: ab.sqrt() / (1 - ab).sqrt(), "off by a square root: the SNR is a ratio of "
                "variances, alpha_bar / (1 - alpha_bar), not of standard deviations."),
        Mistake(lambda ab: (1 - ab) / ab, "upside down: that is noise over signal."),
        Mistake(lambda ab: torch.log(ab / (1 - ab)), "that is log SNR; the exercise asks for the SNR itself."),
        Mistake(lambda ab: ab, "alpha_bar alone is the signal variance; divide by the noise variance 1 - alpha_bar."),
    ],
)

__all__ = ["cosine_alpha_bar", "betas", "snr"]
