"""Exercises for the denoising-network chapter: the sinusoidal time embedding and attention.

    from sfs.exercises import unet as check
    check.timestep_embedding(my_embedding)   # my_embedding(t, dim) -> (B, dim)
    check.attention(my_attention)            # my_attention(q, k, v) -> (B, heads, L, head_dim)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sfs.embeddings import timestep_embedding as _timestep_embedding
from sfs.exercises.core import Case, Exercise, Mistake


# -- 1. the sinusoidal time embedding ----------------------------------------------------------

def timestep_embedding_solution(t, dim):
    """[cos(t w_k), sin(t w_k)] with w_k = 10000^(-k / (dim/2)), k = 0..dim/2 - 1: (B, dim)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32)
    w = torch.exp(-math.log(10000.0) * k / half)           # (half,) from 1 down towards 1e-4
    args = t.float()[:, None] * w[None, :]                  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _emb(t, dim, denom_minus_one=False, swap=False, interleave=False, scale_t=1.0):
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    w = torch.exp(-math.log(10000.0) * k / (half - 1 if denom_minus_one else half))
    args = (t.double() * scale_t)[:, None] * w[None, :]
    a, b = (torch.sin(args), torch.cos(args)) if swap else (torch.cos(args), torch.sin(args))
    if interleave:
        return torch.stack([a, b], dim=2).reshape(t.shape[0], dim)
    return torch.cat([a, b], dim=1)


def _emb_cases(gen):
    return [Case((torch.tensor([0, 1, 10, 500, 999]), 16), "t = 0, 1, 10, 500, 999; dim = 16"),
            Case((torch.randint(0, 1000, (6,), generator=gen), 32), "6 random t; dim = 32"),
            Case((torch.tensor([3, 250]), 128), "t = 3, 250; dim = 128 (the U-Net's size)"),
            Case((torch.tensor([0, 2, 999]), 2), "dim = 2: a single frequency, w_0 = 1", boundary=True)]


timestep_embedding = Exercise(
    "timestep_embedding",
    reference=lambda t, dim: _timestep_embedding(t, dim),
    cases=_emb_cases,
    solution=timestep_embedding_solution,
    hint="Half the features are cos(t w_k), the other half sin(t w_k), for the dim/2 frequencies "
         "w_k = 10000^(-k / (dim/2)), k = 0, 1, ..., dim/2 - 1. Concatenate [cos, sin] along dim 1.",
    broadcast_hint=None, rtol=1e-4, atol=2e-4,
    mistakes=[
        Mistake(lambda t, dim: _emb(t, dim, swap=True),
                "sin and cos are swapped: that is DDPM's original layout (sin first), a valid embedding, "
                "but eq. (5.1) asks for the cosines first, then the sines."),
        Mistake(lambda t, dim: _emb(t, dim, interleave=True),
                "you interleaved cos and sin (cos, sin, cos, sin, ...); concatenate them instead: "
                "all the cosines first, then all the sines."),
        Mistake(lambda t, dim: _emb(t, dim, denom_minus_one=True),
                "you used DDPM's frequencies, exponent -k / (dim/2 - 1): a valid embedding, but eq. (5.1) "
                "asks for -k / (dim/2), whose lowest frequency is 10000^(-(dim/2 - 1)/(dim/2)), just "
                "above 1/10000."),
        Mistake(lambda t, dim: _emb(t, dim, scale_t=1 / 1000),
                "you rescaled t (t / T?): the embedding takes the integer timestep itself, so that "
                "neighbouring steps differ at the highest frequency (1 radian per step)."),
    ],
)


# -- 2. scaled dot-product attention -------------------------------------------------------------

def attention_solution(q, k, v):
    """softmax(q k^T / sqrt(head_dim)) v for q, k, v of shape (B, heads, L, head_dim)."""
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)        # (B, heads, L, L): query i, key j
    return scores.softmax(dim=-1) @ v                       # each query's weights sum to 1 over keys


def _att(q, k, v, scale=None, dim=-1, transpose_v=False):
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    w = s.softmax(dim=dim)
    return w.transpose(-2, -1) @ v if transpose_v else w @ v


def _att_cases(gen):
    out = []
    for B, H, L, d, label in [(2, 4, 49, 16, "B = 2, 4 heads, 49 tokens (7x7), head_dim 16"),
                              (1, 1, 5, 8, "one head, 5 tokens, head_dim 8"),
                              (3, 2, 10, 64, "B = 3, 2 heads, 10 tokens, head_dim 64"),
                              (2, 3, 1, 4, "one token, L = 1: its weight is 1, so the output is v")]:
        q, k, v = (torch.randn(B, H, L, d, generator=gen, dtype=torch.float64) for _ in range(3))
        out.append(Case((q, k, v), label, boundary=L == 1))
    return out


attention = Exercise(
    "attention",
    reference=lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
    cases=_att_cases,
    solution=attention_solution,
    hint="Scores q k^T divided by sqrt(head_dim), a softmax over the keys (the last axis), then a "
         "weighted sum of the values: softmax(q @ k.transpose(-2, -1) / sqrt(d), dim=-1) @ v.",
    broadcast_hint=None, rtol=1e-4, atol=1e-5,
    mistakes=[
        Mistake(lambda q, k, v: _att(q, k, v, scale=1.0),
                "the scores are not scaled: divide q k^T by sqrt(head_dim), or the softmax saturates "
                "as head_dim grows."),
        Mistake(lambda q, k, v: _att(q, k, v, scale=1 / q.shape[-1]),
                "you divided by head_dim; the scale is 1 / sqrt(head_dim), which keeps the scores at "
                "unit variance when q and k have unit-variance entries."),
        Mistake(lambda q, k, v: _att(q, k, v, dim=-2),
                "the softmax runs over the wrong axis: each query's weights must sum to 1 over the "
                "keys, i.e. softmax(..., dim=-1) on scores of shape (B, heads, L_query, L_key)."),
        Mistake(lambda q, k, v: _att(q, k, v, transpose_v=True),
                "the weights are transposed: row i of softmax(q k^T / sqrt(d)) holds query i's "
                "weights over the keys; multiply it as is by v."),
    ],
)


__all__ = ["timestep_embedding", "attention"]
