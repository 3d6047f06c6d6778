"""Exercises for the forward-process chapter: the closed-form sample and alpha_bar from betas.

    from sfs.exercises import forward_process as check
    check.forward_sample(my_forward_sample)    # prints "Correct" or a hint
    check.forward_sample.hint(); check.forward_sample.solution()
"""

from __future__ import annotations

import torch

from sfs.exercises.core import Case, Exercise, Mistake, float64, random_t
from sfs.forward import q_sample
from sfs.schedules import cosine_schedule, linear_schedule


def _b(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), to broadcast against x (B, ...)."""
    return a.view(-1, *[1] * (x.ndim - 1))


# -- 1. x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps --------------------------------------

def forward_sample_solution(schedule, x0, t, eps):
    """x_t ~ q(x_t | x0) in one shot (Ho et al. 2020, eq. 4). x0, eps: (B, ...); t: (B,) int64."""
    alpha_bar = schedule.alpha_bar[t]                      # (B,)
    alpha_bar = alpha_bar.view(-1, *[1] * (x0.ndim - 1))   # (B, 1, ..., 1): one value per example
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps


def _forward_sample_cases(gen: torch.Generator) -> list[Case]:
    lin, cos = float64(linear_schedule(1000)), float64(cosine_schedule(50))
    cases = []
    for sched, shape, label in [(lin, (4, 1, 5, 5), "images (4, 1, 5, 5), linear schedule, T = 1000"),
                                (cos, (6, 2), "2-D points (6, 2), cosine schedule, T = 50"),
                                (lin, (3, 3, 4, 4), "RGB images (3, 3, 4, 4), linear schedule")]:
        x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        eps = torch.randn(shape, generator=gen, dtype=torch.float64)
        t = random_t(sched.T, shape[0], gen, include=(0, sched.T - 1))
        cases.append(Case((sched, x0, t, eps), label + "; t includes 0 and T - 1", t, boundary=True))
    x0 = torch.rand((1, 1, 3, 3), generator=gen, dtype=torch.float64) * 2 - 1
    t = torch.tensor([7])
    cases.append(Case((cos, x0, t, torch.randn((1, 1, 3, 3), generator=gen, dtype=torch.float64)),
                      "a batch of one, B = 1, cosine schedule, t = 7", t, boundary=True))
    return cases


forward_sample = Exercise(
    "forward_sample",
    reference=lambda s, x0, t, eps: q_sample(s, x0, t, eps),
    cases=_forward_sample_cases,
    solution=forward_sample_solution,
    hint="x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps. Gather alpha_bar at each "
         "example's t, reshape it to (B, 1, ..., 1) so it broadcasts, and mind both square roots.",
    mistakes=[
        Mistake(lambda s, x0, t, eps: _b(s.alpha_bar[t], x0) * x0 + _b(1 - s.alpha_bar[t], x0) * eps,
                "off by a square root: the coefficients are sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t), "
                "the standard deviations, not the variances."),
        Mistake(lambda s, x0, t, eps: _b(s.alpha_bar[t], x0).sqrt() * x0 + _b(1 - s.alpha_bar[t], x0) * eps,
                "off by a square root on the noise: its scale is sqrt(1 - alpha_bar_t)."),
        Mistake(lambda s, x0, t, eps: _b(s.alpha_bar[t], x0) * x0 + _b(1 - s.alpha_bar[t], x0).sqrt() * eps,
                "off by a square root on the signal: its scale is sqrt(alpha_bar_t)."),
        Mistake(lambda s, x0, t, eps: _b(s.alphas[t], x0).sqrt() * x0 + _b(1 - s.alphas[t], x0).sqrt() * eps,
                "you used alpha_t (one step) where alpha_bar_t (the product over all steps up to t) belongs."),
        Mistake(lambda s, x0, t, eps: _b(s.alpha_bar[t], x0).sqrt() * x0 + _b(s.betas[t], x0).sqrt() * eps,
                "the noise scale is sqrt(1 - alpha_bar_t), not sqrt(beta_t): beta_t is the noise of one step."),
        Mistake(lambda s, x0, t, eps: _b(s.alpha_bar[t], x0).sqrt() * x0 - _b(1 - s.alpha_bar[t], x0).sqrt() * eps,
                "wrong sign: the noise is added, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps."),
        Mistake(lambda s, x0, t, eps: _b(1 - s.alpha_bar[t], x0).sqrt() * x0 + _b(s.alpha_bar[t], x0).sqrt() * eps,
                "the two coefficients are swapped: the data is scaled by sqrt(alpha_bar_t), the noise by "
                "sqrt(1 - alpha_bar_t)."),
        Mistake(lambda s, x0, t, eps: _b(s.alpha_bar_prev[t], x0).sqrt() * x0 + _b(1 - s.alpha_bar_prev[t], x0).sqrt() * eps,
                "off by one step: you used alpha_bar_{t-1}. In code, index t holds the book's step t + 1, "
                "so alpha_bar[t] is the right one (and x_t at t = 0 is already slightly noisy)."),
        Mistake(lambda s, x0, t, eps: _b(s.alpha_bar[t - 1], x0).sqrt() * x0 + _b(1 - s.alpha_bar[t - 1], x0).sqrt() * eps,
                "off by one step: you used alpha_bar[t - 1]. In code, index t holds the book's step t + 1, "
                "so alpha_bar[t] is the right one; at t = 0 your index -1 wraps around to the last step."),
        Mistake(lambda s, x0, t, eps: s.alpha_bar[t[0]].sqrt() * x0 + (1 - s.alpha_bar[t[0]]).sqrt() * eps,
                "you used one t for the whole batch (t[0]); each example has its own t: gather "
                "alpha_bar[t] (shape (B,)) and reshape it to (B, 1, ..., 1)."),
    ],
)


# -- 2. alpha_bar from betas ---------------------------------------------------------------------

def alpha_bar_solution(betas):
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), (T,). Ho et al. 2020, sec. 2."""
    return torch.cumprod(1 - betas, dim=0)


def _alpha_bar_cases(gen: torch.Generator) -> list[Case]:
    return [Case((float64(linear_schedule(1000)).betas.double(),), "linear betas, T = 1000"),
            Case((torch.rand(20, generator=gen, dtype=torch.float64) * 0.3 + 0.01,), "20 random betas"),
            Case((torch.tensor([0.5], dtype=torch.float64),), "T = 1, betas = [0.5]", boundary=True)]


alpha_bar = Exercise(
    "alpha_bar",
    reference=lambda betas: torch.cumprod(1 - betas, 0),
    cases=_alpha_bar_cases,
    solution=alpha_bar_solution,
    hint="alpha_t = 1 - beta_t, and alpha_bar_t is the running product alpha_1 * ... * alpha_t: "
         "one value per step, so the output has shape (T,). Look at torch.cumprod.",
    broadcast_hint=None,
    rtol=1e-6, atol=1e-9,
    mistakes=[
        Mistake(lambda b: torch.cumprod(b, 0), "you multiplied the betas; alpha_bar is the product of "
                "alpha_s = 1 - beta_s."),
        Mistake(lambda b: 1 - torch.cumprod(b, 0), "1 - prod(beta) is not prod(1 - beta): take 1 - beta "
                "first, then the running product."),
        Mistake(lambda b: torch.prod(1 - b).reshape(1).expand_as(b) if b.numel() > 1 else torch.prod(1 - b).reshape(()),
                "you returned only the full product alpha_bar_T; we need the running product, one value per step "
                "(torch.cumprod, not torch.prod)."),
        Mistake(lambda b: torch.prod(1 - b), "you returned only the full product alpha_bar_T; we need the "
                "running product, one value per step (torch.cumprod, not torch.prod)."),
        Mistake(lambda b: torch.cat([torch.ones(1, dtype=b.dtype), torch.cumprod(1 - b, 0)[:-1]]),
                "off by one step: alpha_bar[0] must already include the first step, 1 - beta_1 (yours is 1)."),
        Mistake(lambda b: 1 - torch.cumsum(b, 0), "you subtracted the betas (a sum); alpha_bar is a product."),
        Mistake(lambda b: torch.cumprod((1 - b).sqrt(), 0), "off by a square root: alpha_bar is the product "
                "of alpha_s = 1 - beta_s, not of sqrt(alpha_s)."),
    ],
)

__all__ = ["forward_sample", "alpha_bar"]
