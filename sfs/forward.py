"""The forward (noising) process q: one step, the closed form, and the posterior q(x_{t-1} | x_t, x0).

Book chapter 1 ("The forward process") and eq. (3.1). Every function takes the ``Schedule`` as an
argument, data of any shape (B, ...) and integer timesteps t of shape (B,), code index 0..T-1 for
book steps 1..T (see ``sfs.schedules``). A plain Python int t is accepted too and used for the
whole batch.
"""

from __future__ import annotations

import torch

from sfs.schedules import Schedule


def check_t(schedule: Schedule, t: torch.Tensor | int, batch_size: int, device=None) -> torch.Tensor:
    """Validate timesteps and return them as int64 (B,). A Python int is broadcast to (B,).

    Raises ValueError naming ``t`` if it is not integer, not of shape (B,), or outside [0, T).
    The range is checked for CPU tensors only: reading t.min() from a GPU waits for the device
    (several stalls per training step); there an out-of-range t still fails, as a device-side
    index error when the schedule is gathered.
    """
    T = schedule.T
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.full((batch_size,), t, dtype=torch.long, device=device)
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"t must be an integer tensor of shape (B,)=({batch_size},), got {t!r}")
    if t.shape != (batch_size,):
        raise ValueError(f"t must have shape (B,)=({batch_size},), got {tuple(t.shape)}")
    if batch_size > 0 and t.device.type == "cpu" and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"t must lie in [0, T-1] = [0, {T - 1}] (code index; book step t+1), "
                         f"got values in [{int(t.min())}, {int(t.max())}]")
    return t.long()


def extract(a: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather a (T,) schedule tensor at timesteps t (B,) -> (B, 1, ..., 1) with ``ndim`` dims.

    The result broadcasts against a tensor of shape (B, ...) with ``ndim`` dims.
    """
    out = a.to(t.device)[t]  # (B,)
    return out.reshape(t.shape[0], *([1] * (ndim - 1)))


def _coef(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """extract, on x's device and dtype: (B, 1, ..., 1)."""
    return extract(a, t.to(x.device), x.ndim).to(x.dtype)


def _noise(x: torch.Tensor, eps: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    if eps is None:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if eps.shape != x.shape:
        raise ValueError(f"eps must have the data's shape {tuple(x.shape)}, got {tuple(eps.shape)}")
    return eps


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor | int,
             eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x0) in one shot: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.

    Book eq. (1.3); Ho et al. 2020, eq. 4. x0: (B, ...); t: (B,) int64; eps: like x0, drawn from
    N(0, I) with ``generator`` when None. Returns x_t: (B, ...).
    """
    t = check_t(schedule, t, x0.shape[0], x0.device)
    eps = _noise(x0, eps, generator)
    return _coef(schedule.sqrt_alpha_bar, t, x0) * x0 + _coef(schedule.sqrt_one_minus_alpha_bar, t, x0) * eps


def q_step(schedule: Schedule, x_prev: torch.Tensor, t: torch.Tensor | int,
           eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One forward step x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

    Book eqs. (1.1), (1.2): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps. x_prev: (B, ...) is
    x_{t-1} (the data x0 when t = 0); t: (B,) int64; eps like x_prev. Returns x_t: (B, ...).
    """
    t = check_t(schedule, t, x_prev.shape[0], x_prev.device)
    eps = _noise(x_prev, eps, generator)
    return _coef(schedule.alphas, t, x_prev).sqrt() * x_prev + _coef(schedule.betas, t, x_prev).sqrt() * eps


def q_posterior(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and log-variance of the posterior q(x_{t-1} | x_t, x0).

    Book eqs. (3.1), (3.2); Ho et al. 2020, eqs. 6-7:
    mean = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0
           + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t,
    variance = tilde beta_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.
    x0, x_t: (B, ...); t: (B,). Returns mean (B, ...) and variance, log_variance (B, 1, ..., 1);
    log_variance is clipped at t = 0, where the variance is 0 (see ``Schedule``).
    """
    if x0.shape != x_t.shape:
        raise ValueError(f"x0 and x_t must have the same shape, got {tuple(x0.shape)} and {tuple(x_t.shape)}")
    t = check_t(schedule, t, x_t.shape[0], x_t.device)
    mean = _coef(schedule.posterior_mean_coef1, t, x_t) * x0 + _coef(schedule.posterior_mean_coef2, t, x_t) * x_t
    variance = _coef(schedule.posterior_variance, t, x_t)
    log_variance = _coef(schedule.posterior_log_variance_clipped, t, x_t)
    return mean, variance, log_variance
