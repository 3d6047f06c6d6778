"""Exercises for the parameterizations chapter: x0 from eps, and the v target.

    from sfs.exercises import parameterizations as check
    check.x0_from_eps(my_x0_from_eps)
    check.v_target(my_v_target)
"""

from __future__ import annotations

import torch

from sfs.exercises.core import Case, Exercise, Mistake, float64, random_t
from sfs.schedules import cosine_schedule, linear_schedule


def _lib():
    """``sfs.parameterizations``, the reference, imported when a check runs."""
    from sfs import parameterizations
    return parameterizations


def _b(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return a.view(-1, *[1] * (x.ndim - 1))


def _cases(gen):
    """Arguments (schedule, x, t, y) for two schedules and two data shapes."""
    cases = []
    for sched, shape, label in [(float64(linear_schedule(1000)), (4, 1, 5, 5), "images (4, 1, 5, 5), linear, T = 1000"),
                                (float64(cosine_schedule(100)), (6, 2), "2-D points (6, 2), cosine, T = 100")]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        y = torch.randn(shape, generator=gen, dtype=torch.float64)
        t = random_t(sched.T, shape[0], gen, include=(0, sched.T - 1, sched.T // 2))
        cases.append(Case((sched, x, t, y), label + "; t includes 0 and T - 1", t, boundary=True))
    return cases


# -- 1. x0 from eps ----------------------------------------------------------------------------

def x0_from_eps_solution(schedule, x_t, t, eps):
    """Solve x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for x0 (Ho et al. 2020, eq. 15)."""
    ab = schedule.alpha_bar[t].view(-1, *[1] * (x_t.ndim - 1))    # (B, 1, ..., 1)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def _x0(s, x_t, t, eps, sign=-1, sqrt=True, mul=False, ab=None):
    a = _b(s.alpha_bar[t] if ab is None else ab, x_t)
    sa, sn = (a.sqrt(), (1 - a).sqrt()) if sqrt else (a, 1 - a)
    num = x_t + sign * sn * eps
    return num * sa if mul else num / sa


x0_from_eps = Exercise(
    "x0_from_eps",
    reference=lambda s, x_t, t, eps: _lib().x0_from_eps(s, x_t, t, eps),
    cases=_cases,
    solution=x0_from_eps_solution,
    hint="Start from x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps: subtract the noise term, "
         "then divide by sqrt(alpha_bar_t). Reshape alpha_bar[t] to (B, 1, ..., 1).",
    mistakes=[
        Mistake(lambda s, x, t, e: _x0(s, x, t, e, sign=+1),
                "wrong sign: subtract the noise, x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."),
        Mistake(lambda s, x, t, e: _x0(s, x, t, e, sqrt=False),
                "off by a square root: the scales are sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t)."),
        Mistake(lambda s, x, t, e: _x0(s, x, t, e, mul=True),
                "you multiplied by sqrt(alpha_bar_t); undoing the scaling of x0 means dividing by it."),
        Mistake(lambda s, x, t, e: _x0(s, x, t, e, ab=s.alphas[t]),
                "you used alpha_t (one step) where alpha_bar_t belongs."),
        Mistake(lambda s, x, t, e: (x - (1 - s.alpha_bar[t[0]]).sqrt() * e) / s.alpha_bar[t[0]].sqrt(),
                "you used one t for the whole batch (t[0]); each example has its own t."),
    ],
)


# -- 2. the v target ---------------------------------------------------------------------------

def v_target_solution(schedule, x0, t, eps):
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022, sec. 4)."""
    ab = schedule.alpha_bar[t].view(-1, *[1] * (x0.ndim - 1))     # (B, 1, ..., 1)
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def _v(s, x0, t, eps, sign=1, sqrt=True, swap=False):
    a = _b(s.alpha_bar[t], x0)
    sa, sn = (a.sqrt(), (1 - a).sqrt()) if sqrt else (a, 1 - a)
    if swap:
        sa, sn = sn, sa
    return sign * (sa * eps - sn * x0)


v_target = Exercise(
    "v_target",
    reference=lambda s, x0, t, eps: _lib().v_target(s, x0, t, eps),
    cases=_cases,
    solution=v_target_solution,
    hint="v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0: the velocity of x_t along the circle "
         "from x0 to eps. Note the argument order of this exercise: (schedule, x0, t, eps).",
    mistakes=[
        Mistake(lambda s, x, t, e: _v(s, x, t, e, sign=-1),
                "wrong sign: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 points from x0 towards eps."),
        Mistake(lambda s, x, t, e: _v(s, x, t, e, sqrt=False),
                "off by a square root: the coefficients are sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t)."),
        Mistake(lambda s, x, t, e: _v(s, x, t, e, swap=True),
                "the coefficients are swapped: eps is scaled by sqrt(alpha_bar_t), x0 by sqrt(1 - alpha_bar_t)."),
        Mistake(lambda s, x, t, e: _b(s.alpha_bar[t], x).sqrt() * x + _b(1 - s.alpha_bar[t], x).sqrt() * e,
                "that is x_t, the noisy sample; v is sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0."),
    ],
)

__all__ = ["x0_from_eps", "v_target"]
