"""Samplers: from noise x_T to an image x0, with the model's eps_hat, in T, 50 or 10 steps.

Book chapter 7 ("Sampling"). Every sampler is a plain function with one visible loop:

    x0 = sample_x(model, x_T, schedule, ..., cond=None, clip_x0=False, callback=None, generator=None)

- ``model(x_t, t, cond) -> eps_hat`` is the one model contract; guidance is a wrapper with the same
  contract (``sfs.guidance``), so every sampler supports it without a flag.
- ``x_T`` (B, ...) is the initial noise, drawn by the caller; noise needed along the way is drawn from
  ``generator``, so the same x_T and the same seeded generator give the same images.
- ``callback(dict(i=i, t=t, x_t=x_t, x0_hat=x0_hat))`` is called once per model evaluation, with the
  model's input x_t (B, ...) at code timestep t and its denoised guess x0_hat (B, ...).
- ``clip_x0=True`` clips x0_hat to [-1, 1] at every step (Ho et al. 2020's sampler does); the result
  is then in [-1, 1] too. Every sampler defaults to ``clip_x0=False``.
- ``spacing`` picks the timesteps (``timesteps``): DDIM defaults to "uniform", DPM-Solver++ to
  "logsnr" (even steps in log SNR, starting at log SNR = -10 rather than at t = T - 1).

Timesteps are code indices 0..T-1 (book step t = code t + 1, see ``sfs.schedules``). The last step of
every sampler adds no noise: it returns the model's final x0_hat.

Notation (book/notation.md): alpha_bar_t -> ``alpha_bar``; in the ODE solver a_t = sqrt(alpha_bar_t)
(signal scale), b_t = sqrt(1 - alpha_bar_t) (noise scale) and ell_t = log(a_t / b_t), the half
log-SNR (Lu et al.'s lambda_t); lambda_t itself is the log-SNR, and sigma_t the reverse-step std.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from sfs.forward import q_posterior
from sfs.parameterizations import eps_from_x0, x0_from_eps
from sfs.schedules import Schedule
from sfs.validate import check_float

Callback = Callable[[dict], None] | None
SPACINGS = ("uniform", "trailing", "quadratic", "time_quadratic", "logsnr")
LOG_SNR_MIN = -10.0  # "logsnr" spacing starts here: alpha_bar = 4.5e-5, x_T ~ N(0, I) is 99.995 % noise
# (on the cosine schedule the grid's real start is code t = 994, log SNR -9.71: 99.994 % noise)
VARIANCES = ("beta", "posterior")


# ----------------------------------------------------------------------------------------------
# Argument checks shared by the samplers: each error names the parameter and what it accepts.

def check_x_T(model: nn.Module, x_T: torch.Tensor, cond: torch.Tensor | None = None) -> None:
    """Raise ValueError unless x_T (B, C, H, W) fits ``model.config`` and cond is None or (B,) int."""
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.ndim < 2:
        raise ValueError(f"x_T must be a float tensor of shape (B, ...), got {getattr(x_T, 'shape', x_T)!r}")
    config = getattr(model, "config", None)
    C, S = getattr(config, "in_channels", None), getattr(config, "image_size", None)
    if C is not None and S is not None and tuple(x_T.shape[1:]) != (C, S, S):
        raise ValueError(f"x_T must have shape (B, in_channels, image_size, image_size) = (B, {C}, {S}, {S}) "
                         f"for this model, got {tuple(x_T.shape)}")
    check_cond = getattr(model, "check_cond", None)
    if cond is not None and check_cond is not None:  # a text model checks its own prompts
        check_cond(cond, x_T.shape[0])
    elif cond is not None:
        if not isinstance(cond, torch.Tensor) or cond.is_floating_point() or cond.shape != x_T.shape[:1]:
            raise ValueError(f"cond must be None or an int64 tensor of shape (B,) = ({x_T.shape[0]},), "
                             f"got {getattr(cond, 'shape', cond)!r}")
        K = getattr(config, "num_classes", None)
        if K is not None and len(cond) and (int(cond.min()) < 0 or int(cond.max()) > K):
            raise ValueError(f"cond must hold labels in [0, num_classes] = [0, {K}] ({K}: no class), "
                             f"got values in [{int(cond.min())}, {int(cond.max())}]")


def _check_steps(steps: int, T: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, T] = [1, {T}], got {steps!r}")
    return steps


def _batch_t(t: int, x: torch.Tensor) -> torch.Tensor:
    """Timestep t as an int64 (B,) tensor on x's device: what the model expects."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def _check_eps_timesteps(schedule: Schedule, ts: list[int]) -> None:
    """Raise ValueError if a timestep in ``ts`` has alpha_bar_t = 0, where eps-prediction fails.

    Every sampler here takes an eps-prediction model and converts with Book eq. (4.1),
    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t). On a zero-terminal-SNR
    schedule (Book eq. (2.4)) alpha_bar_{T-1} = 0: x_t is pure noise, so the best eps_hat is x_t
    itself and says nothing about x0; x0_hat is 0 / 0 for a perfect model and infinite otherwise,
    and the sample would come back NaN. There the model must predict v (Lin et al. 2024, sec. 3.2).
    Called by each sampler before its loop, ts: the code timesteps it will visit.
    """
    ab = schedule.alpha_bar.detach().cpu()[torch.as_tensor(ts, dtype=torch.long)]  # (len(ts),)
    zero = [ts[i] for i in (ab == 0).nonzero().flatten().tolist()]
    if zero:
        raise ValueError(
            f"alpha_bar[{zero[0]}] = 0 (a zero-terminal-SNR schedule), and this sampler visits code "
            f"timestep t = {zero[0]}: an eps-prediction model gives no x0_hat there (x0_hat = "
            "(x_t - eps_hat) / 0, the sample would be NaN). Lin et al. 2024 make the model predict v "
            "at that step; the sfs samplers take eps-prediction models, so use a spacing that starts "
            "below t = T - 1 ('uniform' or 'logsnr' with ddim_sample / dpm_solver_2m_sample) or a "
            "schedule whose alpha_bar stays > 0")


def _denoise(model: nn.Module, schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
             cond: torch.Tensor | None, clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One model call -> (eps_hat, x0_hat), both (B, ...). With clip_x0, x0_hat is clipped to
    [-1, 1] and eps_hat recomputed from it, so the two stay consistent. Book eq. (4.1).

    The model predicts eps (the one model contract), so x0_hat needs alpha_bar_t > 0: the samplers
    check their timesteps with ``_check_eps_timesteps`` first."""
    eps_hat = model(x_t, t, cond)
    x0_hat = x0_from_eps(schedule, x_t, t, eps_hat)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        eps_hat = eps_from_x0(schedule, x_t, t, x0_hat)
    return eps_hat, x0_hat


# ----------------------------------------------------------------------------------------------
# DDPM: ancestral sampling, T steps.

@torch.no_grad()
def ddpm_sample(model: nn.Module, x_T: torch.Tensor, schedule: Schedule, variance: str = "beta",
                cond: torch.Tensor | None = None, clip_x0: bool = False, callback: Callback = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestral sampling through all T steps: x_{t-1} = mu_theta(x_t, t) + sigma_t z.

    Book eq. (7.1); Ho et al. 2020, Alg. 2 and eq. 11. The mean is the posterior mean of
    q(x_{t-1} | x_t, x0 = x0_hat) (book eq. (3.2)); the reverse variance sigma_t^2 is chosen
    explicitly: ``variance="beta"`` (sigma_t^2 = beta_t, the upper bound) or ``"posterior"``
    (sigma_t^2 = tilde beta_t, the lower bound; Ho et al. 2020, sec. 3.2). No noise at the last
    step (t = 0). x_T: (B, ...) ~ N(0, I); cond: (B,) or None. Returns x0: (B, ...).
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    check_x_T(model, x_T, cond)
    _check_eps_timesteps(schedule, list(range(schedule.T)))  # DDPM visits every t
    var = schedule.betas if variance == "beta" else schedule.posterior_variance  # (T,)
    x_t = x_T
    for i, t in enumerate(range(schedule.T - 1, -1, -1)):
        tt = _batch_t(t, x_t)
        _, x0_hat = _denoise(model, schedule, x_t, tt, cond, clip_x0)
        if callback is not None:
            callback(dict(i=i, t=t, x_t=x_t, x0_hat=x0_hat))
        mean, _, _ = q_posterior(schedule, x0_hat, x_t, tt)  # at t = 0 the mean is x0_hat
        if t > 0:
            z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_t = mean + var[t].sqrt().item() * z
        else:
            x_t = mean
    return x_t


# ----------------------------------------------------------------------------------------------
# DDIM: a non-Markovian process with the same marginals, any subsequence of timesteps.

def ddim_timesteps(T: int, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """The ``steps`` code timesteps a short sampler visits, noisiest first: int64 (steps,).

    - ``"uniform"``: 0, c, 2c, ..., (steps - 1) c with c = T // steps ("leading"; Song et al. 2021,
      sec. 5 "linear"), always exactly ``steps`` values. It never visits t = T - 1, the pure-noise
      end. The original DDIM code's ``range(0, T, T // steps)`` is the same grid only when ``steps``
      divides T; otherwise it has more than ``steps`` values (T = 1000, steps = 30: c = 33 and 31
      values, up to 990), of which this is the first ``steps``. diffusers' "leading" spacing (with
      ``steps_offset = 0``) is this grid for every ``steps``.
    - ``"trailing"``: round(T - k T / steps) - 1 for k = 0..steps-1, so the first step is t = T - 1
      (Lin et al. 2024, sec. 3.4, Table 2).
    - ``"quadratic"``: floor((k / (steps - 1))^2 * 0.8 T), Song et al. 2021, app. D.2 (their CIFAR10
      setting). It starts at 0.8 T, not at the pure-noise end.
    - ``"time_quadratic"``: round((k / (steps - 1))^2 (T - 1)), from T - 1 down to 0, dense near the
      data end where x0_hat changes fastest (Lu et al. 2022, app. D "time quadratic").
    - ``"logsnr"`` depends on the schedule, not only on T: see ``logsnr_timesteps`` and ``timesteps``.
    In the quadratic spacings, repeated small values are pushed up by one so the sequence stays
    strictly increasing.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    _check_steps(steps, T)
    if spacing == "uniform":
        ts = torch.arange(steps, dtype=torch.long) * (T // steps)
    elif spacing == "trailing":
        ts = torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long().flip(0) - 1
    elif spacing in ("quadratic", "time_quadratic"):
        if spacing == "quadratic":
            ts = (torch.linspace(0, math.sqrt(0.8 * T), steps, dtype=torch.float64) ** 2).floor().long()
        else:
            ts = (torch.linspace(1, 0, steps, dtype=torch.float64).flip(0) ** 2 * (T - 1)).round().long()
        for k in range(1, steps):  # keep strictly increasing: 0, 0, 1, ... -> 0, 1, 2, ...
            ts[k] = max(ts[k], ts[k - 1] + 1)
    elif spacing == "logsnr":
        raise ValueError("spacing='logsnr' depends on the schedule: use timesteps(schedule, steps, 'logsnr')")
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return ts.flip(0)  # noisiest first


def ddim_sigma(alpha_bar_t: torch.Tensor | float, alpha_bar_prev: torch.Tensor | float,
               eta: float) -> torch.Tensor:
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev).

    Book eq. (7.3); Song et al. 2021, eq. 16. eta = 0: deterministic DDIM; eta = 1 and consecutive
    steps: sigma_t^2 = tilde beta_t, the DDPM posterior variance (book eq. (3.1)).
    """
    a_t, a_prev = torch.as_tensor(alpha_bar_t), torch.as_tensor(alpha_bar_prev)
    return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()


def logsnr_timesteps(schedule: Schedule, steps: int, log_snr_min: float = LOG_SNR_MIN) -> torch.Tensor:
    """``steps`` code timesteps evenly spaced in log SNR, noisiest first: int64 (steps,).

    Book ch. 7, sec. "Which timesteps?". lambda_t = log SNR(t) (book eq. (1.4)) is spaced uniformly
    from its value at t_start, the noisiest t with lambda_t >= ``log_snr_min``, down to lambda_0 at
    the data end; each value is rounded to the code timestep with the nearest lambda_t (Lu et al.
    2022, "DPM-Solver", sec. 3.3: steps uniform in lambda). Why not start at t = T - 1: for the
    cosine schedule sqrt(alpha_bar_{T-1}) = 4.9e-5 (log SNR -19.8), and the first
    x0_hat = (x_t - sqrt(1 - alpha_bar) eps_hat) / sqrt(alpha_bar) multiplies the network's eps error
    by 20,000; at log SNR -10 the factor is 150, and x_T ~ N(0, I) is still pure noise to 1 part in
    20,000 of variance (Lu et al. 2022 end the cosine schedule at t = 0.9946 for the same reason).
    For the linear schedule lambda_{T-1} = -10.1, so the grid starts at t = T - 7 or so.
    """
    ab = schedule.alpha_bar.double().cpu()
    lam = ab.log() - (1 - ab).log()                                  # lambda_t = log SNR (T,), decreasing in t
    if not math.isfinite(log_snr_min) or log_snr_min >= lam[0]:
        raise ValueError(f"log_snr_min must be a finite number below log SNR(0) = {lam[0]:.2f}, "
                         f"got {log_snr_min!r}")
    t_start = int((lam >= log_snr_min).nonzero().max())               # noisiest t we may start at
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= t_start + 1:
        raise ValueError(f"steps must be an int in [1, t_start + 1] = [1, {t_start + 1}] for the logsnr "
                         f"spacing (t_start = {t_start}, the last t with log SNR >= {log_snr_min}), got {steps!r}")
    targets = torch.linspace(float(lam[0]), float(lam[t_start]), steps, dtype=torch.float64)  # data end first
    ts = (lam[None, :t_start + 1] - targets[:, None]).abs().argmin(1)  # nearest t, increasing
    for k in range(1, steps):                # repeated t near either end: push up, then back down
        ts[k] = max(ts[k], ts[k - 1] + 1)
    ts[-1] = t_start
    for k in range(steps - 2, -1, -1):
        ts[k] = min(ts[k], ts[k + 1] - 1)
    return ts.flip(0)  # noisiest first


def timesteps(schedule: Schedule, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """The code timesteps a sampler visits, noisiest first: int64 (steps,). ``spacing`` is one of
    ``SPACINGS``: "logsnr" needs the schedule (``logsnr_timesteps``), the others only T
    (``ddim_timesteps``)."""
    if spacing == "logsnr":
        return logsnr_timesteps(schedule, steps)
    return ddim_timesteps(schedule.T, steps, spacing)


@torch.no_grad()
def ddim_sample(model: nn.Module, x_T: torch.Tensor, schedule: Schedule, steps: int = 50,
                eta: float = 0.0, spacing: str = "uniform", cond: torch.Tensor | None = None,
                clip_x0: bool = False, callback: Callback = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM: x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps_hat + sigma z.

    Book eq. (7.2); Song et al. 2021, eq. 12, with sigma = ``ddim_sigma(.., eta)`` (eq. 16) over the
    timesteps ``timesteps(schedule, steps, spacing)``; after the last one alpha_bar_prev = 1, so the
    last step returns x0_hat, noise-free. eta = 0 is deterministic (the generator is never used);
    eta = 1 with steps = T is DDPM with the posterior variance. x_T: (B, ...); returns x0 (B, ...).
    """
    eta = check_float("eta", eta, 0, 1, hint="0: deterministic, 1: DDPM-like; above 1, "
                      "1 - alpha_bar_prev - sigma^2 < 0 and the images are NaN")
    check_x_T(model, x_T, cond)
    ts = timesteps(schedule, steps, spacing).tolist()
    _check_eps_timesteps(schedule, ts)
    alpha_bar = schedule.alpha_bar.double().cpu()  # (T,); scalars per step, no device syncs
    x_t = x_T
    for i, t in enumerate(ts):
        eps_hat, x0_hat = _denoise(model, schedule, x_t, _batch_t(t, x_t), cond, clip_x0)
        if callback is not None:
            callback(dict(i=i, t=t, x_t=x_t, x0_hat=x0_hat))
        a_t = alpha_bar[t]
        a_prev = alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), dtype=torch.float64)
        sigma = ddim_sigma(a_t, a_prev, eta)
        x_t = a_prev.sqrt().item() * x0_hat + (1 - a_prev - sigma**2).sqrt().item() * eps_hat
        if sigma > 0:
            z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
            x_t = x_t + sigma.item() * z
    return x_t


# ----------------------------------------------------------------------------------------------
# DPM-Solver++(2M): a second-order multistep solver of the probability-flow ODE in log-SNR.

@torch.no_grad()
def dpm_solver_2m_sample(model: nn.Module, x_T: torch.Tensor, schedule: Schedule, steps: int = 20,
                         spacing: str = "logsnr", cond: torch.Tensor | None = None,
                         clip_x0: bool = False, callback: Callback = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): ``steps`` model evaluations, deterministic.

    Book eqs. (7.4)-(7.5); Lu et al. 2022 ("DPM-Solver++"), Alg. 2. With a = sqrt(alpha_bar),
    b = sqrt(1 - alpha_bar), ell = log(a / b) (half log-SNR, Lu et al.'s lambda) and
    h = ell_next - ell_t, one step integrates the probability-flow ODE exactly in its linear part
    (an exponential integrator):

        x_next = (b_next / b_t) x_t - a_next (exp(-h) - 1) D,

    where D = x0_hat (first step) or D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_hat_prev, r = h_prev / h:
    the data prediction extrapolated linearly in ell from the previous step (second order).
    Timesteps: ``timesteps(schedule, steps, spacing)``. The default "logsnr" spaces them evenly in
    ell, the variable the solver steps in, from log SNR = -10 (code t = 994 for the cosine
    schedule, T = 1000) down to t = 0; there the last model evaluation returns its x0_hat, a final
    first-order step to alpha_bar = 1 (b = 0, where x_next = D = x0_hat): the official DPM-Solver
    code's ``denoise_to_zero``. (Its ``lower_order_final``, first-order solver steps at the end of
    short runs, is a different option, not used here: every step from the second one down to t = 0
    is second order.) Starting at t = T - 1 instead (e.g. ``spacing="time_quadratic"``) divides by
    sqrt(alpha_bar_{T-1}) = 4.9e-5 in the first x0_hat and the extrapolation carries that error on:
    the shipped MNIST model then diverges unless ``clip_x0=True`` (Lu et al. 2022, sec. 5,
    "thresholding"), which keeps it bounded but costs quality (benchmarks/results/sampling.md).
    ``generator`` is unused (an ODE).
    x_T: (B, ...); returns x0 (B, ...).
    """
    check_x_T(model, x_T, cond)
    ts = timesteps(schedule, steps, spacing).tolist()
    _check_eps_timesteps(schedule, ts)
    alpha_bar = schedule.alpha_bar.double().cpu()  # (T,); scalars per step, no device syncs
    ell = 0.5 * (alpha_bar.log() - (1 - alpha_bar).log())  # ell_t = lambda_t / 2, half log-SNR (T,)
    x_t, x0_prev, h_prev = x_T, None, None
    for i, t in enumerate(ts):
        _, x0_hat = _denoise(model, schedule, x_t, _batch_t(t, x_t), cond, clip_x0)
        if callback is not None:
            callback(dict(i=i, t=t, x_t=x_t, x0_hat=x0_hat))
        if i + 1 == len(ts):  # last step to ell = +inf (b = 0): x_next = x0_hat exactly
            x_t = x0_hat
            break
        s = ts[i + 1]
        h = (ell[s] - ell[t]).item()
        if x0_prev is None:
            D = x0_hat
        else:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0_hat - 1 / (2 * r) * x0_prev
        sigma_ratio = ((1 - alpha_bar[s]) / (1 - alpha_bar[t])).sqrt().item()
        x_t = sigma_ratio * x_t - alpha_bar[s].sqrt().item() * math.expm1(-h) * D
        x0_prev, h_prev = x0_hat, h
    return x_t
