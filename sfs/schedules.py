"""Noise schedules: every per-timestep constant of the forward process, precomputed once.

Book chapter 2 ("Noise schedules"). A schedule is data: one ``Schedule`` dataclass of (T,) tensors
made by a builder (``linear_schedule``, ``cosine_schedule``, ``sigmoid_schedule``), optionally
rescaled to zero terminal SNR. Process functions (``sfs.forward``, ``sfs.losses``, the samplers)
take it as an argument; the network never sees it.

Timestep convention. The book counts diffusion steps t = 1..T (x_0 is data, x_T is noise). Code
indexes tensors from 0, so **code index t = 0..T-1 is the book's step t = 1..T**: ``betas[0]`` is
the book's beta_1, ``alpha_bar[t]`` is the book's alpha_bar_{t+1}, and ``alpha_bar_prev[0] = 1``
is the book's alpha_bar_0 (no noise yet). Every module of ``sfs`` uses this convention.

Notation (book symbol -> field): beta_t -> ``betas``, alpha_t = 1 - beta_t -> ``alphas``,
alpha_bar_t = prod_{s<=t} alpha_s -> ``alpha_bar``, a_t = sqrt(alpha_bar_t) -> ``sqrt_alpha_bar``,
b_t = sqrt(1 - alpha_bar_t) -> ``sqrt_one_minus_alpha_bar``, tilde beta_t -> ``posterior_variance``,
SNR(t) = alpha_bar_t / (1 - alpha_bar_t) -> ``snr``, lambda_t = log SNR(t) -> ``log_snr``
(book/notation.md).

All quantities are computed in float64 and stored as float32 (``Schedule.to`` changes either).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


@dataclass
class Schedule:
    """All (T,) constants of a diffusion schedule; code index t = 0..T-1 is book step t = 1..T."""

    betas: torch.Tensor                 # beta_t, variance added at step t, book eq. (1.1)
    alphas: torch.Tensor                # alpha_t = 1 - beta_t
    alpha_bar: torch.Tensor             # prod of alphas up to t, book eq. (1.3)
    alpha_bar_prev: torch.Tensor        # alpha_bar_{t-1}, with alpha_bar_0 = 1
    sqrt_alpha_bar: torch.Tensor        # a_t, signal scale of q(x_t | x0), book eq. (1.3)
    sqrt_one_minus_alpha_bar: torch.Tensor  # b_t, noise scale of q(x_t | x0), book eq. (1.3)
    posterior_variance: torch.Tensor    # tilde beta_t of q(x_{t-1} | x_t, x0), book eq. (3.1)
    posterior_log_variance_clipped: torch.Tensor  # log tilde beta_t, index 0 set to index 1's value
    posterior_mean_coef1: torch.Tensor  # coefficient of x0 in the posterior mean, book eq. (3.2)
    posterior_mean_coef2: torch.Tensor  # coefficient of x_t in the posterior mean, book eq. (3.2)
    snr: torch.Tensor                   # alpha_bar / (1 - alpha_bar), book eq. (1.4)
    log_snr: torch.Tensor               # lambda_t = log SNR; -inf where alpha_bar = 0 (zero terminal SNR)

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.betas.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> "Schedule":
        """A copy with every tensor moved to ``device`` and/or cast to ``dtype``."""
        return Schedule(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                           for f in dataclasses.fields(self)})


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    return T


def schedule_from_betas(betas: torch.Tensor, dtype: torch.dtype = torch.float32) -> Schedule:
    """Build every schedule constant from betas (T,). Book eqs. (1.3), (1.4), (3.1), (3.2).

    Computed in float64 and stored as ``dtype`` (float64 is useful for exact identity checks).
    betas must lie in (0, 1); only the last may equal 1 (zero terminal SNR, book eq. (2.4)), since a
    beta of 1 earlier would erase the signal before the last step. Ho et al. 2020, eqs. 4, 6, 7.
    """
    b = torch.as_tensor(betas).detach().to("cpu", torch.float64)
    if b.ndim != 1 or b.numel() < 1:
        raise ValueError(f"betas must be a 1-D tensor of shape (T,) with T >= 1, got {tuple(b.shape)}")
    if not torch.isfinite(b).all() or (b <= 0).any() or (b[:-1] >= 1).any() or b[-1] > 1:
        raise ValueError("betas must lie in (0, 1), with betas[-1] allowed in (0, 1]; got values in "
                         f"[{b.min().item():.3g}, {b.max().item():.3g}]")
    alphas = 1.0 - b
    alpha_bar = torch.cumprod(alphas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    one_minus = 1.0 - alpha_bar  # >= beta_t > 0, so every division below is safe
    posterior_variance = b * (1.0 - alpha_bar_prev) / one_minus
    # tilde beta at index 0 is 0 (x0 is known exactly); log(0) = -inf, so improved-diffusion clips
    # it to the next step's value. With T = 1 there is no next step, so use beta_1 instead.
    first = posterior_variance[1:2] if len(b) > 1 else b[:1]
    log_var = torch.log(torch.cat([first, posterior_variance[1:]]))
    return Schedule(
        betas=b, alphas=alphas, alpha_bar=alpha_bar, alpha_bar_prev=alpha_bar_prev,
        sqrt_alpha_bar=alpha_bar.sqrt(), sqrt_one_minus_alpha_bar=one_minus.sqrt(),
        posterior_variance=posterior_variance, posterior_log_variance_clipped=log_var,
        posterior_mean_coef1=b * alpha_bar_prev.sqrt() / one_minus,
        posterior_mean_coef2=(1.0 - alpha_bar_prev) * alphas.sqrt() / one_minus,
        snr=alpha_bar / one_minus, log_snr=torch.log(alpha_bar) - torch.log(one_minus),
    ).to(dtype=dtype)


def betas_from_alpha_bar(alpha_bar: torch.Tensor, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_bar (T + 1,) at times 0, 1/T, ..., 1 -> betas (T,), beta_t = 1 - ab_t / ab_{t-1}.

    Each beta is clipped to ``max_beta`` so the last steps, where alpha_bar -> 0, stay finite
    (Nichol & Dhariwal 2021, sec. 3.2). alpha_bar must start at 1 and decrease.
    """
    ab = torch.as_tensor(alpha_bar).to(torch.float64)
    if not (0.0 < max_beta <= 1.0):
        raise ValueError(f"max_beta must be in (0, 1], got {max_beta!r}")
    if ab.ndim != 1 or len(ab) < 2 or not torch.isfinite(ab).all():
        raise ValueError(f"alpha_bar must be a finite 1-D tensor of shape (T + 1,), got {tuple(ab.shape)}")
    if (ab <= 0).any() or (ab > 1).any() or (ab[1:] >= ab[:-1]).any():
        raise ValueError("alpha_bar must be strictly decreasing with values in (0, 1]")
    return (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def linear_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                    max_beta: float = 0.999) -> Schedule:
    """Betas linear from beta_start to beta_end. Book eq. (2.1); Ho et al. 2020, sec. 4.

    The endpoints are given for T = 1000 and scaled by 1000 / T (as in improved-diffusion), so any
    T traces the same alpha_bar curve. For T < ~50 the scaled betas would pass 1; they are clipped
    to ``max_beta``.
    """
    T = _check_T(T)
    if not (0.0 < beta_start < beta_end <= 1.0):
        raise ValueError("need 0 < beta_start < beta_end <= 1, got "
                         f"beta_start={beta_start!r}, beta_end={beta_end!r}")
    if not (0.0 < max_beta < 1.0):
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
    scale = 1000.0 / T
    betas = torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64)
    return schedule_from_betas(betas.clamp(max=max_beta))


def cosine_schedule(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """alpha_bar(u) = f(u) / f(0), f(u) = cos^2((u + s) / (1 + s) * pi / 2), u = t / T.

    Book eq. (2.2); Nichol & Dhariwal 2021, eq. 17, with betas clipped at ``max_beta``.
    """
    T = _check_T(T)
    if not (s >= 0.0):
        raise ValueError(f"s must be >= 0, got {s!r}")
    u = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
    f = torch.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2
    # f(1) = 0 exactly in real numbers; keep it a tiny positive number so the ratio is defined.
    ab = (f / f[0]).clamp(min=1e-12)
    return schedule_from_betas(betas_from_alpha_bar(ab, max_beta))


def sigmoid_schedule(T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                     max_beta: float = 0.999) -> Schedule:
    """alpha_bar(u) = (sig(end/tau) - sig((u (end - start) + start)/tau)) / (sig(end/tau) - sig(start/tau)).

    Book eq. (2.3); Jabri et al. 2023; Chen 2023, alg. 1 (u = t / T in [0, 1], sig the logistic
    function). Smaller tau makes the curve steeper; betas clipped at ``max_beta``.
    """
    T = _check_T(T)
    if not start < end:
        raise ValueError(f"need start < end, got start={start!r}, end={end!r}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    u = torch.linspace(0.0, 1.0, T + 1, dtype=torch.float64)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    v = torch.sigmoid((u * (end - start) + start) / tau)
    ab = ((v_end - v) / (v_end - v_start)).clamp(min=1e-12, max=1.0)
    return schedule_from_betas(betas_from_alpha_bar(ab, max_beta))


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
    """Shift and scale sqrt(alpha_bar) so the last step is pure noise: alpha_bar[-1] = 0.

    Book eq. (2.4); Lin et al. 2024, alg. 1. sqrt(alpha_bar[0]) is kept, sqrt(alpha_bar[-1])
    becomes 0, so betas[-1] = 1, snr[-1] = 0 and log_snr[-1] = -inf. The posterior at the last
    step stays finite: q(x_{T-1} | x_T, x0) = N(sqrt(alpha_bar_{T-1}) x0, 1 - alpha_bar_{T-1}).
    Needs T >= 2. Keeps the schedule's dtype.
    """
    if schedule.T < 2:
        raise ValueError(f"rescale_zero_terminal_snr needs T >= 2, got T={schedule.T}")
    ab = torch.cumprod(1.0 - schedule.betas.detach().to("cpu", torch.float64), 0)
    r = ab.sqrt()
    r0, rT = r[0].clone(), r[-1].clone()
    r = (r - rT) * r0 / (r0 - rT)
    ab = r**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    betas = 1.0 - alphas
    betas[-1] = 1.0  # exactly, whatever rounding did
    return schedule_from_betas(betas, dtype=schedule.betas.dtype)
