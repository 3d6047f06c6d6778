"""Forward process: closed form vs. step-by-step, posterior vs. Bayes' rule, input validation."""

import pytest
import torch

from sfs.forward import extract, q_posterior, q_sample, q_step
from sfs.schedules import cosine_schedule, linear_schedule, rescale_zero_terminal_snr, schedule_from_betas


def f64(s):
    """The same schedule with every constant computed and kept in float64."""
    return schedule_from_betas(s.betas.double(), dtype=torch.float64)


@pytest.fixture
def s64():
    return f64(cosine_schedule(50))


def test_extract_shape_and_values():
    a = torch.arange(10.0)
    out = extract(a, torch.tensor([3, 7]), 4)
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [3.0, 7.0]


def test_q_sample_is_the_closed_form(s64):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 10, 30, 49])
    ab = s64.alpha_bar[t].view(4, 1, 1, 1)
    torch.testing.assert_close(q_sample(s64, x0, t, eps), ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    # Reproducible with a generator, and a Python int t means the whole batch.
    a = q_sample(s64, x0, 7, generator=torch.Generator().manual_seed(1))
    b = q_sample(s64, x0, torch.full((4,), 7), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_closed_form_matches_step_by_step_chain(s64):
    """Running q_step t+1 times gives the marginal of eq. (1.3): mean sqrt(ab) x0, var 1 - ab."""
    g = torch.Generator().manual_seed(0)
    n, k = 30_000, 30  # below torch's 32768-element threshold for multithreaded elementwise ops
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).repeat(n // 2)[:, None]  # (n, 1)
    x, mean_only = x0.clone(), x0.clone()
    for t in range(k + 1):
        tt = torch.full((n,), t)
        x = q_step(s64, x, tt, generator=g)
        mean_only = q_step(s64, mean_only, tt, eps=torch.zeros_like(x0))
    ab = s64.alpha_bar[k]
    torch.testing.assert_close(mean_only, ab.sqrt() * x0)  # exact: prod sqrt(alpha) = sqrt(ab)
    for sign in (0, 1):
        xs = x[sign::2, 0]
        assert xs.mean().item() == pytest.approx((ab.sqrt() * x0[sign, 0]).item(), abs=0.03)
        assert xs.var().item() == pytest.approx((1 - ab).item(), rel=0.04)
    # The closed form gives the same distribution.
    y = q_sample(s64, x0, torch.full((n,), k), generator=g)
    assert (y.var() - x.var()).abs().item() < 0.04


@pytest.mark.parametrize("zero_terminal", [False, True])
def test_posterior_matches_bayes_rule(zero_terminal):
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): product of two Gaussians in x_{t-1}."""
    s = linear_schedule(100)
    if zero_terminal:
        s = rescale_zero_terminal_snr(s)
    s = f64(s)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 2, 50, 98, 99])
    x0 = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    mean, var, log_var = q_posterior(s, x0, x_t, t)
    alpha, beta, ab_prev = (a[t].view(5, 1, 1) for a in (s.alphas, s.betas, s.alpha_bar_prev))
    precision = 1 / (1 - ab_prev) + alpha / beta
    bayes_mean = (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * x_t / beta) / precision
    torch.testing.assert_close(mean, bayes_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, 1 / precision, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(log_var, var.log())
    assert var.shape == (5, 1, 1)


def test_posterior_at_first_step_is_x0(s64):
    x0, x_t = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    mean, var, log_var = q_posterior(s64, x0, x_t, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all() and torch.isfinite(log_var).all()


@pytest.mark.parametrize("t", [
    torch.tensor([0, 50]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0]), torch.tensor([[0, 1]]),
    torch.tensor([0, 1, 2]), 50,
])
def test_bad_t_names_t_and_its_range(s64, t):
    x0 = torch.zeros(2, 3, dtype=torch.float64)
    for call in (lambda: q_sample(s64, x0, t), lambda: q_step(s64, x0, t),
                 lambda: q_posterior(s64, x0, x0, t)):
        with pytest.raises(ValueError, match=r"\bt\b"):
            call()
    with pytest.raises(ValueError, match=r"\[0, 49\]"):
        q_sample(s64, x0, torch.tensor([0, 50]))


def test_shape_mismatches_raise(s64):
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="x0 and x_t"):
        q_posterior(s64, torch.zeros(2, 3), torch.zeros(2, 4), t)
    with pytest.raises(ValueError, match="eps"):
        q_sample(s64, torch.zeros(2, 3), t, eps=torch.zeros(2, 4))
