"""Schedules: invariants of every builder, the published formulas, zero-terminal rescale, bad input."""

import dataclasses
import math

import pytest
import torch

from sfs.schedules import (Schedule, betas_from_alpha_bar, cosine_schedule, linear_schedule,
                           rescale_zero_terminal_snr, schedule_from_betas, sigmoid_schedule)

BUILDERS = [linear_schedule, cosine_schedule, sigmoid_schedule]
TS = [1, 2, 10, 1000, 4000]
FIELDS = [f.name for f in dataclasses.fields(Schedule)]


def f64(s):
    """The same schedule with every constant computed and kept in float64."""
    return schedule_from_betas(s.betas.double(), dtype=torch.float64)


def _cases():
    for build in BUILDERS:
        for T in TS:
            yield pytest.param(build, T, False, id=f"{build.__name__}-{T}")
            if T >= 2:
                yield pytest.param(build, T, True, id=f"{build.__name__}-{T}-zt")


@pytest.mark.parametrize("build,T,zero_terminal", list(_cases()))
def test_invariants(build, T, zero_terminal):
    s = build(T)
    if zero_terminal:
        s = rescale_zero_terminal_snr(s)
    assert s.T == T
    for name in FIELDS:
        x = getattr(s, name)
        assert x.shape == (T,) and x.dtype == torch.float32, name
        if name != "log_snr":
            assert torch.isfinite(x).all(), name
    ab = s.alpha_bar.double()
    assert (ab[1:] < ab[:-1]).all() and ab[0] <= 1
    assert (ab > 0).all() if not zero_terminal else (ab[:-1] > 0).all() and ab[-1] == 0
    assert (s.betas > 0).all() and (s.betas <= 1).all()
    assert (s.posterior_variance[1:] > 0).all() and s.posterior_variance[0] == 0
    assert torch.isfinite(s.log_snr[:-1]).all()
    assert s.log_snr[-1] == -math.inf if zero_terminal else torch.isfinite(s.log_snr[-1])


@pytest.mark.parametrize("build", BUILDERS)
def test_fields_agree_with_their_definitions(build):
    s = f64(rescale_zero_terminal_snr(build(100)))
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(s.alphas, 1 - s.betas, **tol)
    torch.testing.assert_close(s.alpha_bar, torch.cumprod(s.alphas, 0), **tol)
    torch.testing.assert_close(s.alpha_bar_prev[1:], s.alpha_bar[:-1], **tol)
    assert s.alpha_bar_prev[0] == 1
    torch.testing.assert_close(s.sqrt_alpha_bar ** 2, s.alpha_bar, **tol)
    torch.testing.assert_close(s.sqrt_one_minus_alpha_bar ** 2, 1 - s.alpha_bar, **tol)
    torch.testing.assert_close(s.snr, s.alpha_bar / (1 - s.alpha_bar), **tol)
    torch.testing.assert_close(s.log_snr.exp(), s.snr, **tol)
    # tilde beta_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t, book eq. (3.1)
    pv = (1 - s.alpha_bar_prev) / (1 - s.alpha_bar) * s.betas
    torch.testing.assert_close(s.posterior_variance, pv, **tol)
    torch.testing.assert_close(s.posterior_log_variance_clipped[1:], pv[1:].log(), **tol)
    torch.testing.assert_close(s.posterior_log_variance_clipped[0], pv[1].log(), **tol)


def test_linear_endpoints_and_scaling_with_T():
    s = linear_schedule(1000).to(dtype=torch.float64)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-6)
    s2 = linear_schedule(2000).to(dtype=torch.float64)
    assert s2.betas[-1].item() == pytest.approx(0.01, rel=1e-6)
    # Same curve at the same fraction of the process (to first order in beta).
    assert s2.alpha_bar[1999].item() == pytest.approx(s.alpha_bar[999].item(), rel=0.05)
    assert (linear_schedule(5).betas <= 0.999).all()  # scaled betas would exceed 1: clipped


def test_cosine_matches_nichol_dhariwal_formula():
    T, s_off = 1000, 0.008
    s = cosine_schedule(T, s=s_off).to(dtype=torch.float64)
    f = lambda u: math.cos((u + s_off) / (1 + s_off) * math.pi / 2) ** 2
    for t in [0, 10, 500, 900]:  # code index t is book step t + 1, time u = (t + 1) / T
        assert s.alpha_bar[t].item() == pytest.approx(f((t + 1) / T) / f(0), rel=1e-5)
    assert s.betas.max().item() == pytest.approx(0.999, rel=1e-6)  # the clip is active at the end


def test_sigmoid_matches_chen_formula():
    T, start, end, tau = 1000, -3.0, 3.0, 0.7
    s = sigmoid_schedule(T, start, end, tau).to(dtype=torch.float64)
    sig = lambda z: 1 / (1 + math.exp(-z))
    g = lambda u: (sig(end / tau) - sig((u * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))
    for t in [0, 10, 500, 900]:
        assert s.alpha_bar[t].item() == pytest.approx(g((t + 1) / T), rel=1e-5)


def test_zero_terminal_rescale_is_affine_in_sqrt_alpha_bar():
    s = linear_schedule(1000)
    z = rescale_zero_terminal_snr(s)
    r, rz = s.sqrt_alpha_bar.double(), z.sqrt_alpha_bar.double()
    assert z.betas[-1] == 1 and z.alpha_bar[-1] == 0 and z.snr[-1] == 0
    assert rz[0].item() == pytest.approx(r[0].item(), rel=1e-6)
    expected = (r - r[-1]) * r[0] / (r[0] - r[-1])  # Lin et al. 2023, alg. 1
    torch.testing.assert_close(rz, expected, rtol=1e-4, atol=1e-6)
    # The last posterior ignores x_T: q(x_{T-1} | x_T, x0) = N(sqrt(ab_{T-1}) x0, 1 - ab_{T-1}).
    assert z.posterior_mean_coef2[-1] == 0
    assert z.posterior_mean_coef1[-1].item() == pytest.approx(z.alpha_bar_prev[-1].sqrt().item(), rel=1e-5)
    assert z.posterior_variance[-1].item() == pytest.approx(1 - z.alpha_bar_prev[-1].item(), rel=1e-5)
    # Idempotent.
    torch.testing.assert_close(rescale_zero_terminal_snr(z).alpha_bar, z.alpha_bar, rtol=1e-4, atol=1e-7)


def test_to_changes_dtype_of_every_field():
    s = cosine_schedule(10).to(dtype=torch.float64)
    assert all(getattr(s, n).dtype == torch.float64 for n in FIELDS)
    assert s.to("cpu").T == 10


@pytest.mark.parametrize("call,name", [
    (lambda: linear_schedule(0), "T"),
    (lambda: cosine_schedule(2.5), "T"),
    (lambda: sigmoid_schedule(True), "T"),
    (lambda: linear_schedule(10, beta_start=0.02, beta_end=0.01), "beta_start"),
    (lambda: linear_schedule(10, beta_start=0.0), "beta_start"),
    (lambda: cosine_schedule(10, s=-0.1), "s"),
    (lambda: cosine_schedule(10, max_beta=1.5), "max_beta"),
    (lambda: sigmoid_schedule(10, start=3, end=-3), "start"),
    (lambda: sigmoid_schedule(10, tau=0), "tau"),
    (lambda: schedule_from_betas(torch.tensor([0.1, 0.0, 0.2])), "betas"),
    (lambda: schedule_from_betas(torch.tensor([0.1, 1.2])), "betas"),
    (lambda: schedule_from_betas(torch.tensor([0.1, 1.0, 0.2])), "betas"),  # 1 only at the end
    (lambda: schedule_from_betas(torch.tensor([[0.1]])), "betas"),
    (lambda: betas_from_alpha_bar(torch.tensor([1.0, 0.5, 0.7])), "alpha_bar"),
    (lambda: rescale_zero_terminal_snr(linear_schedule(1)), "T"),
])
def test_bad_arguments_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_beta_one_allowed_at_the_last_step():
    s = schedule_from_betas(torch.tensor([0.1, 0.2, 1.0]))
    assert s.alpha_bar[-1] == 0 and torch.isfinite(s.posterior_mean_coef1).all()
