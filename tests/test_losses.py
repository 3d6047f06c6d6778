"""Losses and the bound: KL vs. Monte Carlo, min-SNR weights, the discretized decoder, nll_bpd."""

import math

import pytest
import torch

from sfs.forward import q_posterior, q_sample
from sfs.losses import (approx_standard_normal_cdf, discretized_gaussian_log_likelihood, nll_bpd,
                        normal_kl, prior_bpd, simple_loss, snr_weight, vb_term)
from sfs.parameterizations import eps_from_x0, v_from_eps
from sfs.schedules import (betas_from_alpha_bar, linear_schedule, rescale_zero_terminal_snr,
                           schedule_from_betas)

KNOWN_SNR = torch.tensor([20.0, 5.0, 1.0, 0.25], dtype=torch.float64)


@pytest.fixture
def known():
    """A 4-step schedule whose SNRs are exactly 20, 5, 1, 0.25."""
    ab = KNOWN_SNR / (1 + KNOWN_SNR)
    betas = betas_from_alpha_bar(torch.cat([torch.ones(1, dtype=torch.float64), ab]))
    return schedule_from_betas(betas, dtype=torch.float64)


def test_normal_kl_matches_monte_carlo_and_torch():
    g = torch.Generator().manual_seed(0)
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.7)
    x = m1 + math.exp(lv1 / 2) * torch.randn(400_000, generator=g, dtype=torch.float64)
    logp = lambda x, m, lv: -0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 / math.exp(lv))
    mc = (logp(x, m1, lv1) - logp(x, m2, lv2)).mean().item()
    kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2))).item()
    assert kl == pytest.approx(mc, abs=3e-3)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, math.exp(lv1 / 2)),
                                            torch.distributions.Normal(m2, math.exp(lv2 / 2)))
    assert kl == pytest.approx(ref.item(), rel=1e-6)


def test_min_snr_weights_at_known_snrs(known):
    t = torch.arange(4)
    snr, g = KNOWN_SNR, 5.0
    ok = lambda target, weighting, expected: torch.testing.assert_close(
        snr_weight(known, t, target, weighting, g), expected, rtol=1e-9, atol=1e-12)
    ok("eps", "min_snr", torch.tensor([0.25, 1.0, 1.0, 1.0], dtype=torch.float64))
    ok("x0", "min_snr", torch.tensor([5.0, 5.0, 1.0, 0.25], dtype=torch.float64))
    ok("v", "min_snr", snr.clamp(max=g) / (snr + 1))
    ok("eps", "snr", torch.ones(4, dtype=torch.float64))
    ok("x0", "snr", snr)
    ok("v", "snr", snr / (snr + 1))
    ok("v", None, torch.ones(4, dtype=torch.float64))
    ok("eps", "snr+1", 1 + 1 / snr)  # the v loss's weight 1 + snr on the x0 error, per target
    ok("x0", "snr+1", snr + 1)
    ok("v", "snr+1", torch.ones(4, dtype=torch.float64))


def test_max_weight_clamps_every_weighting(known):
    t = torch.arange(4)
    w = snr_weight(known, t, "eps", "snr+1", max_weight=2.0)  # 1.05, 1.2, 2, 5 -> 5 clamped
    torch.testing.assert_close(w, torch.tensor([1.05, 1.2, 2.0, 2.0], dtype=torch.float64))
    assert snr_weight(known, t, "x0", "snr", max_weight=3.0).max() == 3.0
    # a clamp above every weight changes nothing
    torch.testing.assert_close(snr_weight(known, t, "eps", "snr+1", max_weight=1e9),
                               snr_weight(known, t, "eps", "snr+1"))


def test_snr_plus_one_on_eps_keeps_the_x0_error_weighted_at_high_noise():
    """At t = T - 1 of the cosine schedule the eps loss weights the x0 error by snr ~ 2e-9;
    "snr+1" restores weight ~1 (up to the clamp)."""
    from sfs.schedules import cosine_schedule
    s = cosine_schedule(1000)
    t = torch.tensor([999, 950, 500])
    w_x0 = snr_weight(s, t, "eps", "snr+1", max_weight=50.0) * s.snr[t]  # eq. (4.6)
    assert w_x0[0] < 1e-6 and 0.29 < w_x0[1] < 0.3  # clamped: 50 snr
    assert abs(w_x0[2] - (s.snr[500] + 1)) < 1e-4  # unclamped: 1 + snr


@pytest.mark.parametrize("weighting", ["snr", "min_snr", "snr+1"])
def test_weighted_losses_agree_across_targets(known, weighting):
    """One denoiser written as eps_hat, x0_hat or v_hat gets the same weighted loss."""
    g = torch.Generator().manual_seed(1)
    x0, eps, x0_hat = (torch.randn(4, 3, 2, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.arange(4)
    x_t = q_sample(known, x0, t, eps)
    eps_hat = eps_from_x0(known, x_t, t, x0_hat)
    v_hat = v_from_eps(known, x_t, t, eps_hat)
    losses = [simple_loss(out, x0, eps, t, known, target=target, weighting=weighting)
              for out, target in [(eps_hat, "eps"), (x0_hat, "x0"), (v_hat, "v")]]
    torch.testing.assert_close(losses[1], losses[0])
    torch.testing.assert_close(losses[2], losses[0])
    plain = simple_loss(eps_hat, x0, eps, t, known)
    torch.testing.assert_close(plain, ((eps_hat - eps) ** 2).mean())


def test_min_snr_finite_at_zero_terminal_snr():
    s = rescale_zero_terminal_snr(linear_schedule(10))
    t = torch.tensor([0, 9])
    for target in ("eps", "x0", "v"):
        w = snr_weight(s, t, target, "min_snr")
        assert torch.isfinite(w).all()
    assert snr_weight(s, t, "eps", "min_snr")[1] == 1


def test_discretized_likelihood_sums_to_one_over_256_bins():
    x = (torch.arange(256, dtype=torch.float64) / 127.5 - 1).view(1, 256)
    means = torch.tensor([-1.2, -1.0, -0.3, 0.0, 0.51, 1.0], dtype=torch.float64).view(-1, 1)
    for log_scale in (-6.0, -3.0, -1.0, 0.5):
        p = discretized_gaussian_log_likelihood(x, means, torch.full_like(means, log_scale)).exp()
        torch.testing.assert_close(p.sum(dim=1), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-6)


def test_approx_cdf_and_bin_mass_close_to_exact():
    z = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    assert (approx_standard_normal_cdf(z) - torch.special.ndtr(z)).abs().max() < 2e-4
    x, mean, log_scale = torch.tensor([0.2], dtype=torch.float64), 0.18, math.log(0.02)
    exact = torch.special.ndtr((x - mean + 1 / 255) / 0.02) - torch.special.ndtr((x - mean - 1 / 255) / 0.02)
    p = discretized_gaussian_log_likelihood(x, torch.tensor(mean), torch.tensor(log_scale)).exp()
    assert p.item() == pytest.approx(exact.item(), abs=1e-3)


def test_prior_bpd():
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    s = schedule_from_betas(linear_schedule(1000).betas.double(), dtype=torch.float64)
    ab = s.alpha_bar[-1]
    kl = 0.5 * (ab * x0**2 + (1 - ab) - 1 - torch.log(1 - ab))  # KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1))
    torch.testing.assert_close(prior_bpd(s, x0), kl.mean(dim=(1, 2, 3)) / math.log(2))
    assert (prior_bpd(s, x0) < 1e-4).all()
    assert (prior_bpd(rescale_zero_terminal_snr(linear_schedule(1000)), x0.float()) == 0).all()


def test_vb_term_zero_when_p_equals_the_posterior():
    s = schedule_from_betas(linear_schedule(50).betas.double(), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(256, (3, 2, 2), generator=g).double() / 127.5 - 1
    t = torch.tensor([1, 20, 49])
    x_t = q_sample(s, x0, t, generator=g)
    mean, _, log_var = q_posterior(s, x0, x_t, t)
    torch.testing.assert_close(vb_term(s, x0, x_t, t, mean, log_var), torch.zeros(3, dtype=torch.float64))
    # At t = 0 the term is the decoder NLL in bits: -log2 P(x0) averaged over dimensions.
    t0 = torch.zeros(3, dtype=torch.long)
    lv = torch.full((3, 1, 1), -5.0, dtype=torch.float64)
    nll = -discretized_gaussian_log_likelihood(x0, x0 + 0.01, 0.5 * lv).mean(dim=(1, 2)) / math.log(2)
    torch.testing.assert_close(vb_term(s, x0, x_t, t0, x0 + 0.01, lv), nll)


def _constant_denoiser(schedule, c):
    """The eps predictor whose x0 guess is always c: for data {c} it is the exact posterior mean."""
    return lambda x_t, t, cond=None: eps_from_x0(schedule, x_t, t, torch.full_like(x_t, c))


def test_nll_bpd_of_the_exact_denoiser_is_near_zero():
    s = linear_schedule(100)
    x0 = torch.full((2, 1, 3, 3), 0.2 * 127.5 // 1 / 127.5 - 1)  # a single 8-bit value
    res = nll_bpd(_constant_denoiser(s, x0[0, 0, 0, 0].item()), s, x0, variance="posterior")
    assert res.terms.shape == (2, 100) and res.t.tolist() == list(range(100))
    assert res.weights.tolist() == [1.0] * 100                  # t_stride = 1: every step counted once
    assert res.terms[:, 1:].abs().max() < 1e-3  # KL terms vanish: p equals the posterior
    # What is left is L_0: the 8-bit bin around x0 under N(x0, sigma_1^2), plus a tiny prior.
    sd = (0.5 * s.posterior_log_variance_clipped[0]).exp().double()
    decoder = -torch.log2(torch.special.ndtr(1 / 255 / sd) - torch.special.ndtr(-1 / 255 / sd)).item()
    assert res.terms[0, 0].item() == pytest.approx(decoder, rel=1e-3)
    torch.testing.assert_close(res.total, res.prior + res.terms.sum(dim=1))
    # sigma^2 = beta is wider than the posterior: the KL terms are positive where they differ.
    kl = nll_bpd(_constant_denoiser(s, x0[0, 0, 0, 0].item()), s, x0).terms[:, 1:]
    assert (kl[:, :10] > 1e-3).all() and (kl > -1e-6).all()


def test_nll_bpd_stride_is_unbiased():
    """With a wrong but constant x0 guess every term is deterministic, so averaging the strided
    estimate over its k possible offsets must give the full sum exactly."""
    s, k = linear_schedule(20), 4
    x0 = torch.full((1, 1, 2, 2), 0.5)
    model = _constant_denoiser(s, -0.25)
    full = nll_bpd(model, s, x0).total
    by_offset = {}
    for seed in range(64):
        res = nll_bpd(model, s, x0, t_stride=k, generator=torch.Generator().manual_seed(seed))
        by_offset[res.t[1].item() - 1] = res.total
        if len(by_offset) == k:
            break
    assert sorted(by_offset) == list(range(k))
    torch.testing.assert_close(sum(by_offset.values()) / k, full, rtol=1e-5, atol=1e-6)


def test_nll_bpd_dense_steps_are_counted_once_and_the_stride_stays_unbiased():
    s, k, dense = linear_schedule(20), 4, 6
    x0 = torch.full((1, 1, 2, 2), 0.5)
    model = _constant_denoiser(s, -0.25)
    full = nll_bpd(model, s, x0)
    by_offset = {}
    for seed in range(64):
        res = nll_bpd(model, s, x0, t_stride=k, t_dense=dense, generator=torch.Generator().manual_seed(seed))
        assert res.t[:dense].tolist() == list(range(dense))      # every early step, once
        assert res.weights.tolist() == [1.0] * dense + [float(k)] * (len(res.t) - dense)
        torch.testing.assert_close(res.total, res.prior + res.terms @ res.weights)
        torch.testing.assert_close(res.terms[:, :dense], full.terms[:, :dense])
        by_offset[res.t[dense].item() - dense] = res.total
        if len(by_offset) == k:
            break
    assert sorted(by_offset) == list(range(k))
    torch.testing.assert_close(sum(by_offset.values()) / k, full.total, rtol=1e-5, atol=1e-6)
    everything = nll_bpd(model, s, x0, t_stride=k, t_dense=s.T)   # dense everywhere: the full sum
    torch.testing.assert_close(everything.total, full.total)


@pytest.mark.parametrize("call,name", [
    (lambda s, x: nll_bpd(lambda *a: a[0], s, x, t_dense=11), "t_dense"),
    (lambda s, x: simple_loss(x, x, x, torch.zeros(2, dtype=torch.long), s, target="score"), "target"),
    (lambda s, x: simple_loss(x, x, x, torch.zeros(2, dtype=torch.long), s, weighting="p2"), "weighting"),
    (lambda s, x: simple_loss(x, x, x[:, :1], torch.zeros(2, dtype=torch.long), s), "eps"),
    (lambda s, x: simple_loss(x, x, x, torch.zeros(2, dtype=torch.long), s, weighting="snr+1",
                              max_weight=0.0), "max_weight"),
    (lambda s, x: simple_loss(x, x, x, torch.zeros(2, dtype=torch.long), s, max_weight=float("inf")),
     "max_weight"),
    (lambda s, x: simple_loss(x, x, x, torch.full((2,), 10), s), "t"),
    (lambda s, x: nll_bpd(lambda *a: a[0], s, x, variance="learned"), "variance"),
    (lambda s, x: nll_bpd(lambda *a: a[0], s, x, t_stride=0), "t_stride"),
])
def test_bad_arguments_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call(linear_schedule(10), torch.zeros(2, 3))


@pytest.mark.parametrize("bad", ["10", True, torch.tensor(10.0)])
def test_max_weight_of_another_type_is_a_type_error(bad):
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="max_weight"):
        simple_loss(x, x, x, torch.zeros(2, dtype=torch.long), linear_schedule(10), max_weight=bad)
