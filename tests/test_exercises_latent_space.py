"""The checkers of the latent-space chapter (book ch. 10): right answers pass, however they are
computed; plausible wrong ones get the hint written for them; the reference is the library's.

Kept apart from tests/test_exercises.py (whose lists cover chapters 1-9), with the same standard:
at least two correct implementations and three wrong ones per exercise.
"""

import math

import numpy as np
import pytest
import torch

from sfs.autoencoder import Autoencoder, AutoencoderConfig, kl_diagonal_gaussian, measure_scale
from sfs.exercises import all_exercises
from sfs.exercises import latent_space as ls
from sfs.losses import normal_kl


def kl_distributions(mean, logvar):
    """Through torch.distributions: an implementation that shares no formula with the library."""
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    return torch.distributions.kl_divergence(q, p).flatten(1).sum(1)


def kl_loop(mean, logvar):
    """Example by example, value by value, in Python floats."""
    out = []
    for m, lv in zip(mean.reshape(len(mean), -1).tolist(), logvar.reshape(len(logvar), -1).tolist()):
        out.append(sum(0.5 * (a * a + math.exp(b) - 1 - b) for a, b in zip(m, lv)))
    return torch.tensor(out, dtype=torch.float64)


def kl_float32(mean, logvar):
    m, lv = mean.float(), logvar.float()
    return (0.5 * (m.pow(2) + lv.exp() - 1 - lv)).sum(dim=tuple(range(1, m.ndim)))


def kl_from_chapter3(mean, logvar):
    """Chapter 3's KL of two Gaussians, with the second one N(0, 1)."""
    zero = torch.zeros_like(mean)
    return normal_kl(mean, logvar, zero, zero).flatten(1).sum(1)


def scale_numpy(z):
    return float(1 / np.std(z.numpy()))              # population std (ddof=0): as good at this N


def scale_by_hand(z):
    v = z.flatten()
    return (v.numel() - 1) ** 0.5 / float(((v - v.mean()) ** 2).sum().sqrt())


def scale_float32(z):
    return 1 / z.float().std()                        # a 0-d float32 tensor


def scale_per_example_std_mean(z):
    return 1.0 / float(z.flatten(1).std(dim=1).mean())


CORRECT = [
    (ls.gaussian_kl_to_standard, ls.gaussian_kl_to_standard_solution),
    (ls.gaussian_kl_to_standard, kl_diagonal_gaussian),
    (ls.gaussian_kl_to_standard, kl_distributions),
    (ls.gaussian_kl_to_standard, kl_loop),
    (ls.gaussian_kl_to_standard, kl_float32),
    (ls.gaussian_kl_to_standard, kl_from_chapter3),
    (ls.latent_scale_factor, ls.latent_scale_factor_solution),
    (ls.latent_scale_factor, scale_numpy),
    (ls.latent_scale_factor, scale_by_hand),
    (ls.latent_scale_factor, scale_float32),
    (ls.latent_scale_factor, lambda z: torch.std(z).reciprocal()),
]


@pytest.mark.parametrize("ex, fn", CORRECT, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(CORRECT)])
def test_correct_implementations_pass(ex, fn):
    r = ex.grade(fn)
    assert r.correct, r.message
    assert r.message.startswith("Correct")


def bracket(m, lv):
    return m ** 2 + lv.exp() - 1 - lv


WRONG = [
    (ls.gaussian_kl_to_standard, lambda m, lv: bracket(m, lv).flatten(1).sum(1), "factor of 2"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * (m ** 2 + (0.5 * lv).exp() - 1 - lv).flatten(1).sum(1),
     "the standard deviation"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * (m ** 2 + (2 * lv).exp() - 1 - 2 * lv).flatten(1).sum(1),
     "not of the standard deviation"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * (m ** 2 + lv.exp() - lv).flatten(1).sum(1), "'- 1'"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * (m ** 2 + lv.exp() - 1 + lv).flatten(1).sum(1),
     "wrong sign on the log term"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * (lv.exp() - 1 - lv).flatten(1).sum(1), "mean^2 term is missing"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * (m ** 2).flatten(1).sum(1), "kept only the mean^2"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * bracket(m, lv).flatten(1).mean(1), "averaged over the latent"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * bracket(m, lv).sum(), "not over the batch too"),
    (ls.gaussian_kl_to_standard, lambda m, lv: (0.5 * bracket(m, lv)).sum(dim=tuple(range(1, m.ndim))).mean(),
     "averaged over the batch"),
    (ls.gaussian_kl_to_standard, lambda m, lv: 0.5 * bracket(m, lv), "shape (B,)"),
    (ls.gaussian_kl_to_standard, lambda m, lv: None, "returned None"),
    (ls.gaussian_kl_to_standard, lambda m, lv: m.sum() / 0 + lv.undefined, "AttributeError"),
    (ls.latent_scale_factor, lambda z: float(z.std()), "1 / std"),
    (ls.latent_scale_factor, lambda z: 1 / z.var(), "1 / variance"),
    (ls.latent_scale_factor, lambda z: 1 / z.square().mean().sqrt(), "root mean square"),
    (ls.latent_scale_factor, scale_per_example_std_mean, "per-example stds"),
    (ls.latent_scale_factor, lambda z: 1 / z.abs().mean(), "mean absolute value"),
    (ls.latent_scale_factor, lambda z: 1 / z.transpose(0, 1).reshape(z.shape[1], -1).std(1).mean(),
     "per-channel stds"),
    (ls.latent_scale_factor, lambda z: 1 / z.std(dim=(0, 2, 3)), "single number"),
]


@pytest.mark.parametrize("ex, fn, phrase", WRONG, ids=[f"{e.name}-{i}" for i, (e, _, _) in enumerate(WRONG)])
def test_wrong_implementations_get_the_intended_hint(ex, fn, phrase):
    r = ex.grade(fn)
    assert not r.correct
    assert r.message.startswith("Not yet: ")
    assert phrase in r.message, r.message


def test_counts_and_registration():
    mine = [ex for ch, ex in all_exercises() if ch == "latent_space"]
    assert [e.name for e in mine] == ["gaussian_kl_to_standard", "latent_scale_factor"]
    for ex in mine:
        assert sum(e is ex for e, _ in CORRECT) >= 2 and sum(e is ex for e, _, _ in WRONG) >= 3, ex.name


@pytest.mark.parametrize("ex", [ls.gaussian_kl_to_standard, ls.latent_scale_factor], ids=lambda e: e.name)
def test_solution_source_alone_passes_and_checker_never_raises(ex, capsys):
    ex.solution()
    ns = {"torch": torch, "math": math}
    exec(capsys.readouterr().out, ns)
    fn = next(v for k, v in ns.items() if k.endswith("_solution"))
    assert ex.grade(fn).correct
    ex(lambda *a: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out
    ex.hint()
    assert capsys.readouterr().out.startswith("Hint")


def test_the_references_are_the_library():
    """The KL checker's reference is sfs.autoencoder.kl_diagonal_gaussian, and the scale factor
    checker agrees with sfs.autoencoder.measure_scale on latents sampled by a real (untrained) model."""
    assert ls.gaussian_kl_to_standard.reference is kl_diagonal_gaussian
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig(base_channels=8, channel_mults=(1, 2), image_size=8))
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    gen = torch.Generator().manual_seed(3)
    lib = measure_scale(ae, x, generator=gen)
    mean, logvar = ae.moments(x)
    gen = torch.Generator().manual_seed(3)
    z = (mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen)).detach()
    assert abs(ls.latent_scale_factor_solution(z) - lib) < 1e-5 * lib
    assert abs(ls.latent_scale_factor.reference(z) - lib) < 1e-5 * lib


def test_the_kl_is_zero_only_at_the_prior_and_matches_monte_carlo():
    """Eq. (10.1) as a number: 0 at N(0, I), and the average log-density ratio of samples."""
    zero = torch.zeros(1, 3, dtype=torch.float64)
    assert ls.gaussian_kl_to_standard_solution(zero, zero).item() == 0.0
    mean = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, -1.0, 0.7]], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    z = mean + (0.5 * logvar).exp() * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    log_q = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    ratio = log_q - log_p
    exact = ls.gaussian_kl_to_standard_solution(mean, logvar).item()
    assert abs(ratio.mean().item() - exact) < 5 * ratio.std().item() / math.sqrt(n)
