"""Exercises for the ELBO chapter: the posterior mean of q(x_{t-1} | x_t, x0), and the KL of Gaussians.

    from sfs.exercises import elbo as check
    check.posterior_mean(my_posterior_mean)
    check.gaussian_kl(my_kl)
"""

from __future__ import annotations

import torch

from sfs.exercises.core import Case, Exercise, Mistake, float64, random_t
from sfs.forward import q_posterior
from sfs.schedules import cosine_schedule, linear_schedule


def normal_kl(mean1, logvar1, mean2, logvar2):
    """The library's KL (``sfs.losses.normal_kl``), imported when a check runs."""
    from sfs.losses import normal_kl as kl
    return kl(mean1, logvar1, mean2, logvar2)


def _b(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a.view(-1, *[1] * (x.ndim - 1))


# -- 1. posterior mean -------------------------------------------------------------------------

def posterior_mean_solution(schedule, x0, x_t, t):
    """Mean of q(x_{t-1} | x_t, x0) (Ho et al. 2020, eq. 7). x0, x_t: (B, ...); t: (B,) int64.

    mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0
           + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)                   # (B, 1, ..., 1)
    beta = schedule.betas[t].view(shape)
    alpha = schedule.alphas[t].view(shape)
    ab = schedule.alpha_bar[t].view(shape)
    ab_prev = schedule.alpha_bar_prev[t].view(shape)       # alpha_bar_{t-1}; equals 1 at t = 0
    return (ab_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - ab_prev) * x_t) / (1 - ab)


def _pm(s, x0, x_t, t, ab_prev=None, c1_sqrt=True, c2_sqrt=True, swap=False):
    beta, alpha, ab = _b(s.betas[t], x0), _b(s.alphas[t], x0), _b(s.alpha_bar[t], x0)
    abp = _b(s.alpha_bar_prev[t] if ab_prev is None else ab_prev, x0)
    c1 = (abp.sqrt() if c1_sqrt else abp) * beta / (1 - ab)
    c2 = (alpha.sqrt() if c2_sqrt else alpha) * (1 - abp) / (1 - ab)
    return c2 * x0 + c1 * x_t if swap else c1 * x0 + c2 * x_t


def _pm_cases(gen):
    cases = []
    for sched, shape, label in [(float64(linear_schedule(1000)), (4, 1, 5, 5), "images (4, 1, 5, 5), linear, T = 1000"),
                                (float64(cosine_schedule(30)), (5, 2), "2-D points (5, 2), cosine, T = 30")]:
        x0 = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1
        x_t = torch.randn(shape, generator=gen, dtype=torch.float64)
        t = random_t(sched.T, shape[0], gen, include=(0, sched.T - 1, 1))
        cases.append(Case((sched, x0, x_t, t), label + "; t includes 0 (alpha_bar_{t-1} = 1) and T - 1", t,
                          boundary=True))
    return cases


posterior_mean = Exercise(
    "posterior_mean",
    reference=lambda s, x0, x_t, t: q_posterior(s, x0, x_t, t)[0],
    cases=_pm_cases,
    solution=posterior_mean_solution,
    hint="mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) "
         "/ (1 - alpha_bar_t) * x_t. alpha_bar_{t-1} is schedule.alpha_bar_prev[t] (1 at t = 0). "
         "Reshape every coefficient to (B, 1, ..., 1).",
    rtol=3e-3,  # float32: at t = 0, beta_t / (1 - alpha_bar_t) = 1 to only 3 digits (1 - alpha_bar = 1e-4)
    mistakes=[
        Mistake(lambda s, x0, x_t, t: _pm(s, x0, x_t, t, swap=True),
                "the coefficients of x0 and x_t are swapped."),
        Mistake(lambda s, x0, x_t, t: _pm(s, x0, x_t, t, ab_prev=s.alpha_bar[t - 1]),
                "wrong at t = 0: alpha_bar[t - 1] wraps around to the last step when t = 0. Use "
                "schedule.alpha_bar_prev[t], which is 1 at t = 0 (no noise before the first step)."),
        Mistake(lambda s, x0, x_t, t: _pm(s, x0, x_t, t, ab_prev=s.alpha_bar[t]),
                "you used alpha_bar_t where alpha_bar_{t-1} belongs (schedule.alpha_bar_prev[t])."),
        Mistake(lambda s, x0, x_t, t: _pm(s, x0, x_t, t, c1_sqrt=False),
                "off by a square root in the x0 coefficient: it is sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)."),
        Mistake(lambda s, x0, x_t, t: _pm(s, x0, x_t, t, c2_sqrt=False),
                "off by a square root in the x_t coefficient: it is sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)."),
    ],
)


# -- 2. KL between two Gaussians ---------------------------------------------------------------

def gaussian_kl_solution(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _kl_cases(gen):
    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    m, lv = r(6), r(6, scale=0.5)
    return [Case((r(3, 4), r(3, 4, scale=0.7), r(3, 4), r(3, 4, scale=0.7)), "random (3, 4) Gaussians"),
            Case((m, lv, m.clone(), lv.clone()), "two equal Gaussians (the KL must be 0)", boundary=True),
            Case((r(5), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64),
                  torch.zeros(5, dtype=torch.float64)), "unit variances, N(m, 1) vs N(0, 1)")]


gaussian_kl = Exercise(
    "gaussian_kl",
    reference=normal_kl,
    cases=_kl_cases,
    solution=gaussian_kl_solution,
    hint="KL(N(m1, v1) || N(m2, v2)) = 1/2 (log v2 - log v1 + v1 / v2 + (m1 - m2)^2 / v2 - 1), with "
         "v = exp(logvar). It is 0 when the two Gaussians are equal.",
    broadcast_hint=None, rtol=2e-5, atol=1e-7,
    mistakes=[
        Mistake(lambda m1, l1, m2, l2: normal_kl(m2, l2, m1, l1),
                "you computed KL(q2 || q1): the KL is not symmetric. The first Gaussian's variance goes "
                "in the numerator of the ratio of variances, the second's divides (m1 - m2)^2."),
        Mistake(lambda m1, l1, m2, l2: 2 * normal_kl(m1, l1, m2, l2),
                "off by a factor of 2: there is a 1/2 in front of the bracket."),
        Mistake(lambda m1, l1, m2, l2: 0.5 * (l2 - l1 + torch.exp(l1 - l2) + (m1 - m2) ** 2 * torch.exp(-l2)),
                "the KL of two equal Gaussians must be 0: you forgot the '- 1' inside the bracket."),
        Mistake(lambda m1, l1, m2, l2: 0.5 * (l2 - l1 + torch.exp((l1 - l2) / 2) + (m1 - m2) ** 2 * torch.exp(-l2 / 2) - 1),
                "off by a square root: exp(logvar) is the variance; you used the standard deviation "
                "exp(logvar / 2)."),
        Mistake(lambda m1, l1, m2, l2: 0.5 * (l1 - l2 + torch.exp(l1 - l2) + (m1 - m2) ** 2 * torch.exp(-l2) - 1),
                "wrong sign on the log term: it is log v2 - log v1 (= logvar2 - logvar1)."),
    ],
)

__all__ = ["posterior_mean", "gaussian_kl"]
