"""Parameterizations: round trips, v as a velocity, score and Tweedie against a Gaussian in closed form."""

import pytest
import torch

from sfs.forward import q_sample
from sfs.parameterizations import (eps_from_score, eps_from_v, eps_from_x0, score_from_eps, v_from_eps,
                                   v_target, x0_from_eps, x0_from_score, x0_from_v)
from sfs.schedules import cosine_schedule, rescale_zero_terminal_snr, schedule_from_betas


def f64(s):
    return schedule_from_betas(s.betas.double(), dtype=torch.float64)


@pytest.fixture
def setup():
    s = f64(cosine_schedule(200))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 50, 100, 180, 199])
    return s, x0, eps, t, q_sample(s, x0, t, eps)


def test_all_conversions_agree(setup):
    s, x0, eps, t, x_t = setup
    v = v_target(s, x0, t, eps)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    close(x0_from_eps(s, x_t, t, eps), x0)
    close(eps_from_x0(s, x_t, t, x0), eps)
    close(x0_from_v(s, x_t, t, v), x0)
    close(eps_from_v(s, x_t, t, v), eps)
    close(v_from_eps(s, x_t, t, eps), v)
    score = score_from_eps(s, t, eps)
    close(eps_from_score(s, t, score), eps)
    close(x0_from_score(s, x_t, t, score), x0)  # Tweedie with this score is eq. (4.1)


def test_v_is_the_velocity_along_the_circle(setup):
    """With alpha_bar = cos^2(phi), x_t(phi) = cos(phi) x0 + sin(phi) eps and v = dx_t / dphi."""
    s, x0, eps, t, _ = setup
    phi = torch.arccos(s.sqrt_alpha_bar[t]).view(-1, 1, 1, 1)
    h = 1e-6
    x = lambda p: torch.cos(p) * x0 + torch.sin(p) * eps
    torch.testing.assert_close(v_target(s, x0, t, eps), (x(phi + h) - x(phi - h)) / (2 * h), rtol=1e-6, atol=1e-6)


def test_score_and_tweedie_for_gaussian_data():
    """x0 ~ N(mu, sd^2): q(x_t) = N(sqrt(ab) mu, ab sd^2 + 1 - ab) and E[eps | x_t] are closed form."""
    s = f64(cosine_schedule(100))
    mu, sd = 0.7, 0.3
    t = torch.tensor([0, 10, 50, 99])
    ab = s.alpha_bar[t].view(-1, 1)
    x_t = torch.linspace(-2, 2, 5, dtype=torch.float64).repeat(4, 1)  # (4, 5)
    var = ab * sd**2 + 1 - ab
    eps_mean = (1 - ab).sqrt() * (x_t - ab.sqrt() * mu) / var  # Cov(eps, x_t) / Var(x_t) * (x_t - E x_t)
    true_score = -(x_t - ab.sqrt() * mu) / var
    torch.testing.assert_close(score_from_eps(s, t, eps_mean), true_score)
    tweedie = mu + ab.sqrt() * sd**2 * (x_t - ab.sqrt() * mu) / var  # Gaussian conditional mean
    torch.testing.assert_close(x0_from_score(s, x_t, t, true_score), tweedie)
    torch.testing.assert_close(x0_from_eps(s, x_t, t, eps_mean), tweedie)


def test_v_conversions_finite_at_zero_terminal_snr():
    s = f64(rescale_zero_terminal_snr(cosine_schedule(10)))
    t = torch.tensor([9, 9])
    x_t, v = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(x0_from_v(s, x_t, t, v), -v)  # at alpha_bar = 0: x_t = eps, v = -x0
    torch.testing.assert_close(eps_from_v(s, x_t, t, v), x_t)


def test_bad_inputs(setup):
    s, x0, eps, t, x_t = setup
    with pytest.raises(ValueError, match="x_t and eps"):
        x0_from_eps(s, x_t, t, eps[:, :1])
    with pytest.raises(ValueError, match=r"\bt\b.*\[0, 199\]"):
        v_target(s, x0, t + 10, eps)
    with pytest.raises(ValueError, match=r"\bt\b"):
        score_from_eps(s, t[:3], eps)
