"""Samplers against an analytic model whose eps-prediction is exact.

If the data are x0 ~ N(mu, s^2 I), then x_t ~ N(sqrt(ab) mu, (ab s^2 + 1 - ab) I) and the optimal
eps-prediction is E[eps | x_t] = sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab), in closed form
at every t. A correct sampler driven by it must reproduce mu and s; for a mixture of two Gaussians
it must also reproduce the mixture's weights.
"""

import math

import pytest
import torch
import torch.nn as nn

from sfs.parameterizations import x0_from_eps
from sfs.samplers import (LOG_SNR_MIN, ddim_sample, ddim_sigma, ddim_timesteps, ddpm_sample,
                          dpm_solver_2m_sample, logsnr_timesteps, timesteps)
from sfs.schedules import cosine_schedule, linear_schedule, rescale_zero_terminal_snr, schedule_from_betas

T = 1000
SCHEDULE = cosine_schedule(T)



class GaussianMixtureEps(nn.Module):
    """Exact E[eps | x_t] for data sum_k w_k N(mu_k, s_k^2 I) in D dims: (B, D), (B,) -> (B, D)."""

    def __init__(self, schedule, mus, stds, weights):
        super().__init__()
        self.ab = schedule.alpha_bar.double()
        self.mus = torch.tensor(mus, dtype=torch.float64)          # (K, D)
        self.vars = torch.tensor(stds, dtype=torch.float64) ** 2   # (K,)
        self.logw = torch.tensor(weights, dtype=torch.float64).log()
        self.calls = 0

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        x = x_t.double()
        ab = self.ab[t][:, None, None]                               # (B, 1, 1)
        D = x.shape[1]
        v = ab * self.vars[None, :, None] + 1 - ab                   # (B, K, 1) variance of x_t | k
        diff = x[:, None, :] - ab.sqrt() * self.mus[None]            # (B, K, D)
        logp = self.logw - 0.5 * (diff**2 / v).sum(-1) - 0.5 * D * v[..., 0].log()  # (B, K)
        resp = logp.softmax(-1)[..., None]                           # (B, K, 1)
        score = -(resp * diff / v).sum(1)                            # (B, D)
        return (-(1 - ab[:, 0]).sqrt() * score).to(x_t.dtype)


class GaussianEps(nn.Module):
    """Exact E[eps | x_t] for data N(mu, s^2 I): sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab s^2 + 1 - ab)."""

    def __init__(self, schedule, mu, s):
        super().__init__()
        self.ab, self.mu, self.s, self.calls = schedule.alpha_bar.double(), mu, s, 0

    def forward(self, x_t, t, cond=None):
        self.calls += 1
        ab = self.ab[t].view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
        return (1 - ab).sqrt() * (x_t - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab)

    def ode_solution(self, x_T):
        """Where the probability-flow ODE takes x_T: the flow is the monotone linear map between
        the Gaussian marginals, so the standardized value (x - mean_t) / std_t is conserved."""
        ab = self.ab[-1]
        return self.mu + self.s * (x_T.double() - ab.sqrt() * self.mu) / (ab * self.s**2 + 1 - ab).sqrt()


def gaussian(mu=0.3, s=0.5, schedule=SCHEDULE):
    return GaussianEps(schedule, mu, s)


def noise(B=2000, D=2, seed=0):
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, sample", [
    ("ddpm-1000 posterior", lambda m, x: ddpm_sample(m, x, SCHEDULE, "posterior", generator=torch.Generator().manual_seed(1))),
    ("ddpm-1000 beta", lambda m, x: ddpm_sample(m, x, SCHEDULE, "beta", generator=torch.Generator().manual_seed(1))),
    ("ddim-50 eta=0", lambda m, x: ddim_sample(m, x, SCHEDULE, 50)),
    ("ddim-50 eta=1", lambda m, x: ddim_sample(m, x, SCHEDULE, 50, eta=1.0, generator=torch.Generator().manual_seed(1))),
    ("dpm++2m-10", lambda m, x: dpm_solver_2m_sample(m, x, SCHEDULE, 10)),
    ("dpm++2m-20", lambda m, x: dpm_solver_2m_sample(m, x, SCHEDULE, 20)),
    ("dpm++2m-10 time_quadratic", lambda m, x: dpm_solver_2m_sample(m, x, SCHEDULE, 10, "time_quadratic")),
    ("ddim-50 eta=0 logsnr", lambda m, x: ddim_sample(m, x, SCHEDULE, 50, spacing="logsnr")),
])
def test_samplers_reproduce_a_gaussian(name, sample):
    mu, s = 0.3, 0.5
    x0 = sample(gaussian(mu, s), noise())
    # 4000 numbers: the standard error of the mean is 0.008, of the std 0.006.
    assert abs(x0.mean().item() - mu) < 0.03, name
    assert abs(x0.std().item() - s) < 0.03, name


@pytest.mark.parametrize("sample", [
    lambda m, x: ddpm_sample(m, x, cosine_schedule(250), generator=torch.Generator().manual_seed(2)),
    lambda m, x: dpm_solver_2m_sample(m, x, cosine_schedule(250), 20, clip_x0=False),
])
def test_samplers_reproduce_mixture_weights(sample):
    # 1-D mixture 0.25 N(-1, 0.2^2) + 0.75 N(1, 0.2^2): the share of samples > 0 must be 0.75.
    # (cosine_schedule(250) traces the same alpha_bar curve as T = 1000, in 4x fewer steps.)
    model = GaussianMixtureEps(cosine_schedule(250), [[-1.0], [1.0]], [0.2, 0.2], [0.25, 0.75])
    x0 = sample(model, noise(3000, 1, seed=3))
    assert abs((x0 > 0).float().mean().item() - 0.75) < 0.03
    assert abs(x0[x0 > 0].std().item() - 0.2) < 0.03


def test_dpm_solver_clips_x0_only_when_asked():
    # The analytic Gaussian is not image data: unclipped (the default of every sampler) its x0_hat
    # leaves [-1, 1]; with clip_x0=True every x0_hat the callback sees stays inside.
    model, x_T = gaussian(), noise(64)
    seen = []
    dpm_solver_2m_sample(model, x_T, SCHEDULE, 10, clip_x0=True, callback=seen.append)
    assert all(s["x0_hat"].abs().max() <= 1 for s in seen)
    seen_raw = []
    dpm_solver_2m_sample(model, x_T, SCHEDULE, 10, callback=seen_raw.append)
    assert max(s["x0_hat"].abs().max().item() for s in seen_raw) > 1


def test_logsnr_timesteps_are_even_in_log_snr_and_start_at_log_snr_min():
    for schedule in (SCHEDULE, linear_schedule(T), rescale_zero_terminal_snr(linear_schedule(T))):
        lam = schedule.alpha_bar.double().log() - (1 - schedule.alpha_bar.double()).log()
        t_start = int((lam >= LOG_SNR_MIN).nonzero().max())
        assert lam[t_start] >= LOG_SNR_MIN > lam[t_start + 1]
        for steps in (1, 2, 10, 20, 100, t_start + 1):
            ts = logsnr_timesteps(schedule, steps)
            assert len(ts) == steps and ts.dtype == torch.long and ts[0] == t_start
            assert torch.all(ts[:-1] > ts[1:]) and ts.min() >= 0
            if 2 <= steps <= 20:  # no collisions: each t is the nearest to its even log-SNR target
                assert ts[-1] == 0
                target = torch.linspace(float(lam[t_start]), float(lam[0]), steps, dtype=torch.float64)
                slope = (lam[:-1] - lam[1:]).max()      # the largest log-SNR change of one step
                assert (lam[ts] - target).abs().max() <= slope / 2 + 1e-9
    # the cosine schedule: log SNR(T - 1) = -19.8, so the grid starts 5 steps earlier, at t = 994
    assert logsnr_timesteps(SCHEDULE, 10).tolist()[:2] == [994, 984]
    assert torch.equal(timesteps(SCHEDULE, 10, "logsnr"), logsnr_timesteps(SCHEDULE, 10))
    assert torch.equal(timesteps(SCHEDULE, 10, "trailing"), ddim_timesteps(T, 10, "trailing"))


def test_ode_solvers_converge_to_the_exact_flow():
    # The probability-flow ODE of a Gaussian is solvable in closed form: the second-order solver
    # gets close in 10 and 20 steps; first-order DDIM on the same timesteps is several times worse.
    model, x_T = gaussian(), noise(256)
    exact = model.ode_solution(x_T)
    err = {(name, n): (f(model, x_T, SCHEDULE, n, spacing="time_quadratic", clip_x0=False) - exact).abs().mean().item()
           for name, f in [("dpm", dpm_solver_2m_sample), ("ddim", ddim_sample)] for n in (10, 20)}
    assert err["dpm", 10] < 0.03 and err["dpm", 20] < 0.005, err
    assert err["ddim", 10] > 2 * err["dpm", 10] and err["ddim", 20] > 5 * err["dpm", 20], err


def test_ddim_eta0_is_deterministic_and_uses_no_generator():
    model, x_T = gaussian(), noise(64)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    a = ddim_sample(model, x_T, SCHEDULE, 20, eta=0.0, generator=g)
    b = ddim_sample(model, x_T, SCHEDULE, 20, eta=0.0)
    assert torch.equal(a, b)
    assert torch.equal(g.get_state(), state)


def test_generator_makes_stochastic_samplers_reproducible():
    model, x_T = gaussian(), noise(64)
    for sample in (lambda g: ddpm_sample(model, x_T, linear_schedule(100), generator=g),
                   lambda g: ddim_sample(model, x_T, SCHEDULE, 10, eta=0.5, generator=g)):
        a = sample(torch.Generator().manual_seed(7))
        b = sample(torch.Generator().manual_seed(7))
        c = sample(torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_ddim_eta1_all_steps_is_ddpm_with_posterior_variance():
    # Same noise draws in the same order: identical up to float rounding (Song et al. 2021, sec. 4.1).
    sched = linear_schedule(50)
    model = gaussian(schedule=sched)
    x_T = noise(32)
    a = ddpm_sample(model, x_T, sched, "posterior", generator=torch.Generator().manual_seed(3))
    b = ddim_sample(model, x_T, sched, 50, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_ddim_sigma_eta1_is_posterior_std():
    sched = schedule_from_betas(SCHEDULE.betas, dtype=torch.float64)  # float64 for an exact identity
    ab, abp = sched.alpha_bar, sched.alpha_bar_prev
    sigma = ddim_sigma(ab[1:], abp[1:], 1.0)
    assert torch.allclose(sigma**2, sched.posterior_variance[1:], rtol=1e-9, atol=1e-12)
    assert torch.all(ddim_sigma(ab, abp, 0.0) == 0)


@pytest.mark.parametrize("sample", [
    lambda m, x, cb: ddpm_sample(m, x, linear_schedule(100), callback=cb, generator=torch.Generator().manual_seed(0)),
    lambda m, x, cb: ddim_sample(m, x, SCHEDULE, 10, eta=1.0, callback=cb, generator=torch.Generator().manual_seed(0)),
    lambda m, x, cb: dpm_solver_2m_sample(m, x, SCHEDULE, 10, callback=cb),
])
def test_callback_per_step_and_no_noise_at_the_last_step(sample):
    model, x_T = gaussian(), noise(16)
    seen = []
    out = sample(model, x_T, seen.append)
    assert [d["i"] for d in seen] == list(range(len(seen))) and len(seen) == model.calls
    assert seen[-1]["t"] == min(d["t"] for d in seen)
    assert set(seen[0]) == {"i", "t", "x_t", "x0_hat"} and seen[0]["x_t"] is x_T
    assert torch.equal(out, seen[-1]["x0_hat"])  # the last step returns x0_hat: no noise added


def test_clip_x0_keeps_samples_in_range():
    model = gaussian(0.0, 3.0)  # data far outside [-1, 1]
    out = ddim_sample(model, noise(64), SCHEDULE, 10, clip_x0=True)
    assert out.abs().max() <= 1.0
    assert dpm_solver_2m_sample(model, noise(64), SCHEDULE, 10, clip_x0=True).abs().max() <= 1.0
    assert dpm_solver_2m_sample(model, noise(64), SCHEDULE, 10).abs().max() > 1.0  # the default: no clip


def test_x0_hat_is_the_posterior_mean_at_high_snr():
    # Sanity of the analytic model: at t = 0, x0_hat is close to x_t.
    model, x = gaussian(), noise(8)
    t = torch.zeros(8, dtype=torch.long)
    assert (x0_from_eps(SCHEDULE, x, t, model(x, t)) - x).abs().max() < 0.05


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 50, "uniform").tolist() == list(range(980, -1, -20))
    tr = ddim_timesteps(1000, 10, "trailing").tolist()
    assert tr == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    for spacing in ("uniform", "trailing", "quadratic", "time_quadratic"):
        for steps in (1, 2, 7, 10, 50, 333, 999, 1000):
            ts = ddim_timesteps(1000, steps, spacing)
            assert len(ts) == steps and ts.dtype == torch.long
            assert torch.all(ts[:-1] > ts[1:]) and ts.min() >= 0 and ts.max() <= 999
    q = ddim_timesteps(1000, 50, "quadratic")
    assert q[0] == int(0.8 * 1000) - 1 or q[0] == 800  # (sqrt(800))^2 up to float rounding
    assert ddim_timesteps(1000, 1000, "uniform").tolist() == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 10, "time_quadratic").tolist() == [999, 789, 604, 444, 308, 197, 111, 49, 12, 0]


def test_uniform_spacing_against_the_original_ddim_grid():
    # The original DDIM code visits range(0, T, T // steps): the same grid as "uniform" when steps
    # divides T, and more than `steps` timesteps otherwise (of which "uniform" is the first steps).
    for steps in (1, 2, 8, 10, 20, 50, 100, 125, 1000):
        assert ddim_timesteps(1000, steps, "uniform").tolist() == list(range(0, 1000, 1000 // steps))[::-1]
    for steps in (3, 7, 30, 300, 999):
        original = list(range(0, 1000, 1000 // steps))
        assert len(original) > steps
        assert ddim_timesteps(1000, steps, "uniform").tolist() == original[:steps][::-1]
    assert len(range(0, 1000, 1000 // 30)) == 31 and ddim_timesteps(1000, 30, "uniform")[0] == 957
    # diffusers' "leading" spacing (steps_offset = 0), arange(steps) * (T // steps), for every steps:
    for steps in (3, 7, 30, 50, 999):
        assert ddim_timesteps(1000, steps, "uniform").tolist() == [k * (1000 // steps) for k in range(steps)][::-1]


ZERO_SNR = rescale_zero_terminal_snr(cosine_schedule(100))


def test_eps_prediction_at_zero_terminal_snr_would_be_nan():
    # The premise of the refusal below: alpha_bar_{T-1} = 0 and x0_hat = (x_t - eps_hat) / 0.
    assert ZERO_SNR.alpha_bar[-1] == 0
    x = torch.randn(2, 3)
    t = torch.full((2,), ZERO_SNR.T - 1)
    assert not torch.isfinite(x0_from_eps(ZERO_SNR, x, t, 0.5 * x)).any()


@pytest.mark.parametrize("call", [
    lambda m, x: ddpm_sample(m, x, ZERO_SNR, generator=torch.Generator().manual_seed(0)),
    lambda m, x: ddim_sample(m, x, ZERO_SNR, 10, spacing="trailing"),
    lambda m, x: ddim_sample(m, x, ZERO_SNR, 10, eta=1.0, spacing="time_quadratic"),
    lambda m, x: dpm_solver_2m_sample(m, x, ZERO_SNR, 10, spacing="time_quadratic"),
    lambda m, x: dpm_solver_2m_sample(m, x, ZERO_SNR, 10, spacing="trailing", clip_x0=True),
])
def test_zero_terminal_snr_at_t_T_minus_1_is_refused(call):
    model = gaussian(schedule=ZERO_SNR)
    with pytest.raises(ValueError, match=r"alpha_bar\[99\] = 0 .*zero-terminal-SNR.* predict v"):
        call(model, noise(8))
    assert model.calls == 0  # refused at the call, before any model evaluation


@pytest.mark.parametrize("call", [
    lambda m, x: ddim_sample(m, x, ZERO_SNR, 10),                       # "uniform" starts at t = 90
    lambda m, x: dpm_solver_2m_sample(m, x, ZERO_SNR, 10),              # "logsnr" starts at log SNR -10
])
def test_zero_terminal_snr_spacings_that_skip_t_T_minus_1_still_sample(call):
    x0 = call(gaussian(schedule=ZERO_SNR), noise(8))
    assert torch.isfinite(x0).all()


class TinyUNetLike(nn.Module):
    """Stands in for the U-Net: has a config with in_channels and image_size."""

    class config:
        in_channels, image_size, num_classes = 1, 8, 10

    def forward(self, x_t, t, cond=None):
        return torch.zeros_like(x_t)


@pytest.mark.parametrize("call, match", [
    (lambda m, x: ddim_sample(m, x, SCHEDULE, steps=0), r"steps must be an int in \[1, T\] = \[1, 1000\]"),
    (lambda m, x: ddim_sample(m, x, SCHEDULE, steps=1001), r"steps .* \[1, 1000\]"),
    (lambda m, x: dpm_solver_2m_sample(m, x, SCHEDULE, steps=0), r"steps"),
    (lambda m, x: dpm_solver_2m_sample(m, x, SCHEDULE, steps=996), r"steps .* \[1, 995\] for the logsnr"),
    (lambda m, x: logsnr_timesteps(SCHEDULE, 10, log_snr_min=30.0), r"log_snr_min must be .* below"),
    (lambda m, x: ddim_timesteps(T, 10, "logsnr"), r"timesteps\(schedule, steps, 'logsnr'\)"),
    (lambda m, x: ddim_sample(m, x, SCHEDULE, eta=-0.1), r"eta must be a finite number in \[0, 1\]"),
    (lambda m, x: ddim_sample(m, x, SCHEDULE, eta=1.5), r"eta must be a finite number in \[0, 1\]"),
    (lambda m, x: ddim_sample(m, x, SCHEDULE, eta=math.nan), r"eta"),
    (lambda m, x: ddim_sample(m, x, SCHEDULE, spacing="cubic"), r"spacing must be one of .*uniform"),
    (lambda m, x: ddpm_sample(m, x, SCHEDULE, variance="learned"), r"variance must be one of .*beta"),
    (lambda m, x: ddpm_sample(m, x[:, :, :4], SCHEDULE), r"x_T must have shape .*\(B, 1, 8, 8\)"),
    (lambda m, x: ddim_sample(m, x.repeat(1, 3, 1, 1), SCHEDULE), r"in_channels"),
    (lambda m, x: ddim_sample(m, x, SCHEDULE, cond=torch.tensor([11, 0])), r"cond .*\[0, 10\]"),
    (lambda m, x: ddim_sample(m, x, SCHEDULE, cond=torch.tensor([1.0, 0.0])), r"cond must be None or an int64"),
])
def test_bad_arguments_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call(TinyUNetLike(), torch.randn(2, 1, 8, 8))


def test_dpm_solver_defaults_stay_in_the_data_range_on_the_shipped_model():
    # Regression for the start point: from t = T - 1 (time_quadratic, unclipped) the first x0_hat of
    # the shipped MNIST U-Net is the eps error times 20,000 and the samples diverge; the default
    # logsnr grid starts at log SNR = -10 and its samples stay near [-1, 1] with no clipping.
    from sfs.checkpoints import load_model
    model, card = load_model("mnist-uncond")
    schedule = cosine_schedule(card["T"])
    x_T = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x0 = dpm_solver_2m_sample(model, x_T, schedule, 10)
    assert x0.abs().max() < 1.5 and x0.std() > 0.5, (x0.abs().max(), x0.std())
    diverged = dpm_solver_2m_sample(model, x_T, schedule, 10, spacing="time_quadratic")
    assert diverged.abs().max() > 10
