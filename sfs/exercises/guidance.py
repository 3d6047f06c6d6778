"""Exercises for the guidance chapter: the classifier-free guidance combination, and classifier guidance.

    from sfs.exercises import guidance as check
    check.cfg(my_cfg)                     # my_cfg(eps_cond, eps_uncond, scale)
    check.classifier_guided_eps(my_fn)    # my_fn(eps_hat, grad_log_p, alpha_bar_t, scale)
"""

from __future__ import annotations

import math

import torch

from sfs.exercises.core import Case, Exercise, Mistake


# -- 1. classifier-free guidance ---------------------------------------------------------------

def cfg_solution(eps_cond, eps_uncond, scale):
    """eps_uncond + scale (eps_cond - eps_uncond) (Ho & Salimans 2021, eq. 6, with scale = 1 + their w).

    scale = 0: unconditional; scale = 1: conditional; scale > 1: pushed further along the condition.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _cfg_cases(gen):
    out = []
    for shape, s, label in [((3, 1, 5, 5), 3.0, "images (3, 1, 5, 5), scale = 3"),
                            ((6, 2), 7.5, "2-D points (6, 2), scale = 7.5"),
                            ((2, 1, 4, 4), 1.0, "scale = 1 (must give eps_cond)"),
                            ((4, 2), 0.0, "scale = 0 (must give eps_uncond)")]:
        out.append(Case((torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), s), label,
                        boundary=s in (0.0, 1.0)))
    return out


cfg = Exercise(
    "cfg",
    reference=lambda c, u, s: u + s * (c - u),
    cases=_cfg_cases,
    solution=cfg_solution,
    hint="Start from the unconditional prediction and move along the direction (eps_cond - eps_uncond), "
         "scale times as far. scale = 1 must return eps_cond exactly.",
    broadcast_hint=None,
    mistakes=[
        Mistake(lambda c, u, s: c + s * (u - c),
                "cond and uncond are swapped: start from eps_uncond and move towards eps_cond."),
        Mistake(lambda c, u, s: s * (c - u),
                "you returned only the guidance direction times the scale; add it to eps_uncond."),
        Mistake(lambda c, u, s: (1 + s) * c - s * u,
                "that is the form (1 + w) eps_cond - w eps_uncond with w = scale; here the scale s "
                "multiplies (eps_cond - eps_uncond), so s = 1 gives eps_cond (w = s - 1)."),
        Mistake(lambda c, u, s: s * c, "you scaled eps_cond alone; guidance extrapolates from eps_uncond "
                "towards eps_cond: eps_uncond + scale (eps_cond - eps_uncond)."),
        Mistake(lambda c, u, s: (c + u) / 2, "an average does not depend on the scale; guidance is "
                "eps_uncond + scale (eps_cond - eps_uncond)."),
    ],
)


# -- 2. classifier guidance --------------------------------------------------------------------

def classifier_guided_eps_solution(eps_hat, grad_log_p, alpha_bar_t, scale):
    """eps_hat - scale sqrt(1 - alpha_bar_t) grad_x log p(y | x_t) (Dhariwal & Nichol 2021, eq. 14).

    The score is -eps / sqrt(1 - alpha_bar_t); adding scale * grad log p(y | x_t) to the score
    subtracts sqrt(1 - alpha_bar_t) times it from eps.
    """
    return eps_hat - scale * math.sqrt(1 - alpha_bar_t) * grad_log_p


def _cg(e, g, a, s, sign=-1, sqrt=True, noise=True):
    c = (1 - a) if noise else a
    return e + sign * s * (math.sqrt(c) if sqrt else c) * g


def _n(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


classifier_guided_eps = Exercise(
    "classifier_guided_eps",
    reference=_cg,
    cases=lambda gen: [Case((torch.randn(3, 1, 5, 5, generator=gen), torch.randn(3, 1, 5, 5, generator=gen),
                             _n(0.4), 2.0), "images, alpha_bar_t = 0.4, scale = 2"),
                       Case((torch.randn(6, 2, generator=gen), torch.randn(6, 2, generator=gen), _n(0.05), 1.0),
                            "2-D points, alpha_bar_t = 0.05, scale = 1"),
                       Case((torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen), _n(0.9), 0.0),
                            "scale = 0: no guidance, eps_hat unchanged", boundary=True),
                       Case((torch.randn(2, 1, 3, 3, generator=gen), torch.randn(2, 1, 3, 3, generator=gen),
                             _n(0.9999), 10.0), "alpha_bar_t = 0.9999 (t = 0 of the linear schedule), scale = 10",
                            boundary=True)],
    solution=classifier_guided_eps_solution,
    hint="The score of x_t is -eps / sqrt(1 - alpha_bar_t). Add scale * grad log p(y | x_t) to the score, "
         "then convert back to eps.",
    broadcast_hint=None,
    mistakes=[
        Mistake(lambda e, g, a, s: _cg(e, g, a, s, sign=+1),
                "wrong sign: eps points away from the data (score = -eps / sqrt(1 - alpha_bar_t)), so the "
                "classifier gradient is subtracted from eps."),
        Mistake(lambda e, g, a, s: _cg(e, g, a, s, sqrt=False),
                "off by a square root: the factor is sqrt(1 - alpha_bar_t), the noise's standard deviation."),
        Mistake(lambda e, g, a, s: _cg(e, g, a, s, noise=False),
                "the factor is sqrt(1 - alpha_bar_t), not sqrt(alpha_bar_t)."),
        Mistake(lambda e, g, a, s: e - s * g,
                "the gradient must be scaled by sqrt(1 - alpha_bar_t) to convert a score into an eps."),
    ],
)

__all__ = ["cfg", "classifier_guided_eps"]
