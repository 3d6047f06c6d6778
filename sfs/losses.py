"""Training losses and the variational bound (negative log-likelihood in bits per dimension).

Book chapter 3 ("The ELBO"). ``simple_loss`` is what we train with (book eq. (3.7)), optionally
weighted per timestep (min-SNR). The rest evaluates the full bound of book eqs. (3.3)-(3.4),
-log p(x0) <= L_T + sum_{t>1} L_{t-1} + L_0, in bits per dimension: ``prior_bpd`` is L_T,
``vb_term`` is one L_{t-1} (a KL between Gaussians, eq. (3.5)) or the decoder L_0 (eq. (3.8)),
and ``nll_bpd`` adds them up for a model with the contract ``model(x_t, t, cond=None) -> eps_hat``.
Code index t = 0..T-1 is book step t + 1, so code t = 0 is the decoder term L_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sfs.forward import check_t, extract, q_posterior, q_sample
from sfs.parameterizations import v_target, x0_from_eps
from sfs.schedules import Schedule

LOG2 = math.log(2.0)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): mean over every dimension but the batch."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def snr_weight(schedule: Schedule, t: torch.Tensor, target: str = "eps", weighting: str | None = "min_snr",
               gamma: float = 5.0, max_weight: float | None = None) -> torch.Tensor:
    """Per-example loss weight w_t (B,) for ``target``, from a weight w_x0(t) on the x0 error.

    Book eqs. (4.6), (6.2). Errors of the three targets differ by SNR factors (eq. (4.6)):
    |eps - eps_hat|^2 = snr |x0 - x0_hat|^2 and |v - v_hat|^2 = (snr + 1) |x0 - x0_hat|^2. So one
    weighting w_x0(t) of the x0 error becomes w_x0 for target "x0", w_x0 / snr for "eps" and
    w_x0 / (snr + 1) for "v". weighting "snr": w_x0 = snr (the eps loss of eq. (3.7), whatever the
    target); "min_snr": w_x0 = min(snr, gamma) (Hang et al. 2023, eq. 8), i.e. min(1, gamma / snr) on
    the eps error; "snr+1": w_x0 = snr + 1, the v loss's weighting whatever the target (Salimans &
    Ho 2022, sec. 4), i.e. 1 + 1 / snr on the eps error: it keeps weight on the x0 error at high
    noise, where the eps loss's vanishes; None: weight 1 for every target. ``max_weight`` clamps
    w_t from above (an eps model's 1 + 1 / snr is 4e8 at t = T - 1 on the cosine schedule).
    (The book writes the weight w_t; lambda_t is the log-SNR, see book/notation.md.)
    """
    if max_weight is not None:
        from sfs.validate import check_float
        max_weight = check_float("max_weight", max_weight, low=0, low_open=True)
    w = _weight(schedule, t, target, weighting, gamma)
    return w if max_weight is None else w.clamp(max=max_weight)


def _weight(schedule: Schedule, t, target: str, weighting: str | None, gamma: float) -> torch.Tensor:
    t = check_t(schedule, t, t.numel() if isinstance(t, torch.Tensor) else 1)
    snr = schedule.snr.to(t.device)[t]
    if weighting is None:
        return torch.ones_like(snr)
    if weighting == "snr":
        w_x0 = snr
    elif weighting == "min_snr":
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        w_x0 = snr.clamp(max=gamma)
    elif weighting == "snr+1":
        w_x0 = snr + 1
    else:
        raise ValueError(f"weighting must be None, 'snr', 'min_snr' or 'snr+1', got {weighting!r}")
    if target == "x0":
        return w_x0
    if target == "eps":  # w_x0 / snr, written so snr = 0 (zero terminal SNR) gives 1 or inf, not 0/0
        if weighting == "snr+1":
            return 1 + 1 / snr
        return torch.ones_like(snr) if weighting == "snr" else (gamma / snr).clamp(max=1.0)
    if target == "v":
        return w_x0 / (snr + 1)
    raise ValueError(f"target must be 'eps', 'x0' or 'v', got {target!r}")


def simple_loss(model_output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                schedule: Schedule, target: str = "eps", weighting: str | None = None,
                gamma: float = 5.0, max_weight: float | None = None) -> torch.Tensor:
    """Mean squared error between the network output and its target, a scalar (batch mean).

    Book eq. (3.7); Ho et al. 2020, eq. 14 (target "eps", no weighting). model_output, x0, eps:
    (B, ...); t: (B,) int64, the step x_t was drawn at from x0 and eps. target "x0" or "v"
    (book eq. (4.2)) changes what the network predicts; ``weighting`` rescales each example as in
    ``snr_weight``, e.g. "min_snr" for min-SNR-gamma (Hang et al. 2023), clamped at ``max_weight``.
    """
    if not (model_output.shape == x0.shape == eps.shape):
        raise ValueError("model_output, x0 and eps must have the same shape, got "
                         f"{tuple(model_output.shape)}, {tuple(x0.shape)}, {tuple(eps.shape)}")
    if target == "eps":
        y = eps
    elif target == "x0":
        y = x0
    elif target == "v":
        y = v_target(schedule, x0, t, eps)
    else:
        raise ValueError(f"target must be 'eps', 'x0' or 'v', got {target!r}")
    t = check_t(schedule, t, x0.shape[0], x0.device)
    w = snr_weight(schedule, t, target, weighting, gamma, max_weight).to(x0)
    return (w * _mean_flat((model_output - y) ** 2)).mean()


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
              ) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats, elementwise (broadcasting).

    Book eq. (3.5): 1/2 (logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1).
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) ~ 1/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), elementwise (Page 1977; Ho et al. 2020 code)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
                                        ) -> torch.Tensor:
    """log P(x) in nats, elementwise, for 8-bit data x in [-1, 1] under N(means, e^(2 log_scales)).

    Book eq. (3.8); Ho et al. 2020, eq. 13. Each of the 256 pixel values owns a bin of width 2/255
    centred on it; the edge bins extend to -inf and +inf so the 256 probabilities sum to 1.
    log_scales is log of the standard deviation; all three broadcast to x's shape.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))            # lowest bin: (-inf, x + 1/255]
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))  # highest: [x - 1/255, inf)
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def prior_bpd(schedule: Schedule, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) in bits per dimension, per example (B,).

    Book eq. (3.4), first term; no parameters, and near 0 for a good schedule.
    """
    t = torch.full((x0.shape[0],), schedule.T - 1, dtype=torch.long, device=x0.device)
    mean = extract(schedule.sqrt_alpha_bar, t, x0.ndim).to(x0) * x0
    logvar = torch.log1p(-extract(schedule.alpha_bar, t, x0.ndim).to(x0))
    return _mean_flat(normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(logvar))) / LOG2


def vb_term(schedule: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
            model_mean: torch.Tensor, model_log_variance: torch.Tensor) -> torch.Tensor:
    """One term of the bound in bits per dimension, per example (B,). Book eqs. (3.4)-(3.5), (3.8).

    Where t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)), with
    p = N(model_mean, e^model_log_variance). Where t == 0: the decoder term
    L_0 = -log p(x0 | x_1), x0 on the 8-bit grid in [-1, 1]. x0, x_t, model_mean: (B, ...);
    model_log_variance broadcasts to (B, ...); t: (B,).
    """
    mean, _, log_var = q_posterior(schedule, x0, x_t, t)
    t = check_t(schedule, t, x0.shape[0], x0.device)
    kl = _mean_flat(normal_kl(mean, log_var, model_mean, model_log_variance)) / LOG2
    nll = -_mean_flat(discretized_gaussian_log_likelihood(
        x0, model_mean, 0.5 * model_log_variance.expand_as(x0))) / LOG2
    return torch.where(t == 0, nll, kl)


@dataclass
class BoundTerms:
    """The variational bound of book eq. (3.4), in bits per dimension."""

    total: torch.Tensor    # (B,) prior + terms @ weights: an estimate of the upper bound on -log2 p(x0) / D
    prior: torch.Tensor    # (B,) L_T
    terms: torch.Tensor    # (B, K) the evaluated L_{t-1}, one column per entry of t (column 0: L_0)
    t: torch.Tensor        # (K,) code timesteps evaluated, t[0] = 0
    weights: torch.Tensor  # (K,) how many times each column is counted in total: 1, or t_stride


def reverse_log_variance(schedule: Schedule, variance: str = "beta") -> torch.Tensor:
    """log sigma_t^2 (T,) of the fixed reverse variance: "beta" (sigma^2 = beta_t) or "posterior" (tilde beta_t).

    Ho et al. 2020, sec. 3.2. As in improved-diffusion, "beta" uses tilde beta_2 at t = 0, since
    sigma^2 = beta_1 is too wide for a sharp decoder; "posterior" is clipped there the same way.
    """
    if variance == "beta":
        return torch.cat([schedule.posterior_log_variance_clipped[:1], torch.log(schedule.betas[1:])])
    if variance == "posterior":
        return schedule.posterior_log_variance_clipped
    raise ValueError(f"variance must be 'beta' or 'posterior', got {variance!r}")


@torch.no_grad()
def nll_bpd(model, schedule: Schedule, x0: torch.Tensor, variance: str = "beta", t_stride: int = 1,
            cond=None, clip_denoised: bool = True, generator: torch.Generator | None = None,
            t_dense: int = 0) -> BoundTerms:
    """Evaluate the variational bound of book eq. (3.3) on x0 (B, ...) in [-1, 1], in bits/dim.

    Book eqs. (3.3)-(3.5), (3.8); Ho et al. 2020, eq. 5. Each term draws one x_t ~ q(x_t | x0)
    (book eq. (1.3)); the model's eps_hat gives x0_hat (eq. (4.1), clipped to [-1, 1] if
    ``clip_denoised``) and p's mean is the posterior mean at x0_hat (eq. (3.2)).
    t_stride = 1 evaluates all T terms (T model calls). t_stride = k > 1 always evaluates L_0 and
    the code steps t < ``t_dense``, and of the rest only every k-th from a random offset, counting
    each k times: every t then enters with probability 1/k and weight k, an unbiased estimate of the
    sum at about 1/k of the cost. Unbiased is not accurate: a trained model's bound sits mostly in
    the first few dozen steps, so a plain stride (t_dense = 0) swings by a factor of several from
    one offset to the next; evaluate those steps densely (t_dense = 50 for T = 1000, say).
    Returns a ``BoundTerms``: total and prior (B,), the per-step terms (B, K) with their code steps
    t (K,) and the weight (K,) each step is counted with, so total = prior + terms @ weights.
    """
    if isinstance(t_stride, bool) or not isinstance(t_stride, int) or t_stride < 1:
        raise ValueError(f"t_stride must be an int >= 1, got {t_stride!r}")
    B, T = x0.shape[0], schedule.T
    if isinstance(t_dense, bool) or not isinstance(t_dense, int) or not 0 <= t_dense <= T:
        raise ValueError(f"t_dense must be an int in [0, T] = [0, {T}], got {t_dense!r}")
    log_var_all = reverse_log_variance(schedule, variance)
    if t_stride > 1:  # a random offset, drawn on the generator's device
        offset = int(torch.randint(t_stride, (1,), generator=generator,
                                   device=generator.device if generator is not None else "cpu"))
    else:
        offset = 0
    first = max(1, t_dense)                        # steps below this are all evaluated
    ts = list(range(first)) + list(range(first + offset, T, t_stride))
    weights = torch.tensor([1.0] * first + [float(t_stride)] * (len(ts) - first))
    terms = []
    for t_int in ts:
        t = torch.full((B,), t_int, dtype=torch.long, device=x0.device)
        x_t = q_sample(schedule, x0, t, generator=generator)
        x0_hat = x0_from_eps(schedule, x_t, t, model(x_t, t, cond))
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        model_mean, _, _ = q_posterior(schedule, x0_hat, x_t, t)
        log_var = extract(log_var_all, t, x0.ndim).to(x0)
        terms.append(vb_term(schedule, x0, x_t, t, model_mean, log_var))
    terms = torch.stack(terms, dim=1)  # (B, K)
    prior = prior_bpd(schedule, x0)
    total = prior + (terms * weights.to(terms)).sum(dim=1)
    return BoundTerms(total=total, prior=prior, terms=terms, t=torch.tensor(ts), weights=weights)
