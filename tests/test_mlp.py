"""Timestep embedding, the toy MLP's contract, and a short training run that must produce two moons."""

import math

import pytest
import torch

from sfs.data import make_toy
from sfs.embeddings import timestep_embedding
from sfs.forward import q_posterior
from sfs.mlp import MLPDenoiser, train_toy
from sfs.parameterizations import x0_from_eps
from sfs.schedules import linear_schedule


def test_timestep_embedding_values_and_shapes():
    t = torch.tensor([0, 1, 7, 999])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (4, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[:, 0], torch.cos(t.float()))  # k = 0: frequency 1
    torch.testing.assert_close(emb[:, 4], torch.sin(t.float()))
    torch.testing.assert_close(emb[:, 3], torch.cos(t.float() * 10000 ** (-3 / 4)))
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and (odd[:, -1] == 0).all()
    assert torch.cdist(emb, emb).add(torch.eye(4)).min() > 0.1  # distinct steps, distinct codes
    torch.testing.assert_close(timestep_embedding(torch.tensor([2.5]), 4)[0, 0], torch.tensor(math.cos(2.5)))
    with pytest.raises(ValueError, match=r"\bdim\b"):
        timestep_embedding(t, 0)
    with pytest.raises(ValueError, match=r"\bt\b"):
        timestep_embedding(t.view(2, 2), 8)


def test_mlp_contract():
    x_t, t = torch.randn(5, 2), torch.randint(100, (5,))
    assert MLPDenoiser()(x_t, t).shape == (5, 2)
    m = MLPDenoiser(num_classes=3)
    assert m(x_t, t, torch.tensor([0, 1, 2, 0, 1])).shape == (5, 2)
    assert m(x_t, t).shape == (5, 2)  # cond=None: the "no label" class
    with pytest.raises(ValueError, match="num_classes"):
        MLPDenoiser()(x_t, t, torch.zeros(5, dtype=torch.long))


@torch.no_grad()
def _ancestral_samples(model, s, n, g):
    """DDPM sampling (Ho et al. 2020, alg. 2) written with the library's q_posterior."""
    x = torch.randn(n, 2, generator=g)
    for i in reversed(range(s.T)):
        t = torch.full((n,), i)
        x0_hat = x0_from_eps(s, x, t, model(x, t))
        mean, var, _ = q_posterior(s, x0_hat, x, t)
        x = mean + var.sqrt() * torch.randn(x.shape, generator=g)
    return x


def test_train_toy_learns_two_moons():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    s = linear_schedule(50)
    data = make_toy("two_moons", 4000, generator=g)
    model = MLPDenoiser()
    losses = train_toy(model, data, s, steps=800, batch_size=256, lr=5e-3, generator=g)
    assert sum(losses[-50:]) / 50 < 0.85 * sum(losses[:50]) / 50
    x = _ancestral_samples(model, s, 1000, g)
    ref = make_toy("two_moons", 2000, generator=g)
    precision = torch.cdist(x, ref).min(dim=1).values.mean().item()   # samples lie near data
    recall = torch.cdist(ref, x).min(dim=1).values.mean().item()      # data is covered
    noise = torch.cdist(torch.randn(1000, 2, generator=g), ref).min(dim=1).values.mean().item()
    # Seeded, this run gives precision ~0.10, recall ~0.04; pure noise gives ~0.35.
    assert precision < 0.14 and recall < 0.06 and precision < 0.4 * noise, (precision, recall, noise)
