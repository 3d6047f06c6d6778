"""What the network predicts: conversions between eps, x0, v and the score, given x_t.

Book chapter 4 ("Parameterizations"). All four describe the same denoiser: with
x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (book eq. (1.3)), knowing x_t and any one of
eps, x0, v or the score determines the others. Tensors are (B, ...) and t is int64 (B,), code index
0..T-1 (see ``sfs.schedules``). Inside, ``a`` and ``b`` are the book's a_t = sqrt(alpha_bar_t) and
b_t = sqrt(1 - alpha_bar_t) (book/notation.md).

Where alpha_bar_t = 0 (the last step of a zero-terminal-SNR schedule) x_t carries no information
about x0, so ``x0_from_eps`` and ``v_from_eps`` divide by zero there; predict v instead
(Lin et al. 2024, sec. 3.2). The v conversions are finite everywhere.
"""

from __future__ import annotations

import torch

from sfs.forward import check_t, extract
from sfs.schedules import Schedule


def _scales(schedule: Schedule, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a_t = sqrt(alpha_bar_t), b_t = sqrt(1 - alpha_bar_t) at t (B,), shaped (B, 1, ..., 1) like x."""
    t = check_t(schedule, t, x.shape[0], x.device)
    a = extract(schedule.sqrt_alpha_bar, t, x.ndim).to(x)
    b = extract(schedule.sqrt_one_minus_alpha_bar, t, x.ndim).to(x)
    return a, b


def _same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def x0_from_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t): the denoised guess, (B, ...).

    Book eq. (4.1); Ho et al. 2020, eq. 15.
    """
    _same_shape(x_t, eps, "x_t and eps")
    a, b = _scales(schedule, t, x_t)
    return (x_t - b * eps) / a


def eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t), (B, ...). Inverse of book eq. (4.1)."""
    _same_shape(x_t, x0, "x_t and x0")
    a, b = _scales(schedule, t, x_t)
    return (x_t - a * x0) / b


def v_target(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0, (B, ...).

    Book eq. (4.2); Salimans & Ho 2022, sec. 4. With alpha_bar_t = cos^2(phi), v = d x_t / d phi:
    the velocity of x_t along the circle from x0 (phi = 0) to eps (phi = pi/2).
    """
    _same_shape(x0, eps, "x0 and eps")
    a, b = _scales(schedule, t, x0)
    return a * eps - b * x0


def x0_from_v(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v, (B, ...). Book eq. (4.2) solved for x0."""
    _same_shape(x_t, v, "x_t and v")
    a, b = _scales(schedule, t, x_t)
    return a * x_t - b * v


def eps_from_v(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """eps = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v, (B, ...). Book eq. (4.2) solved for eps."""
    _same_shape(x_t, v, "x_t and v")
    a, b = _scales(schedule, t, x_t)
    return b * x_t + a * v


def v_from_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = (eps - sqrt(1 - alpha_bar_t) x_t) / sqrt(alpha_bar_t), (B, ...). Book eqs. (4.1)-(4.2)."""
    _same_shape(x_t, eps, "x_t and eps")
    a, b = _scales(schedule, t, x_t)
    return (eps - b * x_t) / a


def score_from_eps(schedule: Schedule, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Score of the noisy marginal, grad log q(x_t) ~ -eps / sqrt(1 - alpha_bar_t), (B, ...).

    Book eq. (4.3); Song et al. 2021, eq. 18 (exact when eps is the posterior mean E[eps | x_t]).
    """
    _, b = _scales(schedule, t, eps)
    return -eps / b


def eps_from_score(schedule: Schedule, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """eps = -sqrt(1 - alpha_bar_t) score, (B, ...). Inverse of book eq. (4.3)."""
    _, b = _scales(schedule, t, score)
    return -b * score


def x0_from_score(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Tweedie's formula: E[x0 | x_t] = (x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t), (B, ...).

    Book eq. (4.4); Efron 2011, eq. 2.8; equal to ``x0_from_eps`` with the eps of eq. (4.3).
    """
    _same_shape(x_t, score, "x_t and score")
    a, b = _scales(schedule, t, x_t)
    return (x_t + b**2 * score) / a
