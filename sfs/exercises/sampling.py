"""Exercises for the sampling chapter: one deterministic DDIM step, and the DDIM noise scale sigma.

Both take the schedule's values at the two timesteps as numbers (0-d tensors), so they do not depend on how a
sampler spaces its steps:

    from sfs.exercises import sampling as check
    check.ddim_step(my_ddim_step)      # my_ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev)
    check.ddim_sigma(my_ddim_sigma)    # my_ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
"""

from __future__ import annotations

import math

import torch

from sfs.exercises.core import Case, Exercise, Mistake


def _n(v: float) -> torch.Tensor:
    """A 0-d float64 tensor: works with math.sqrt and torch.sqrt alike, like schedule.alpha_bar[t]."""
    return torch.tensor(v, dtype=torch.float64)


# -- 1. one DDIM step (eta = 0) ----------------------------------------------------------------

def ddim_step_solution(x_t, eps_hat, alpha_bar_t, alpha_bar_prev):
    """x_{t-1} of deterministic DDIM (Song et al. 2021, eq. 12 with sigma = 0).

    Predict x0 from the noise estimate, then move it to the earlier noise level with the same eps_hat.
    """
    x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps_hat) / math.sqrt(alpha_bar_t)
    return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev) * eps_hat


def _ddim(x, e, a, ap, sign=-1, sqrt=True, renoise=True, eps_sign=1):
    f = math.sqrt if sqrt else (lambda v: v)
    x0 = (x + sign * f(1 - a) * e) / f(a)
    if not renoise:
        return x0
    return f(ap) * x0 + eps_sign * f(1 - ap) * e


def _ddim_cases(gen):
    out = []
    for shape, a, ap, label in [((3, 1, 5, 5), 0.3, 0.5, "images (3, 1, 5, 5), alpha_bar 0.3 -> 0.5"),
                                ((8, 2), 0.05, 0.2, "2-D points (8, 2), alpha_bar 0.05 -> 0.2"),
                                ((2, 1, 4, 4), 0.9, 1.0, "last step: alpha_bar_prev = 1 gives x0_hat"),
                                ((3, 2), 0.4, 0.4, "alpha_bar_prev = alpha_bar_t: a step of size 0 returns x_t")]:
        out.append(Case((torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), _n(a), _n(ap)), label,
                        boundary=ap == 1.0 or a == ap))
    return out


ddim_step = Exercise(
    "ddim_step",
    reference=_ddim,
    cases=_ddim_cases,
    solution=ddim_step_solution,
    hint="Two lines: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t), then "
         "x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat. No fresh noise.",
    broadcast_hint=None,
    mistakes=[
        Mistake(lambda x, e, a, ap: _ddim(x, e, a, ap, renoise=False),
                "you returned the x0 prediction; DDIM then moves it to the earlier noise level: "
                "sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat."),
        Mistake(lambda x, e, a, ap: _ddim(x, e, ap, a),
                "alpha_bar_t and alpha_bar_prev are swapped: denoise with alpha_bar_t, re-noise with alpha_bar_prev."),
        Mistake(lambda x, e, a, ap: _ddim(x, e, a, ap, sign=+1),
                "wrong sign in x0_hat: subtract the noise, (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)."),
        Mistake(lambda x, e, a, ap: _ddim(x, e, a, ap, eps_sign=-1),
                "wrong sign when re-noising: x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps_hat."),
        Mistake(lambda x, e, a, ap: _ddim(x, e, a, ap, sqrt=False),
                "off by a square root: every coefficient is the square root of an alpha_bar or of 1 - alpha_bar."),
    ],
)


# -- 2. the DDIM noise scale -------------------------------------------------------------------

def ddim_sigma_solution(alpha_bar_t, alpha_bar_prev, eta):
    """sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev).

    Song et al. 2021, eq. 16: eta = 0 is deterministic DDIM, eta = 1 matches DDPM's posterior variance.
    """
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * math.sqrt(1 - alpha_bar_t / alpha_bar_prev)


def _sigma(a, ap, eta, outer_sqrt=True, inner_sqrt=True, flip=False, use_eta=True):
    r = (1 - a) / (1 - ap) if flip else (1 - ap) / (1 - a)
    v = (math.sqrt(r) if outer_sqrt else r) * (math.sqrt(1 - a / ap) if inner_sqrt else 1 - a / ap)
    return (eta if use_eta else 1.0) * v


try:  # the library's sampler, once it is there; the same formula otherwise
    from sfs.samplers import ddim_sigma as _sigma_reference
except ImportError:  # pragma: no cover
    _sigma_reference = _sigma


ddim_sigma = Exercise(
    "ddim_sigma",
    reference=lambda a, ap, eta: float(_sigma_reference(a, ap, eta)),
    cases=lambda gen: [Case((_n(0.3), _n(0.5), 1.0), "alpha_bar 0.3 -> 0.5, eta = 1"),
                       Case((_n(0.02), _n(0.1), 0.5), "alpha_bar 0.02 -> 0.1, eta = 0.5"),
                       Case((_n(0.6), _n(0.7), 0.0), "eta = 0 (deterministic DDIM)", boundary=True),
                       Case((_n(0.9), _n(1.0), 1.0), "the last step, alpha_bar_prev = 1: sigma = 0", boundary=True),
                       Case((_n(0.2), _n(0.6), 2.0), "eta = 2, more noise than DDPM")],
    solution=ddim_sigma_solution,
    hint="sigma = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_prev). "
         "With eta = 1 its square is DDPM's posterior variance tilde beta_t.",
    output="number", broadcast_hint=None, rtol=1e-6, atol=1e-9,
    mistakes=[
        Mistake(lambda a, ap, eta: _sigma(a, ap, eta, use_eta=False),
                "eta is missing: sigma scales linearly with eta, and eta = 0 must give 0."),
        Mistake(lambda a, ap, eta: _sigma(a, ap, eta, outer_sqrt=False, inner_sqrt=False),
                "off by a square root: that is sigma squared (a variance); sigma is its square root."),
        Mistake(lambda a, ap, eta: _sigma(a, ap, eta, flip=True),
                "the first ratio is upside down: (1 - alpha_bar_prev) / (1 - alpha_bar_t)."),
        Mistake(lambda a, ap, eta: _sigma(a, ap, eta, outer_sqrt=False),
                "off by a square root on (1 - alpha_bar_prev) / (1 - alpha_bar_t)."),
        Mistake(lambda a, ap, eta: _sigma(a, ap, eta, inner_sqrt=False),
                "off by a square root on 1 - alpha_bar_t / alpha_bar_prev."),
    ],
)

__all__ = ["ddim_step", "ddim_sigma"]
