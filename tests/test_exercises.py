"""The exercise checkers: right answers pass, plausible wrong ones get the intended hint, nothing crashes.

For every exercise: at least two different correct implementations, and at least three wrong ones,
each with a phrase its hint must contain. The second half tests the grading mechanisms one by one
(sign, constant factor, per-row t, known mistakes on every case, case lists, float32 tolerances,
odd output types, input copies and the time limit) with answers written for that purpose.
"""

import math

import pytest
import torch

from sfs.exercises import all_exercises
from sfs.exercises import (elbo, evaluation, forward_process, guidance, parameterizations, sampling,
                           schedules, training, unet)


def bshape(a, x):
    return a.reshape(-1, *([1] * (x.ndim - 1)))


# -- correct implementations: (exercise, fn), at least two per exercise -------------------------

def fs_loop(s, x0, t, eps):
    return torch.stack([s.alpha_bar[ti].sqrt() * x0[i] + (1 - s.alpha_bar[ti]).sqrt() * eps[i]
                        for i, ti in enumerate(t)])


def pm_coefs(s, x0, x_t, t):
    return bshape(s.posterior_mean_coef1[t], x0) * x0 + bshape(s.posterior_mean_coef2[t], x0) * x_t


def fd_scipy_style(mu1, s1, mu2, s2):
    w, v = torch.linalg.eigh(s1)
    r = v @ torch.diag(w.sqrt()) @ v.T
    w2 = torch.linalg.eigvalsh(r @ s2 @ r)
    return ((mu1 - mu2) @ (mu1 - mu2) + s1.trace() + s2.trace() - 2 * w2.clamp(min=0).sqrt().sum()).item()


CORRECT = [
    (forward_process.forward_sample, forward_process.forward_sample_solution),
    (forward_process.forward_sample, lambda s, x0, t, eps: bshape(s.sqrt_alpha_bar[t], x0) * x0
     + bshape(s.sqrt_one_minus_alpha_bar[t], x0) * eps),
    (forward_process.forward_sample, fs_loop),
    (forward_process.alpha_bar, forward_process.alpha_bar_solution),
    (forward_process.alpha_bar, lambda b: torch.exp(torch.cumsum(torch.log1p(-b), 0))),
    (schedules.cosine_alpha_bar, schedules.cosine_alpha_bar_solution),
    (schedules.cosine_alpha_bar, lambda T, s=0.008: torch.tensor(
        [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
         for t in range(T + 1)], dtype=torch.float64)),
    (schedules.betas, schedules.betas_solution),
    (schedules.betas, lambda ab, m=0.999: torch.clamp(1 - ab[1:] / ab[:-1], max=m)),
    (schedules.betas, lambda ab, m=0.999: torch.minimum(1 - torch.exp(torch.diff(torch.log(ab))),
                                                        torch.tensor(m, dtype=ab.dtype))),
    (schedules.snr, schedules.snr_solution),
    (schedules.snr, lambda ab: 1 / (1 / ab - 1)),
    (elbo.posterior_mean, elbo.posterior_mean_solution),
    (elbo.posterior_mean, pm_coefs),
    (elbo.gaussian_kl, elbo.gaussian_kl_solution),
    (elbo.gaussian_kl, lambda m1, l1, m2, l2: (torch.log(torch.exp(l2).sqrt() / torch.exp(l1).sqrt())
                                                + (torch.exp(l1) + (m1 - m2) ** 2) / (2 * torch.exp(l2)) - 0.5)),
    (parameterizations.x0_from_eps, parameterizations.x0_from_eps_solution),
    (parameterizations.x0_from_eps, lambda s, x, t, e: bshape(1 / s.sqrt_alpha_bar[t], x) * x
     - bshape(s.sqrt_one_minus_alpha_bar[t] / s.sqrt_alpha_bar[t], x) * e),
    (parameterizations.v_target, parameterizations.v_target_solution),
    (parameterizations.v_target, lambda s, x0, t, e: bshape(s.sqrt_alpha_bar[t], x0) * e
     - bshape(s.sqrt_one_minus_alpha_bar[t], x0) * x0),
    (sampling.ddim_step, sampling.ddim_step_solution),
    (sampling.ddim_step, lambda x, e, a, ap: ap.sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt() + (1 - ap).sqrt() * e),
    (sampling.ddim_sigma, sampling.ddim_sigma_solution),
    (sampling.ddim_sigma, lambda a, ap, eta: eta * torch.sqrt((1 - ap) / (1 - a) * (1 - a / ap))),
    (guidance.cfg, guidance.cfg_solution),
    (guidance.cfg, lambda c, u, s: s * c + (1 - s) * u),
    (guidance.classifier_guided_eps, guidance.classifier_guided_eps_solution),
    (guidance.classifier_guided_eps, lambda e, g, a, s: -(1 - a).sqrt() * (-e / (1 - a).sqrt() + s * g)),
    (evaluation.gaussian_stats, evaluation.gaussian_stats_solution),
    (evaluation.gaussian_stats, lambda f: (f.mean(0), torch.cov(f.T))),
    (evaluation.frechet_distance, evaluation.frechet_distance_solution),
    (evaluation.frechet_distance, fd_scipy_style),
]

def emb_loop(t, dim):  # one timestep at a time, frequencies as a Python list
    half = dim // 2
    w = [10000 ** (-k / half) for k in range(half)]
    rows = [[math.cos(float(ti) * wk) for wk in w] + [math.sin(float(ti) * wk) for wk in w] for ti in t]
    return torch.tensor(rows)


def att_einsum(q, k, v):
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhij,bhjd->bhid", torch.softmax(scores, dim=-1), v)


CORRECT += [
    (unet.timestep_embedding, unet.timestep_embedding_solution),
    (unet.timestep_embedding, emb_loop),
    (unet.attention, unet.attention_solution),
    (unet.attention, att_einsum),
    (training.ema_update, training.ema_update_solution),
    (training.ema_update, lambda e, p, d: e + (1 - d) * (p - e)),          # the lerp form
    (training.ema_update, lambda e, p, d: torch.lerp(e, p, 1 - d)),
    (training.lr_at, training.lr_at_solution),
    (training.lr_at, lambda s, lr, w: lr if s + 1 >= w else lr * (s + 1) / w),
]


@pytest.mark.parametrize("ex, fn", CORRECT, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(CORRECT)])
def test_correct_implementations_pass(ex, fn):
    r = ex.grade(fn)
    assert r.correct, r.message
    assert r.message.startswith("Correct")


# Chapters whose checkers are tested, to the same standard, in a file of their own
# (tests/test_exercises_<chapter>.py); the counts below cover the lists of this file.
OWN_FILE = {"latent_space", "text_conditioning", "tiny_sd"}


def test_every_exercise_has_two_correct_implementations():
    counts = {}
    for ex, _ in CORRECT:
        counts[ex.name] = counts.get(ex.name, 0) + 1
    for ch, ex in all_exercises():
        assert ch in OWN_FILE or counts.get(ex.name, 0) >= 2, ex.name


# -- wrong implementations: (exercise, fn, phrase the hint must contain) ---------------------------

def fs_no_broadcast(s, x0, t, eps):
    return s.alpha_bar[t].sqrt() * x0 + (1 - s.alpha_bar[t]).sqrt() * eps


WRONG = [
    (forward_process.forward_sample, fs_no_broadcast, "Reshape the coefficient to (B, 1, ..., 1)"),
    (forward_process.forward_sample, lambda s, x0, t, eps: bshape(s.alpha_bar[t], x0) * x0
     + bshape(1 - s.alpha_bar[t], x0) * eps, "off by a square root"),
    (forward_process.forward_sample, lambda s, x0, t, eps: bshape(s.alphas[t], x0).sqrt() * x0
     + bshape(1 - s.alphas[t], x0).sqrt() * eps, "alpha_t (one step) where alpha_bar_t"),
    (forward_process.forward_sample, lambda s, x0, t, eps: bshape(s.alpha_bar[t], x0).sqrt() * x0
     + bshape(s.betas[t], x0).sqrt() * eps, "not sqrt(beta_t)"),
    (forward_process.forward_sample, lambda s, x0, t, eps: bshape(s.alpha_bar[t], x0).sqrt() * x0
     - bshape(1 - s.alpha_bar[t], x0).sqrt() * eps, "wrong sign"),
    (forward_process.forward_sample, lambda s, x0, t, eps: bshape(s.alpha_bar[t - 1], x0).sqrt() * x0
     + bshape(1 - s.alpha_bar[t - 1], x0).sqrt() * eps, "off by one step"),
    (forward_process.forward_sample, lambda s, x0, t, eps: s.alpha_bar[t[0]].sqrt() * x0
     + (1 - s.alpha_bar[t[0]]).sqrt() * eps, "one t for the whole batch"),
    (forward_process.forward_sample, lambda s, x0, t, eps: None, "returned None"),
    (forward_process.forward_sample, lambda s, x0, t, eps: x0.numpy(), "got a numpy ndarray of shape (4, 1, 5, 5)"),
    (forward_process.forward_sample, lambda s, x0, t, eps: s.alpha_bar[t] + torch.randn_like(x0),
     "RuntimeError"),
    (forward_process.forward_sample, lambda s, x0, t, eps: x0 + torch.randn_like(x0),
     "different results for the same inputs"),
    (forward_process.forward_sample, lambda s, x0, t, eps: x0.mul_(2), "modified its input `x0` in place"),
    (forward_process.forward_sample, lambda s, x0, t, eps: s.undefined_field, "AttributeError"),
    (forward_process.alpha_bar, lambda b: torch.cumprod(b, 0), "product of alpha_s = 1 - beta_s"),
    (forward_process.alpha_bar, lambda b: torch.prod(1 - b), "wrong shape"),
    (forward_process.alpha_bar, lambda b: torch.cat([torch.ones(1, dtype=b.dtype), torch.cumprod(1 - b, 0)[:-1]]),
     "off by one step"),
    (forward_process.alpha_bar, lambda b: 1 - torch.cumsum(b, 0), "a sum"),
    (forward_process.alpha_bar, lambda b: [1.0], "got a list of length 1"),
    (schedules.cosine_alpha_bar, lambda T, s=0.008: torch.cos((torch.linspace(0, 1, T + 1) + s) / (1 + s) * math.pi / 2) ** 2,
     "wrong at t = 0"),
    (schedules.cosine_alpha_bar, lambda T, s=0.008: torch.cos((torch.linspace(0, 1, T + 1) + s) / (1 + s) * math.pi / 2)
     / math.cos(s / (1 + s) * math.pi / 2), "off by a square root"),
    (schedules.cosine_alpha_bar, lambda T, s=0.008: torch.cos(torch.linspace(0, 1, T + 1) * math.pi / 2) ** 2,
     "offset s is missing"),
    (schedules.cosine_alpha_bar, lambda T, s=0.008: (lambda f: f / f[0])(
        torch.cos((torch.linspace(0, 1, T) + s) / (1 + s) * math.pi / 2) ** 2), "T + 1 times"),
    (schedules.betas, lambda ab, m=0.999: 1 - ab[1:] / ab[:-1], "clipped at max_beta"),
    (schedules.betas, lambda ab, m=0.999: (1 - ab[:-1] / ab[1:]).clamp(max=m), "upside down"),
    (schedules.betas, lambda ab, m=0.999: (1 - ab[1:]).clamp(max=m), "total noise"),
    (schedules.betas, lambda ab, m=0.999: (1 - ab / torch.cat([ab[:1], ab[:-1]])).clamp(max=m), "T + 1 values"),
    (schedules.snr, lambda ab: (ab / (1 - ab)).sqrt(), "off by a square root"),
    (schedules.snr, lambda ab: (1 - ab) / ab, "noise over signal"),
    (schedules.snr, lambda ab: torch.log(ab) - torch.log(1 - ab), "log SNR"),
    (elbo.posterior_mean, lambda s, x0, x_t, t: bshape(s.posterior_mean_coef2[t], x0) * x0
     + bshape(s.posterior_mean_coef1[t], x0) * x_t, "swapped"),
    (elbo.posterior_mean, lambda s, x0, x_t, t: (bshape(s.alpha_bar[t - 1].sqrt() * s.betas[t], x0) * x0
     + bshape(s.alphas[t].sqrt() * (1 - s.alpha_bar[t - 1]), x0) * x_t) / bshape(1 - s.alpha_bar[t], x0),
     "wrong at t = 0"),
    (elbo.posterior_mean, lambda s, x0, x_t, t: (bshape(s.alpha_bar_prev[t].sqrt() * s.betas[t], x0) * x0
     + bshape(s.alphas[t] * (1 - s.alpha_bar_prev[t]), x0) * x_t) / bshape(1 - s.alpha_bar[t], x0),
     "square root in the x_t coefficient"),
    (elbo.posterior_mean, lambda s, x0, x_t, t: s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * x_t,
     "Reshape the coefficient"),
    (elbo.gaussian_kl, lambda m1, l1, m2, l2: elbo.gaussian_kl_solution(m2, l2, m1, l1), "not symmetric"),
    (elbo.gaussian_kl, lambda m1, l1, m2, l2: 0.5 * (l2 - l1 + torch.exp(l1 - l2) + (m1 - m2) ** 2 / torch.exp(l2)),
     "forgot the '- 1'"),
    (elbo.gaussian_kl, lambda m1, l1, m2, l2: l2 - l1 + torch.exp(l1 - l2) + (m1 - m2) ** 2 * torch.exp(-l2) - 1,
     "factor of 2"),
    (elbo.gaussian_kl, lambda m1, l1, m2, l2: 0.5 * (l2 - l1 + torch.exp(l1 / 2 - l2 / 2)
                                                      + (m1 - m2) ** 2 / torch.exp(l2 / 2) - 1), "off by a square root"),
    (parameterizations.x0_from_eps, lambda s, x, t, e: (x + bshape(s.sqrt_one_minus_alpha_bar[t], x) * e)
     / bshape(s.sqrt_alpha_bar[t], x), "wrong sign"),
    (parameterizations.x0_from_eps, lambda s, x, t, e: (x - bshape(1 - s.alpha_bar[t], x) * e)
     / bshape(s.alpha_bar[t], x), "off by a square root"),
    (parameterizations.x0_from_eps, lambda s, x, t, e: (x - bshape(s.sqrt_one_minus_alpha_bar[t], x) * e)
     * bshape(s.sqrt_alpha_bar[t], x), "multiplied"),
    (parameterizations.x0_from_eps, lambda s, x, t, e: (x - s.sqrt_one_minus_alpha_bar[t] * e) / s.sqrt_alpha_bar[t],
     "Reshape the coefficient"),
    (parameterizations.v_target, lambda s, x0, t, e: bshape(s.sqrt_one_minus_alpha_bar[t], x0) * x0
     - bshape(s.sqrt_alpha_bar[t], x0) * e, "wrong sign"),
    (parameterizations.v_target, lambda s, x0, t, e: bshape(s.sqrt_one_minus_alpha_bar[t], x0) * e
     - bshape(s.sqrt_alpha_bar[t], x0) * x0, "swapped"),
    (parameterizations.v_target, lambda s, x0, t, e: bshape(s.alpha_bar[t], x0) * e
     - bshape(1 - s.alpha_bar[t], x0) * x0, "off by a square root"),
    (parameterizations.v_target, lambda s, x0, t, e: bshape(s.sqrt_alpha_bar[t], x0) * x0
     + bshape(s.sqrt_one_minus_alpha_bar[t], x0) * e, "that is x_t"),
    (sampling.ddim_step, lambda x, e, a, ap: (x - (1 - a).sqrt() * e) / a.sqrt(), "returned the x0 prediction"),
    (sampling.ddim_step, lambda x, e, a, ap: a.sqrt() * (x - (1 - ap).sqrt() * e) / ap.sqrt() + (1 - a).sqrt() * e,
     "swapped"),
    (sampling.ddim_step, lambda x, e, a, ap: ap.sqrt() * (x + (1 - a).sqrt() * e) / a.sqrt() + (1 - ap).sqrt() * e,
     "wrong sign in x0_hat"),
    (sampling.ddim_step, lambda x, e, a, ap: ap.sqrt() * (x - (1 - a).sqrt() * e) / a.sqrt()
     + (1 - ap).sqrt() * torch.randn_like(e), "different results for the same inputs"),
    (sampling.ddim_sigma, lambda a, ap, eta: math.sqrt((1 - ap) / (1 - a) * (1 - a / ap)), "eta is missing"),
    (sampling.ddim_sigma, lambda a, ap, eta: eta * (1 - ap) / (1 - a) * (1 - a / ap), "that is sigma squared"),
    (sampling.ddim_sigma, lambda a, ap, eta: eta * math.sqrt((1 - a) / (1 - ap) * (1 - a / ap)), "upside down"),
    (sampling.ddim_sigma, lambda a, ap, eta: torch.tensor([eta, eta]), "expected a single number"),
    (guidance.cfg, lambda c, u, s: c + s * (u - c), "swapped"),
    (guidance.cfg, lambda c, u, s: s * (c - u), "add it to eps_uncond"),
    (guidance.cfg, lambda c, u, s: (1 + s) * c - s * u, "w = s - 1"),
    (guidance.cfg, lambda c, u, s: (c + u) / 2, "does not depend on the scale"),
    (guidance.classifier_guided_eps, lambda e, g, a, s: e + s * (1 - a).sqrt() * g, "wrong sign"),
    (guidance.classifier_guided_eps, lambda e, g, a, s: e - s * (1 - a) * g, "off by a square root"),
    (guidance.classifier_guided_eps, lambda e, g, a, s: e - s * a.sqrt() * g, "not sqrt(alpha_bar_t)"),
    (evaluation.gaussian_stats, lambda f: (f.mean(0), torch.cov(f.T, correction=0)), "N - 1"),
    (evaluation.gaussian_stats, lambda f: (f.mean(0), torch.cov(f)), "(N, N)"),
    (evaluation.gaussian_stats, lambda f: (f.mean(0), f.T @ f / (len(f) - 1)), "center the features"),
    (evaluation.gaussian_stats, lambda f: f.mean(0), "expected a tuple"),
    (evaluation.frechet_distance, lambda m1, s1, m2, s2: float((m1 - m2).pow(2).sum() + torch.trace(s1 + s2 - 2 * s1 @ s2)),
     "off by a square root"),
    (evaluation.frechet_distance, lambda m1, s1, m2, s2: float((m1 - m2).pow(2).sum()
                                                              + torch.trace(s1 + s2 - 2 * (s1 * s2).sqrt())),
     "elementwise square root"),
    (evaluation.frechet_distance, lambda m1, s1, m2, s2: evaluation.frechet_distance_solution(m1, s1, m2, s2)
     - float((m1 - m2).pow(2).sum()) + float((m1 - m2).norm()), "squared distance"),
    (evaluation.frechet_distance, lambda m1, s1, m2, s2: "3.2", "expected a single number, got a str"),
]

WRONG += [
    (unet.timestep_embedding, lambda t, d: unet._emb(t, d, swap=True).float(), "sin and cos are swapped"),
    (unet.timestep_embedding, lambda t, d: unet._emb(t, d, interleave=True).float(), "interleaved"),
    (unet.timestep_embedding, lambda t, d: unet._emb(t, d, denom_minus_one=True).float(), "-k / (dim/2)"),
    (unet.timestep_embedding, lambda t, d: unet._emb(t, d)[:, : d // 2], "shape"),
    (unet.attention, lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v, "not scaled"),
    (unet.attention, lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v,
     "divided by head_dim"),
    (unet.attention, lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -2) @ v,
     "wrong axis"),
    (training.ema_update, lambda e, p, d: (1 - d) * e + d * p, "swapped"),
    (training.ema_update, lambda e, p, d: d * e + p, "grows without bound"),
    (training.ema_update, lambda e, p, d: (e + p) / 2, "ignores the decay"),
    (training.lr_at, lambda s, lr, w: lr * min(1.0, s / w), "off by one"),
    (training.lr_at, lambda s, lr, w: lr * (s + 1) / w, "never stops"),
    (training.lr_at, lambda s, lr, w: None, "returned None"),
]


@pytest.mark.parametrize("ex, fn, phrase", WRONG, ids=[f"{e.name}-{i}" for i, (e, _, _) in enumerate(WRONG)])
def test_wrong_implementations_get_the_intended_hint(ex, fn, phrase):
    r = ex.grade(fn)
    assert not r.correct
    assert r.message.startswith("Not yet: ")
    assert phrase in r.message, r.message
    assert "AssertionError" not in r.message


def test_every_exercise_has_three_wrong_implementations():
    counts = {}
    for ex, _, _ in WRONG:
        counts[ex.name] = counts.get(ex.name, 0) + 1
    for ch, ex in all_exercises():
        assert ch in OWN_FILE or counts.get(ex.name, 0) >= 3, ex.name


def test_at_least_two_exercises_per_chapter():
    from sfs.exercises import CHAPTERS
    per = {}
    for ch, _ in all_exercises():
        per[ch] = per.get(ch, 0) + 1
    assert len(per) == len(CHAPTERS) and min(per.values()) >= 2, per


@pytest.mark.parametrize("ch, ex", all_exercises(), ids=[e.name for _, e in all_exercises()])
def test_checker_prints_and_never_raises(ch, ex, capsys):
    ex(ex._solution)
    assert capsys.readouterr().out.startswith("Correct")
    ex(lambda *a: 1 / 0)
    assert "ZeroDivisionError: division by zero" in capsys.readouterr().out
    ex(lambda *a: None)
    assert "returned None" in capsys.readouterr().out
    ex(42)
    assert "pass your function itself" in capsys.readouterr().out
    ex.hint()
    assert capsys.readouterr().out.startswith("Hint")


@pytest.mark.parametrize("ch, ex", all_exercises(), ids=[e.name for _, e in all_exercises()])
def test_solution_is_shown_and_passes(ch, ex, capsys):
    ex.solution()
    src = capsys.readouterr().out
    assert src.startswith("def ") and "return" in src
    ns = {"torch": torch, "math": math}
    exec(src, ns)  # the printed source alone is a working answer
    fn = next(v for k, v in ns.items() if k.endswith("_solution"))
    assert ex.grade(fn).correct


def test_reference_cosine_matches_the_library():
    from sfs.schedules import cosine_schedule
    ab = schedules.cosine_alpha_bar_solution(1000)[1:]
    lib = cosine_schedule(1000).alpha_bar.double()
    assert torch.allclose(ab[:-5], lib[:-5], rtol=1e-5)  # the library clips the last betas


# == The checkers' mechanisms (issue 13, section 2) ================================================
# New learner answers, written apart from the lists above: for each mechanism, correct answers
# computed another way (float32, float64, numpy, in place, loops) that must pass, and wrong ones whose
# hint must say what the evidence shows, and must not name a mistake the answer does not make.

import copy
import dataclasses
import inspect
import signal
import threading
import time

import numpy as np

from sfs.exercises.core import TIME_LIMIT


def bc(a, x):
    """(B,) -> (B, 1, ..., 1) against x."""
    return a.view(-1, *[1] * (x.ndim - 1))


def to32(x):
    """Every float64 tensor of an argument list in float32, schedules included."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype == torch.float64 else x
    if isinstance(x, (tuple, list)):
        return type(x)(to32(v) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: to32(getattr(x, f.name)) for f in dataclasses.fields(x)})
    return x


def in32(fn):
    """fn evaluated in float32: on float32 copies of its inputs."""
    return lambda *a: fn(*to32(a))


def rejected(ex, fn, *phrases, absent=()):
    r = ex.grade(fn)
    assert not r.correct and r.message.startswith("Not yet: "), r.message
    for p in phrases:
        assert p in r.message, r.message
    for p in absent:
        assert p not in r.message, r.message
    assert "Could not check" not in r.message, r.message
    return r.message


def accepted(ex, fn):
    r = ex.grade(fn)
    assert r.correct and r.message.startswith("Correct"), r.message


OWN_T = "each example has its own t"
SIGN = "wrong sign"
FACTOR = "times the answer"


# -- 1. the sign test runs at the exercise's tolerance, on relative evidence ----------------------

def lr_loop(step, lr, warmup_steps):
    rate = lr
    if step < warmup_steps:
        rate = lr * (step + 1) / warmup_steps
    return rate


SMALL_CORRECT = [  # answers of 1e-6 .. 1e-3: smaller than the old sign test's absolute tolerance
    (training.lr_at, lr_loop),
    (training.lr_at, lambda s, lr, w: torch.tensor(lr * min(1.0, (s + 1) / w))),          # float32 tensor
    (training.lr_at, lambda s, lr, w: np.float64(lr) * np.minimum(1.0, (s + 1) / w)),     # numpy scalar
    (training.lr_at, lambda s, lr, w: torch.tensor([lr], dtype=torch.float64) * min(1, (s + 1) / w)),
    (sampling.ddim_sigma, lambda a, ap, eta: eta * ((1 - ap) / (1 - a)).sqrt() * (1 - a / ap).sqrt()),
    (sampling.ddim_sigma, lambda a, ap, eta: np.sqrt(eta**2 * float((1 - ap) * (ap - a) / ((1 - a) * ap)))),
]


@pytest.mark.parametrize("ex, fn", SMALL_CORRECT, ids=lambda v: getattr(v, "name", ""))
def test_small_correct_answers_pass(ex, fn):
    accepted(ex, fn)


SMALL_WRONG = [  # positive, slightly wrong: never "wrong sign"
    (training.lr_at, lambda s, lr, w: lr * min(1.0, (s + 1) / (w + 1))),
    (training.lr_at, lambda s, lr, w: lr * min(1.0, (s + 2) / w)),
    (training.lr_at, lambda s, lr, w: lr * min(1.0, (s + 1) / w) + 1e-9),
    (training.lr_at, lambda s, lr, w: lr * min(1.0, (s + 1) / w) / 2 if s < w else lr),
    (sampling.ddim_sigma, lambda a, ap, eta: eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap) + 1e-4),
    (sampling.ddim_sigma, lambda a, ap, eta: eta * math.sqrt((1 - ap) / (1 - a))),
]


@pytest.mark.parametrize("ex, fn", SMALL_WRONG, ids=lambda v: getattr(v, "name", ""))
def test_small_wrong_answers_are_not_called_a_sign_error(ex, fn):
    rejected(ex, fn, absent=(SIGN, FACTOR, OWN_T))


NEGATED = [
    (training.lr_at, lambda s, lr, w: -lr * min(1.0, (s + 1) / w)),
    (sampling.ddim_sigma, lambda a, ap, eta: -eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))),
    (guidance.cfg, lambda c, u, s: -(s * c + (1 - s) * u)),
    (forward_process.forward_sample, lambda s, x0, t, e: -(bc(s.sqrt_alpha_bar[t], x0) * x0
                                                           + bc(s.sqrt_one_minus_alpha_bar[t], x0) * e)),
    (elbo.posterior_mean, lambda s, x0, x_t, t: -pm_coefs(s, x0, x_t, t)),
    (evaluation.frechet_distance, lambda *a: -fd_scipy_style(*a)),
]


@pytest.mark.parametrize("ex, fn", NEGATED, ids=lambda v: getattr(v, "name", ""))
def test_a_negated_answer_is_a_sign_error(ex, fn):
    rejected(ex, fn, SIGN, "on every case")


def test_negated_on_one_case_only_is_not_a_sign_error():
    rejected(training.lr_at, lambda s, lr, w: (-1 if w == 10 else 1) * lr_loop(s, lr, w), absent=(SIGN,))
    rejected(guidance.cfg, lambda c, u, s: (-1 if s == 7.5 else 1) * (u + s * (c - u)), absent=(SIGN,))


# -- 2. the constant-factor test never fires for ratios near 1 ---------------------------------------

NEAR_ONE = [
    (training.lr_at, lambda s, lr, w: 1.001 * lr_loop(s, lr, w)),
    (training.ema_update, lambda e, p, d: 0.998 * (d * e + (1 - d) * p)),
    (unet.attention, lambda q, k, v: 1.004 * att_einsum(q, k, v)),
    (forward_process.forward_sample, lambda s, x0, t, e: 1.0005 * fs_loop(s, x0, t, e)),
    (evaluation.frechet_distance, lambda *a: 0.999 * fd_scipy_style(*a)),
]


@pytest.mark.parametrize("ex, fn", NEAR_ONE, ids=lambda v: getattr(v, "name", ""))
def test_a_ratio_near_1_is_a_near_miss_not_a_factor(ex, fn):
    rejected(ex, fn, "close, but outside the tolerance", "largest relative error", absent=(FACTOR, SIGN))


FACTORS = [
    (guidance.cfg, lambda c, u, s: 3 * (u + s * (c - u)), "3 times"),
    (forward_process.forward_sample, lambda s, x0, t, e: 0.5 * fs_loop(s, x0, t, e), "0.5 times"),
    (training.lr_at, lambda s, lr, w: 2 * lr_loop(s, lr, w), "2 times"),
    (sampling.ddim_sigma, lambda a, ap, eta: 10 * sampling.ddim_sigma_solution(a, ap, eta), "10 times"),
    (parameterizations.v_target, lambda s, x0, t, e: 1.1 * parameterizations.v_target_solution(s, x0, t, e), "1.1 times"),
]


@pytest.mark.parametrize("ex, fn, times", FACTORS, ids=lambda v: getattr(v, "name", ""))
def test_a_real_constant_factor_is_named(ex, fn, times):
    rejected(ex, fn, "off by a constant factor", times)


RATIO_ONE_CORRECT = [  # other formulas, equal to the answer up to rounding: ratio 1, accepted
    (guidance.cfg, lambda c, u, s: torch.lerp(u, c, s)),
    (training.ema_update, lambda e, p, d: e - (1 - d) * (e - p)),
    (unet.attention, lambda q, k, v: (lambda w: (w / w.sum(-1, keepdim=True)) @ v)(
        torch.exp(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                  - (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).amax(-1, keepdim=True)))),
    (forward_process.forward_sample, lambda s, x0, t, e: torch.exp(0.5 * bc(s.alpha_bar[t], x0).log()) * x0
     + torch.exp(0.5 * torch.log1p(-bc(s.alpha_bar[t], x0))) * e),
]


@pytest.mark.parametrize("ex, fn", RATIO_ONE_CORRECT, ids=lambda v: getattr(v, "name", ""))
def test_other_formulas_with_ratio_1_pass(ex, fn):
    accepted(ex, fn)


def test_a_factor_that_changes_between_cases_is_not_constant():
    rejected(training.ema_update, lambda e, p, d: (1 + d) * (d * e + (1 - d) * p), absent=(FACTOR,))
    rejected(guidance.cfg, lambda c, u, s: (1 + s) * (u + s * (c - u)), absent=(FACTOR,))


# -- 3. "each example has its own t" only when one shared t explains every row ------------------------

VANISH_AT_SOME_T = [  # bugs that are right on some rows; none uses one t for the batch
    (parameterizations.v_target, lambda s, x0, t, e: bc(s.alphas[t], x0).sqrt() * e - bc(1 - s.alphas[t], x0).sqrt() * x0,
     "Rows with t in [0] are right"),
    (parameterizations.x0_from_eps, lambda s, x, t, e: parameterizations.x0_from_eps_solution(s, x, t, e).clamp(-3, 3),
     "values differ"),
    (forward_process.forward_sample, lambda s, x0, t, e: fs_loop(s, x0, t, e).clamp(-2, 2), "values differ"),
    (elbo.posterior_mean, lambda s, x0, x_t, t: (bc(s.alpha_bar_prev[t].sqrt() * s.betas[t], x0) * x0
                                                 + bc(s.alphas[t] * (1 - s.alpha_bar_prev[t]), x0) * x_t * 1.01)
     / bc(1 - s.alpha_bar[t], x0), "Rows with t in [0, "),
    (forward_process.forward_sample, lambda s, x0, t, e: fs_loop(s, x0, t, e).half(), "float16"),
]


def pm_rows(s, x0, x_t, t):  # one row at a time, Python floats for the coefficients
    rows = []
    for i, ti in enumerate(t.tolist()):
        ab, abp, a, b = (float(v[ti]) for v in (s.alpha_bar, s.alpha_bar_prev, s.alphas, s.betas))
        rows.append((math.sqrt(abp) * b * x0[i] + math.sqrt(a) * (1 - abp) * x_t[i]) / (1 - ab))
    return torch.stack(rows)


PER_ROW_CORRECT = [  # each row with its own t, computed in other ways
    (elbo.posterior_mean, pm_rows),
    (parameterizations.x0_from_eps, lambda s, x, t, e: (x - bc(torch.gather(s.sqrt_one_minus_alpha_bar, 0, t), x) * e)
     / bc(torch.gather(s.sqrt_alpha_bar, 0, t), x)),
    (parameterizations.v_target, lambda s, x0, t, e: bc(s.alpha_bar.index_select(0, t), x0).sqrt() * e
     - bc((1 - s.alpha_bar).index_select(0, t), x0).sqrt() * x0),
    (forward_process.forward_sample, lambda s, x0, t, e: torch.einsum("b,b...->b...", s.sqrt_alpha_bar[t], x0)
     + torch.einsum("b,b...->b...", s.sqrt_one_minus_alpha_bar[t], e)),
]


@pytest.mark.parametrize("ex, fn", PER_ROW_CORRECT, ids=lambda v: getattr(v, "name", ""))
def test_per_row_answers_pass(ex, fn):
    accepted(ex, fn)


@pytest.mark.parametrize("ex, fn, phrase", VANISH_AT_SOME_T, ids=lambda v: getattr(v, "name", ""))
def test_bugs_that_vanish_at_some_t_do_not_blame_the_batch(ex, fn, phrase):
    rejected(ex, fn, phrase, absent=(OWN_T, "one t for the whole batch"))


ONE_T = [
    (forward_process.forward_sample, lambda s, x0, t, e: s.sqrt_alpha_bar[t[-1]] * x0 + s.sqrt_one_minus_alpha_bar[t[-1]] * e),
    (parameterizations.x0_from_eps, lambda s, x, t, e: (x - (1 - s.alpha_bar[t.max()]).sqrt() * e) / s.alpha_bar[t.max()].sqrt()),
    (parameterizations.v_target, lambda s, x0, t, e: s.alpha_bar[t[1]].sqrt() * e - (1 - s.alpha_bar[t[1]]).sqrt() * x0),
    (elbo.posterior_mean, lambda s, x0, x_t, t: s.posterior_mean_coef1[t[0]] * x0 + s.posterior_mean_coef2[t[0]] * x_t),
]


@pytest.mark.parametrize("ex, fn", ONE_T, ids=lambda v: getattr(v, "name", ""))
def test_one_shared_t_is_named(ex, fn):
    rejected(ex, fn, "one t for the whole batch", OWN_T)


T0_ONLY = [
    (forward_process.forward_sample, lambda s, x0, t, e: fs_loop(s, x0, t, e) + bc((t == 0).double(), x0) * 0.1),
    (parameterizations.v_target, lambda s, x0, t, e: torch.where(bc(t == 0, x0), e, parameterizations.v_target_solution(s, x0, t, e))),
    (elbo.posterior_mean, lambda s, x0, x_t, t: torch.where(bc(t == 0, x0), x_t, pm_coefs(s, x0, x_t, t))),
]


@pytest.mark.parametrize("ex, fn", T0_ONLY, ids=lambda v: getattr(v, "name", ""))
def test_wrong_only_at_t0_is_named(ex, fn):
    rejected(ex, fn, "wrong only in the rows with t = 0", absent=(OWN_T,))


# -- 4. a known mistake is named only when it matches on every case -------------------------------

PARTLY_A_MISTAKE = [  # (exercise, answer, the hint of the mistake it makes on some cases only)
    (guidance.cfg, lambda c, u, s: c + s * (u - c) if s > 2 else u + s * (c - u) + 0.5, "swapped"),
    (training.ema_update, lambda e, p, d: (1 - d) * e + d * p if d > 0.95 else d * e + p, "decay and 1 - decay"),
    (forward_process.alpha_bar, lambda b: torch.cumprod(b, 0) if len(b) == 1000 else torch.cumprod(1 - b, 0) * 1.1,
     "you multiplied the betas"),
    (forward_process.forward_sample, lambda s, x0, t, e: (bc(s.alphas[t], x0).sqrt() * x0 + bc(1 - s.alphas[t], x0).sqrt() * e)
     if x0.ndim == 4 else 2 * fs_loop(s, x0, t, e), "alpha_t (one step)"),
    (training.lr_at, lambda s, lr, w: lr * min(1.0, s / w) if w == 200 else lr * min(1.0, (s + 1) / w) * 0.9, "off by one"),
]


@pytest.mark.parametrize("ex, fn, hint", PARTLY_A_MISTAKE, ids=lambda v: getattr(v, "name", ""))
def test_a_mistake_on_some_cases_only_is_not_named(ex, fn, hint):
    rejected(ex, fn, absent=(hint,))


BRANCHY_CORRECT = [  # correct answers written case by case, as a reader might
    (training.lr_at, lambda s, lr, w: lr if w <= 1 or s >= w - 1 else lr * (s + 1) / w),
    (training.ema_update, lambda e, p, d: p.clone() if d == 0 else e.clone() if d == 1 else d * e + (1 - d) * p),
    (guidance.cfg, lambda c, u, s: c.clone() if s == 1 else u.clone() if s == 0 else u + s * (c - u)),
    (sampling.ddim_step, lambda x, e, a, ap: x.clone() if a == ap else sampling.ddim_step_solution(x, e, a, ap)),
]


@pytest.mark.parametrize("ex, fn", BRANCHY_CORRECT, ids=lambda v: getattr(v, "name", ""))
def test_case_by_case_correct_answers_pass(ex, fn):
    accepted(ex, fn)


def test_a_known_mistake_is_named_even_where_it_coincides_with_the_answer():
    # "never stops" equals the answer during warmup; the mistake matches on every case
    rejected(training.lr_at, lambda s, lr, w: lr * (s + 1) / w, "never stops")
    # swapped decay equals the answer at decay 0.5
    rejected(training.ema_update, lambda e, p, d: torch.lerp(p, e, 1 - d), "swapped")
    # returning ema unchanged is the "averaged with itself" mistake on every case (right at decay 1)
    rejected(training.ema_update, lambda e, p, d: e.clone(), "ema unchanged")


# -- 5. every exercise's cases go beyond the defaults and include boundaries ------------------------

def _scalars(a):
    return isinstance(a, (int, float)) and not isinstance(a, bool) or (isinstance(a, torch.Tensor) and a.ndim == 0)


@pytest.mark.parametrize("ch, ex", all_exercises(), ids=[e.name for _, e in all_exercises()])
def test_cases_go_beyond_defaults_and_include_boundaries(ch, ex):
    cases = ex.cases(torch.Generator().manual_seed(0))
    assert len(cases) >= 2 and len({len(c.args) for c in cases}) == 1, ex.name
    assert any(c.boundary for c in cases), f"{ex.name}: no case at a boundary"
    assert all(c.label for c in cases)
    n = len(cases[0].args)
    for i in range(n):
        vals = [c.args[i] for c in cases]
        if all(_scalars(v) for v in vals):  # a number argument takes several values, not one setting
            assert len({float(v) for v in vals}) >= 3, f"{ex.name}: argument {i} takes {set(map(float, vals))}"
        elif all(isinstance(v, torch.Tensor) for v in vals):  # tensors come in several shapes
            assert len({tuple(v.shape) for v in vals}) >= 2, f"{ex.name}: argument {i} has one shape"
        elif all(dataclasses.is_dataclass(v) for v in vals):  # schedules: at least two
            assert len({(v.T, float(v.alpha_bar[-1])) for v in vals}) >= 2, f"{ex.name}: one schedule"
    sig = inspect.signature(ex._solution).parameters
    for i, p in enumerate(sig.values()):  # every default is also tested with another value
        if p.default is not inspect.Parameter.empty and i < n:
            assert any(c.args[i] != p.default for c in cases), f"{ex.name}: {p.name} only at its default"
    for c in cases:  # timesteps: both ends of the schedule in every batch of two or more
        if c.t is not None and len(c.t) >= 2:
            T = next(a.T for a in c.args if dataclasses.is_dataclass(a))
            assert 0 in c.t.tolist() and T - 1 in c.t.tolist(), (ex.name, c.label)
            assert any(a is c.t for a in c.args), "Case.t must be the timestep argument itself"


def test_lr_at_cases_cover_several_warmups_and_their_boundaries():
    cases = training.lr_at.cases(torch.Generator().manual_seed(0))
    by_w = {}
    for c in cases:
        step, _, w = c.args
        by_w.setdefault(w, set()).add(step)
    assert len(by_w) >= 3 and 1 in by_w                    # warmup_steps = 1: no warmup at all
    assert sum(1 for w, steps in by_w.items() if w > 1 and {0, w - 1} <= steps) >= 2  # both ends
    assert any(w in steps for w, steps in by_w.items())    # the first step after warmup


DEFAULTS_ONLY = [  # answers right only at the settings the old cases used
    (training.lr_at, lambda s, lr, w: lr * min(1.0, (s + 1) / 200)),
    (training.lr_at, lambda s, lr, w: lr * (s + 1) / w if s <= w else lr),
    (training.lr_at, lambda s, lr, w: lr * min(1, (s + 1) // w)),                         # integer division
    (schedules.cosine_alpha_bar, lambda T, s=0.008: schedules.cosine_alpha_bar_solution(T)),
    (schedules.betas, lambda ab, m=0.999: schedules.betas_solution(ab)),
    (training.ema_update, lambda e, p, d: 0.999 * e + 0.001 * p if d > 0.99 else d * e + (1 - d) * p if d < 1 else p),
    (unet.timestep_embedding, lambda t, dim: unet.timestep_embedding_solution(t, dim)[:, :dim] if dim > 2 else torch.zeros(len(t), dim)),
    (guidance.cfg, lambda c, u, s: u + s * (c - u) if s else c),
    (unet.attention, lambda q, k, v: att_einsum(q, k, v) if q.shape[-2] > 1 else torch.zeros_like(v)),
    (sampling.ddim_step, lambda x, e, a, ap: sampling.ddim_step_solution(x, e, a, ap) if a != ap else x * 0),
]


@pytest.mark.parametrize("ex, fn", DEFAULTS_ONLY, ids=lambda v: getattr(v, "name", ""))
def test_answers_right_only_at_defaults_are_rejected(ex, fn):
    rejected(ex, fn)


# -- 6. tolerances at least as loose as float32, and near misses said so --------------------------

@pytest.mark.parametrize("ch, ex", all_exercises(), ids=[e.name for _, e in all_exercises()])
def test_tolerance_admits_float32_arithmetic(ch, ex):
    accepted(ex, in32(ex._solution))

    def rounded(*a):
        out = ex._solution(*a)
        return tuple(torch.as_tensor(o).float() for o in out) if isinstance(out, tuple) else torch.as_tensor(out).float()
    accepted(ex, rounded)


FLOAT32_CORRECT = [
    (forward_process.forward_sample, in32(fs_loop)),
    (training.ema_update, lambda e, p, d: torch.lerp(e.float(), p.float(), 1 - d)),
    (unet.attention, in32(att_einsum)),
    (evaluation.frechet_distance, in32(fd_scipy_style)),
    (evaluation.gaussian_stats, lambda f: (f.float().mean(0), torch.cov(f.float().T))),
    (schedules.cosine_alpha_bar, lambda T, s=0.008: (lambda f: f / f[0])(
        torch.cos((torch.linspace(0, 1, T + 1) + s) / (1 + s) * math.pi / 2) ** 2)),  # float32 linspace
    (elbo.posterior_mean, in32(elbo.posterior_mean_solution)),
    (schedules.betas, in32(lambda ab, m=0.999: (1 - torch.exp(torch.diff(ab.log()))).clamp(max=m))),
]


@pytest.mark.parametrize("ex, fn", FLOAT32_CORRECT, ids=lambda v: getattr(v, "name", ""))
def test_float32_answers_pass(ex, fn):
    accepted(ex, fn)


NEAR_MISS_DTYPE = [
    (forward_process.forward_sample, lambda *a: forward_process.forward_sample_solution(*a).half(), "float16"),
    (training.ema_update, lambda e, p, d: (d * e + (1 - d) * p).to(torch.bfloat16), "bfloat16"),
    (unet.attention, lambda q, k, v: att_einsum(q.half(), k.half(), v.half()), "float16"),
    (schedules.snr, in32(lambda ab: 1 / (1 / ab - 1)), "float32"),  # 1/ab - 1 cancels in float32
    (elbo.gaussian_kl, lambda *a: elbo.gaussian_kl_solution(*a) * (1 + 3e-5), "float32"),  # float32-sized
]


@pytest.mark.parametrize("ex, fn, dtype", NEAR_MISS_DTYPE, ids=lambda v: getattr(v, "name", ""))
def test_near_misses_name_the_relative_error_and_the_dtype(ex, fn, dtype):
    rejected(ex, fn, "close, but outside the tolerance", "largest relative error", dtype,
             absent=(OWN_T, SIGN, FACTOR))


def test_near_miss_reports_the_size_of_the_error():
    msg = rejected(sampling.ddim_step, lambda *a: sampling.ddim_step_solution(*a) * (1 + 2e-3))
    assert "largest relative error 0.002" in msg and "the tolerance is 0.0001 relative" in msg


# -- 7. whatever type or shape comes back, the hint names it --------------------------------------

ODD_OUTPUTS = [  # (output for the reader's function, phrase for tensor exercises, for number exercises)
    (lambda *a: np.zeros((2, 3)), "numpy ndarray of shape (2, 3)", "numpy ndarray of shape (2, 3)"),
    (lambda *a: np.zeros(7), "numpy ndarray of shape (7,)", "numpy ndarray of shape (7,)"),
    (lambda *a: [1.0, 2.0], "a list of length 2", "a list of length 2"),
    (lambda *a: 0.5, "a Python float", None),
    (lambda *a: "0.5", "a str", "a str"),
    (lambda *a: {"x": 1}, "dict", "dict"),
    (lambda *a: torch.zeros(2, 3, dtype=torch.complex64), "complex", "shape (2, 3)"),
    (lambda *a: torch.ones(()) * 1j, "complex", "complex"),
    (lambda *a: (np.zeros(3), np.zeros(3)), "tuple", "tuple"),
]


@pytest.mark.parametrize("ch, ex", all_exercises(), ids=[e.name for _, e in all_exercises()])
def test_odd_outputs_get_a_hint_naming_type_and_shape(ch, ex):
    for make, phrase, number_phrase in ODD_OUTPUTS:
        msg = ex.grade(make).message
        assert msg.startswith("Not yet: ") and "Could not check" not in msg, (ex.name, msg)
        want = number_phrase if ex.output == "number" else phrase
        if want and ex.output != "tensors":
            assert want in msg, (ex.name, msg)


def test_numpy_and_scalar_answers_by_exercise_kind():
    rejected(forward_process.forward_sample, lambda s, x0, t, e: fs_loop(s, x0, t, e).numpy(),
             "got a numpy ndarray of shape (4, 1, 5, 5)", "torch.as_tensor")
    rejected(evaluation.gaussian_stats, lambda f: (f.numpy().mean(0), np.cov(f.numpy().T)),
             "output 0 (mu)", "numpy ndarray of shape (4,)")
    rejected(evaluation.gaussian_stats, lambda f: f.mean(0), "expected a tuple of 2 tensors (mu, sigma)")
    rejected(evaluation.gaussian_stats, lambda f: (f.mean(0), torch.cov(f.T), 0), "expected 2 outputs")
    rejected(training.lr_at, lambda s, lr, w: torch.full((2,), lr), "single number", "shape (2,)")
    accepted(evaluation.frechet_distance, lambda *a: np.array(fd_scipy_style(*a)))       # 0-d numpy
    accepted(evaluation.frechet_distance, lambda *a: np.array([fd_scipy_style(*a)]))     # one element
    accepted(evaluation.gaussian_stats, lambda f: tuple(torch.from_numpy(v) for v in
                                                        (f.numpy().mean(0), np.cov(f.numpy().T))))
    accepted(sampling.ddim_sigma, lambda a, ap, eta: eta * np.sqrt((1 - float(ap)) / (1 - float(a)) * (1 - float(a) / float(ap))))


# -- 8. own copies of every argument, in-place edits caught, a time limit --------------------------

def fs_edit_sqrt(s, x0, t, eps):  # edits the schedule, returns the right values
    ab = s.alpha_bar
    ab.sqrt_()
    return bc(ab[t], x0) * x0 + bc(1 - ab[t] ** 2, x0).sqrt() * eps


def fs_edit_index(s, x0, t, eps):
    out = fs_loop(s, x0, t, eps)
    s.alpha_bar[t] = 0.5
    return out


def fs_edit_attr(s, x0, t, eps):
    out = fs_loop(s, x0, t, eps)
    s.alpha_bar = s.alpha_bar ** 2
    return out


def pm_edit(s, x0, x_t, t):
    out = elbo.posterior_mean_solution(s, x0, x_t, t)
    s.betas.clamp_(max=0.01)
    return out


def x0_edit_eps(s, x, t, e):
    out = parameterizations.x0_from_eps_solution(s, x, t, e)
    e.zero_()
    return out


IN_PLACE_WRONG = [
    (forward_process.forward_sample, fs_edit_sqrt, "`schedule.alpha_bar` changed"),
    (forward_process.forward_sample, fs_edit_index, "`schedule.alpha_bar` changed"),
    (forward_process.forward_sample, fs_edit_attr, "`schedule.alpha_bar` changed"),
    (elbo.posterior_mean, pm_edit, "`schedule.betas` changed"),
    (parameterizations.x0_from_eps, x0_edit_eps, "modified its input `eps` in place"),
    (training.ema_update, lambda e, p, d: p.mul_(1 - d).add_(d * e), "modified its input `param` in place"),
    (evaluation.gaussian_stats, lambda f: (f.mean(0), torch.cov(f.sub_(f.mean(0)).T)), "modified its input `features`"),
]


@pytest.mark.parametrize("ex, fn, phrase", IN_PLACE_WRONG, ids=lambda v: getattr(v, "name", ""))
def test_in_place_edits_of_inputs_are_caught(ex, fn, phrase):
    rejected(ex, fn, "modified its input", phrase, absent=("different results",))


def test_an_edited_schedule_does_not_reach_the_reference():
    rejected(forward_process.forward_sample, fs_edit_sqrt, "schedule")
    accepted(forward_process.forward_sample, forward_process.forward_sample_solution)
    before = forward_process.forward_sample.cases(torch.Generator().manual_seed(0))
    forward_process.forward_sample.grade(fs_edit_index)
    after = forward_process.forward_sample.cases(torch.Generator().manual_seed(0))
    assert all(torch.equal(a.args[0].alpha_bar, b.args[0].alpha_bar) for a, b in zip(before, after))


IN_PLACE_CORRECT = [  # in-place arithmetic on the reader's own tensors, or where the exercise allows it
    (forward_process.forward_sample, lambda s, x0, t, e: x0.clone().mul_(bc(s.sqrt_alpha_bar[t], x0))
     .add_(bc(s.sqrt_one_minus_alpha_bar[t], x0) * e)),
    (parameterizations.x0_from_eps, lambda s, x, t, e: x.clone().sub_(bc(s.sqrt_one_minus_alpha_bar[t], x) * e)
     .div_(bc(s.sqrt_alpha_bar[t], x))),
    (training.ema_update, lambda e, p, d: e.mul_(d).add_(p, alpha=1 - d)),
    (training.ema_update, lambda e, p, d: e.lerp_(p, 1 - d)),
    (evaluation.gaussian_stats, lambda f: (lambda c: (f.mean(0), c.T @ c / (len(f) - 1)))(f.clone().sub_(f.mean(0)))),
]


@pytest.mark.parametrize("ex, fn", IN_PLACE_CORRECT, ids=lambda v: getattr(v, "name", ""))
def test_in_place_work_on_own_tensors_passes(ex, fn):
    accepted(ex, fn)


def test_in_place_ema_without_return_is_told_to_return():
    rejected(training.ema_update, lambda e, p, d: (e.lerp_(p, 1 - d), None)[1], "updated `ema` in place but returned None")


def test_state_kept_between_calls_is_reported():
    calls = []

    def counting(e, p, d):
        calls.append(1)
        return d * e + (1 - d) * p + 1e-3 * len(calls)
    rejected(training.ema_update, counting, "different results for the same inputs", "keep state")


def quick(ex, seconds=0.3):
    fast = copy.copy(ex)
    fast.time_limit = seconds
    return fast


def spin(*a):
    while True:
        pass


def spin_catching(*a):
    while True:
        try:
            time.sleep(0.01)
        except Exception:
            pass


def sleepy(*a):
    time.sleep(30)


@pytest.mark.parametrize("fn", [spin, spin_catching, sleepy])
def test_endless_loops_are_stopped_with_a_hint(fn):
    handler = signal.getsignal(signal.SIGALRM)
    t0 = time.perf_counter()
    rejected(quick(training.lr_at), fn, "did not return within 0.3 s", "endless loop")
    assert time.perf_counter() - t0 < 3, "the limit must stop the call"
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    accepted(quick(training.lr_at), lr_loop)  # nothing left armed to hit the next check


def test_time_limit_outside_the_main_thread():
    box = {}
    worker = threading.Thread(target=lambda: box.update(msg=quick(guidance.cfg).grade(spin).message))
    worker.start()
    worker.join(5)
    assert not worker.is_alive() and "did not return within" in box["msg"]
    assert quick(guidance.cfg).grade(guidance.cfg_solution).correct


def test_a_slow_correct_answer_within_the_limit_passes_and_the_default_is_seconds():
    assert 1 <= TIME_LIMIT <= 10
    assert all(ex.time_limit == TIME_LIMIT for _, ex in all_exercises())

    def slow(c, u, s):
        time.sleep(0.01)
        return u + s * (c - u)
    accepted(quick(guidance.cfg, 2.0), slow)


def test_a_pending_alarm_is_left_alone():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        assert "did not return within" in quick(guidance.cfg).grade(spin).message  # via a thread
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 3  # the caller's timer still runs
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not fired
