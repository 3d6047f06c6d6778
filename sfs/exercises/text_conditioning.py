"""Exercises for the text-conditioning chapter: masked cross-attention, and guidance on prompts.

    from sfs.exercises import text_conditioning as check
    check.masked_cross_attention(my_attn)   # my_attn(q, k, v, mask) -> (B, heads, N, d), eq. (11.4)
    check.cfg_on_prompts(my_cfg)            # my_cfg(model, z_t, t, ids, null_ids, w) -> eps, eq. (11.5)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sfs.exercises.core import Case, Exercise, Mistake
from sfs.text import PAD, Tokenizer

# -- 1. masked cross-attention, book eqs. (11.3)-(11.4) -------------------------------------------


def masked_cross_attention_solution(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + M) v, M = 0 at tokens and -inf at padding.

    q (B, heads, N, d) from the N image positions; k, v (B, heads, L, d) from the L tokens;
    mask (B, L) bool, True = a token. Returns (B, heads, N, d).
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)                  # (B, heads, N, L)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))  # padding: weight exp(-inf) = 0
    return scores.softmax(dim=-1) @ v                                 # weights over the L tokens


def _scores(q, k, scale=None):
    return q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)


def _keep(mask):
    return mask[:, None, None, :]  # (B, 1, 1, L)


def _masked(q, k, v, mask, scale=None, dim=-1):
    s = _scores(q, k, scale).masked_fill(~_keep(mask), float("-inf"))
    return s.softmax(dim=dim) @ v


def _attn_cases(gen):
    def qkv(B, H, N, L, d):
        return tuple(torch.randn(B, H, n, d, generator=gen, dtype=torch.float64) for n in (N, L, L))

    def mask(L, lengths):  # each row: `length` tokens, then padding (as Tokenizer.encode pads)
        return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]

    return [Case((*qkv(2, 4, 144, 20, 16), mask(20, [9, 5])),
                 "12x12 latent positions, 20 token slots: prompts of 9 and 5 tokens, the rest padding"),
            Case((*qkv(3, 2, 36, 8, 8), mask(8, [8, 3, 2])),
                 "6x6 positions, 8 slots: one prompt without padding, one of 3 tokens, the empty prompt (2)"),
            Case((*qkv(1, 1, 5, 6, 32), mask(6, [4])), "one head, 5 positions, 4 tokens of 6 slots"),
            Case((*qkv(2, 2, 9, 4, 4), mask(4, [1, 1])),
                 "a single token that is not padding: every query's output is that token's value",
                 boundary=True)]


masked_cross_attention = Exercise(
    "masked_cross_attention",
    reference=lambda q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=_keep(mask)),
    cases=_attn_cases,
    solution=masked_cross_attention_solution,
    hint="Scores q k^T / sqrt(d) of shape (B, heads, N, L); set the scores of padded tokens to -inf "
         "(mask[:, None, None, :] broadcasts the (B, L) mask over heads and queries); softmax over the "
         "tokens, the last axis; multiply by v.",
    broadcast_hint=None, rtol=1e-4, atol=1e-5,
    mistakes=[
        Mistake(lambda q, k, v, m: _scores(q, k).softmax(-1) @ v,
                "you forgot the padding mask: the padded tokens got weight too. Set their scores to "
                "-inf before the softmax (scores.masked_fill(~mask[:, None, None, :], float('-inf')))."),
        Mistake(lambda q, k, v, m: _masked(q, k, v, m, scale=1.0),
                "the scores are not scaled: divide q k^T by sqrt(d), the head size, as in self-attention "
                "(eq. (5.5)); unscaled, the softmax saturates as d grows."),
        Mistake(lambda q, k, v, m: _masked(q, k, v, m, scale=1 / q.shape[-1]),
                "you divided the scores by d; the scale is 1 / sqrt(d)."),
        Mistake(lambda q, k, v, m: _masked(q, k, v, m, dim=-2),
                "the softmax runs over the wrong axis: each image position's weights must sum to 1 over "
                "the tokens, the last axis of the (B, heads, N, L) scores (softmax(dim=-1)), not over "
                "the image positions."),
        Mistake(lambda q, k, v, m: _masked(q, k, v, ~m),
                "the mask is inverted: True marks a real token, so fill the scores where the mask is "
                "False (~mask) with -inf, not where it is True."),
        Mistake(lambda q, k, v, m: (_scores(q, k).softmax(-1) * _keep(m)) @ v,
                "you zeroed the padded tokens' weights after the softmax, so the weights no longer sum "
                "to 1: mask the scores with -inf before the softmax (or renormalise)."),
        Mistake(lambda q, k, v, m: (_scores(q, k) * _keep(m)).softmax(-1) @ v,
                "a score of 0 is not 'no attention': exp(0) = 1, so the padded tokens still got weight. "
                "Set their scores to -inf, not 0."),
    ],
)


# -- 2. classifier-free guidance on prompts, book eq. (11.5) --------------------------------------

_TOKENIZER = Tokenizer()
_EMBED = torch.randn(len(_TOKENIZER), 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
_EMBED[PAD] = 0.0  # padding contributes nothing, like a masked token
_DECAY = 0.8 ** torch.arange(_TOKENIZER.max_length, dtype=torch.float64)  # word order matters


def toy_text_model(z_t, t, ids):
    """A stand-in for a text-to-image model, with its contract: eps_hat = model(z_t, t, ids).

    z_t (B, 4, h, w), t (B,) int64, ids (B, L) int64 -> (B, 4, h, w). Deterministic, each image
    independent of the others in the batch, and the prompt visibly moves the output.
    """
    cond = (_EMBED[ids] * _DECAY[: ids.shape[1], None]).sum(1).to(z_t.dtype)   # (B, 4)
    ramp = (1 + t.to(z_t.dtype) / 1000)[:, None, None, None]                    # (B, 1, 1, 1)
    return 0.8 * torch.tanh(z_t) + ramp * cond[:, :, None, None]


def cfg_on_prompts_solution(model, z_t, t, ids, null_ids, w):
    """eps_uncond + w (eps_cond - eps_uncond), both from one call on the doubled batch.

    model(z_t, t, ids) -> eps_hat; ids (B, L) the prompts, null_ids (B, L) the empty prompt's ids.
    """
    eps = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([ids, null_ids]))  # (2B, ...)
    eps_cond, eps_uncond = eps.chunk(2)
    return eps_uncond + w * (eps_cond - eps_uncond)


def _cfg_reference(model, z_t, t, ids, null_ids, w):
    eps_cond, eps_uncond = model(z_t, t, ids), model(z_t, t, null_ids)  # two separate calls
    return eps_uncond + w * (eps_cond - eps_uncond)


def _pair(model, z_t, t, ids, null_ids):
    return model(z_t, t, ids), model(z_t, t, null_ids)


def _cfg_cases(gen):
    prompts = ["a red 3 left of a blue 7", "two green sneakers", "a small yellow 5 at the top",
               "a white dress above an orange 1", "a cyan 8 below a green 2", "a large magenta bag on the right"]
    out = []
    for B, S, w, label in [(2, 12, 3.0, "two prompts, 12x12 latents, w = 3"),
                           (3, 6, 7.5, "three prompts, 6x6 latents, w = 7.5"),
                           (1, 12, 1.0, "w = 1: must give the conditional prediction"),
                           (4, 3, 0.0, "w = 0: must give the prediction for the empty prompt")]:
        pick = torch.randperm(len(prompts), generator=gen)[:B].tolist()
        ids = _TOKENIZER.encode([prompts[i] for i in pick])
        null_ids = _TOKENIZER.encode([""] * B)
        z_t = torch.randn(B, 4, S, S, generator=gen, dtype=torch.float64)
        t = torch.randint(0, 1000, (B,), generator=gen)
        out.append(Case((toy_text_model, z_t, t, ids, null_ids, w), label, boundary=w in (0.0, 1.0)))
    return out


def _mistake(combine):
    def fn(model, z_t, t, ids, null_ids, w):
        c, u = _pair(model, z_t, t, ids, null_ids)
        return combine(c, u, w)
    return fn


def _all_padding(model, z_t, t, ids, null_ids, w):
    c, u = model(z_t, t, ids), model(z_t, t, torch.zeros_like(ids))
    return u + w * (c - u)


cfg_on_prompts = Exercise(
    "cfg_on_prompts",
    reference=_cfg_reference,
    cases=_cfg_cases,
    solution=cfg_on_prompts_solution,
    hint="Two predictions at the same z_t and t: one with the prompts' ids, one with null_ids (the "
         "empty prompt); then eq. (8.2): eps_uncond + w (eps_cond - eps_uncond). One call of the model "
         "on the doubled batch torch.cat([z_t, z_t]), ... gives both; .chunk(2) splits them.",
    broadcast_hint=None, rtol=1e-4, atol=1e-5,
    mistakes=[
        Mistake(_mistake(lambda c, u, w: u - w * (c - u)),
                "the guidance sign is flipped: start from eps_uncond and move towards eps_cond, "
                "eps_uncond + w (eps_cond - eps_uncond); you moved away from the prompt."),
        Mistake(_mistake(lambda c, u, w: (1 - w) * c + w * u),
                "w and 1 - w are swapped (or, the same thing, cond and uncond): the formula is "
                "(1 - w) eps_uncond + w eps_cond, so that w = 1 gives the conditional prediction and "
                "w = 0 the empty prompt's."),
        Mistake(_mistake(lambda c, u, w: (1 + w) * c - w * u),
                "that is Ho & Salimans' form (1 + w') eps_cond - w' eps_uncond with w' = w; the book's w "
                "multiplies (eps_cond - eps_uncond), so w = 1 gives eps_cond (their w' = w - 1)."),
        Mistake(_mistake(lambda c, u, w: c),
                "you returned the conditional prediction alone; guidance extrapolates from the empty "
                "prompt's prediction: eps_uncond + w (eps_cond - eps_uncond)."),
        Mistake(_mistake(lambda c, u, w: w * (c - u)),
                "you returned only the guidance direction times w; add it to eps_uncond."),
        Mistake(_all_padding,
                "the null condition is the empty prompt, null_ids = [<bos>, <eos>, <pad>, ...], not a "
                "row of padding (torch.zeros_like(ids)): use the null_ids you are given."),
    ],
)

__all__ = ["masked_cross_attention", "cfg_on_prompts"]
