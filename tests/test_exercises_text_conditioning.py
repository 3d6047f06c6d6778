"""The checkers of the text-conditioning chapter (book ch. 11): right answers pass, however they are
computed; the typical wrong ones get the hint written for them; crashing and endless learner code
gets a verdict, never an exception or a hung cell.

Kept apart from tests/test_exercises.py (whose lists cover chapters 1-9), with the same standard:
at least two correct implementations and three wrong ones per exercise.
"""

import math
import time

import pytest
import torch
import torch.nn.functional as F

from sfs.exercises import all_exercises
from sfs.exercises import text_conditioning as tc
from sfs.text import TextContext
from sfs.unet import CrossAttention

# -- masked cross-attention: correct variants ----------------------------------------------------


def attn_einsum(q, k, v, mask):
    s = torch.einsum("bhnd,bhld->bhnl", q, k) / math.sqrt(q.shape[-1])
    s = s + torch.where(mask, 0.0, float("-inf")).to(s.dtype)[:, None, None, :]   # additive mask
    return torch.einsum("bhnl,bhld->bhnd", s.softmax(-1), v)


def attn_big_negative(q, k, v, mask):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    s = s.masked_fill(~mask[:, None, None, :], torch.finfo(s.dtype).min)
    return torch.softmax(s, dim=3) @ v


def attn_renormalised(q, k, v, mask):
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) * mask[:, None, None, :]
    return (w / w.sum(-1, keepdim=True)) @ v                                     # zero, then renormalise


def attn_loop(q, k, v, mask):
    """Image by image, only over the real tokens: no mask needed at all."""
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        keep = mask[b]
        s = q[b] @ k[b][:, keep].transpose(-2, -1) / math.sqrt(q.shape[-1])      # (heads, N, L_b)
        out[b] = s.softmax(-1) @ v[b][:, keep]
    return out


def attn_sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])


def attn_float32(q, k, v, mask):
    return tc.masked_cross_attention_solution(q.float(), k.float(), v.float(), mask)


# -- guidance on prompts: correct variants ----------------------------------------------------------


def cfg_two_calls(model, z_t, t, ids, null_ids, w):
    c, u = model(z_t, t, ids), model(z_t, t, null_ids)
    return u + w * (c - u)


def cfg_weighted(model, z_t, t, ids, null_ids, w):
    c, u = model(z_t, t, ids), model(z_t, t, null_ids)
    return (1 - w) * u + w * c


def cfg_ho_salimans(model, z_t, t, ids, null_ids, w):
    c, u = model(z_t, t, ids), model(z_t, t, null_ids)
    w_prime = w - 1                                             # their w' = the book's w - 1
    return (1 + w_prime) * c - w_prime * u


def cfg_doubled_null_first(model, z_t, t, ids, null_ids, w):
    u, c = model(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([null_ids, ids])).chunk(2)
    return torch.lerp(u, c, w)


def cfg_stack(model, z_t, t, ids, null_ids, w):
    """Through sfs.guidance.CFGModel itself, with the toy model dressed as a text model."""
    from sfs.guidance import CFGModel

    class Wrapped(torch.nn.Module):
        def forward(self, x, tt, cond):
            return model(x, tt, cond)

        def null_cond(self, batch, device=None):
            return null_ids[:batch]

    return CFGModel(Wrapped(), w)(z_t, t, ids)


CORRECT = [
    (tc.masked_cross_attention, tc.masked_cross_attention_solution),
    (tc.masked_cross_attention, attn_einsum),
    (tc.masked_cross_attention, attn_big_negative),
    (tc.masked_cross_attention, attn_renormalised),
    (tc.masked_cross_attention, attn_loop),
    (tc.masked_cross_attention, attn_sdpa),
    (tc.masked_cross_attention, attn_float32),
    (tc.cfg_on_prompts, tc.cfg_on_prompts_solution),
    (tc.cfg_on_prompts, cfg_two_calls),
    (tc.cfg_on_prompts, cfg_weighted),
    (tc.cfg_on_prompts, cfg_ho_salimans),
    (tc.cfg_on_prompts, cfg_doubled_null_first),
    (tc.cfg_on_prompts, cfg_stack),
]


@pytest.mark.parametrize("ex, fn", CORRECT, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(CORRECT)])
def test_correct_implementations_pass(ex, fn):
    r = ex.grade(fn)
    assert r.correct, r.message
    assert r.message.startswith("Correct")


# -- wrong answers and the hint each must get ----------------------------------------------------


def scores(q, k, scale=None):
    return q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)


def keep(m):
    return m[:, None, None, :]


NEG = float("-inf")


def cfg_wrong(combine):
    def fn(model, z_t, t, ids, null_ids, w):
        return combine(model(z_t, t, ids), model(z_t, t, null_ids), w)
    return fn


def hang(*args):
    while True:
        pass


def hang_catching(*args):
    while True:
        try:
            time.sleep(0.01)
        except Exception:
            pass


def edits_input(q, k, v, mask):
    mask[:] = True                                         # "no padding", in place
    return tc.masked_cross_attention_solution(q, k, v, mask)


WRONG = [
    (tc.masked_cross_attention, lambda q, k, v, m: scores(q, k).softmax(-1) @ v, "forgot the padding mask"),
    (tc.masked_cross_attention, lambda q, k, v, m: scores(q, k, 1.0).masked_fill(~keep(m), NEG).softmax(-1) @ v,
     "not scaled"),
    (tc.masked_cross_attention, lambda q, k, v, m: scores(q, k, 1 / q.shape[-1]).masked_fill(~keep(m), NEG).softmax(-1) @ v,
     "divided the scores by d"),
    (tc.masked_cross_attention, lambda q, k, v, m: scores(q, k).masked_fill(~keep(m), NEG).softmax(-2) @ v,
     "wrong axis"),
    (tc.masked_cross_attention, lambda q, k, v, m: scores(q, k).masked_fill(keep(m), NEG).softmax(-1) @ v,
     "inverted"),
    (tc.masked_cross_attention, lambda q, k, v, m: (scores(q, k).softmax(-1) * keep(m)) @ v, "sum to 1"),
    (tc.masked_cross_attention, lambda q, k, v, m: (scores(q, k) * keep(m)).softmax(-1) @ v, "exp(0) = 1"),
    (tc.masked_cross_attention, lambda q, k, v, m: scores(q, k).masked_fill(~keep(m), NEG).softmax(-1),
     "wrong shape"),
    (tc.masked_cross_attention, lambda q, k, v, m: None, "returned None"),
    (tc.masked_cross_attention, lambda q, k, v, m: q @ k.transpose(0, 1), "raised"),
    (tc.masked_cross_attention, edits_input, "modified its input `mask`"),
    (tc.masked_cross_attention, hang, "did not return"),
    (tc.cfg_on_prompts, cfg_wrong(lambda c, u, w: u - w * (c - u)), "sign is flipped"),
    (tc.cfg_on_prompts, cfg_wrong(lambda c, u, w: (1 - w) * c + w * u), "w and 1 - w are swapped"),
    (tc.cfg_on_prompts, cfg_wrong(lambda c, u, w: c + w * (u - c)), "w and 1 - w are swapped"),
    (tc.cfg_on_prompts, cfg_wrong(lambda c, u, w: (1 + w) * c - w * u), "Ho & Salimans"),
    (tc.cfg_on_prompts, cfg_wrong(lambda c, u, w: c), "conditional prediction alone"),
    (tc.cfg_on_prompts, cfg_wrong(lambda c, u, w: w * (c - u)), "only the guidance direction"),
    (tc.cfg_on_prompts, lambda m, z, t, ids, null, w: tc._all_padding(m, z, t, ids, null, w), "not a row of padding"),
    (tc.cfg_on_prompts, lambda m, z, t, ids, null, w: m(z, t, ids, null), "raised TypeError"),
    (tc.cfg_on_prompts, lambda m, z, t, ids, null, w: 1 / 0, "ZeroDivisionError"),
    (tc.cfg_on_prompts, lambda m, z, t, ids, null, w: m(z, t, ids).numpy(), "numpy"),
    (tc.cfg_on_prompts, hang_catching, "did not return"),
]


@pytest.mark.parametrize("ex, fn, phrase", WRONG, ids=[f"{e.name}-{i}" for i, (e, _, _) in enumerate(WRONG)])
def test_wrong_implementations_get_the_intended_hint(ex, fn, phrase):
    r = ex.grade(fn)
    assert not r.correct
    assert r.message.startswith("Not yet: ")
    assert phrase in r.message, r.message


def test_random_answers_are_called_out():
    r = tc.cfg_on_prompts.grade(lambda m, z, t, ids, null, w: torch.randn_like(z))
    assert not r.correct and "different results for the same inputs" in r.message


def test_counts_and_registration():
    mine = [ex for ch, ex in all_exercises() if ch == "text_conditioning"]
    assert [e.name for e in mine] == ["masked_cross_attention", "cfg_on_prompts"]
    for ex in mine:
        assert sum(e is ex for e, _ in CORRECT) >= 2 and sum(e is ex for e, _, _ in WRONG) >= 3, ex.name


@pytest.mark.parametrize("ex", [tc.masked_cross_attention, tc.cfg_on_prompts], ids=lambda e: e.name)
def test_solution_source_alone_passes_and_checker_never_raises(ex, capsys):
    ex.solution()
    ns = {"torch": torch, "math": math}
    exec(capsys.readouterr().out, ns)
    fn = next(v for k, v in ns.items() if k.endswith("_solution"))
    assert ex.grade(fn).correct
    ex(lambda *a: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out
    ex(42)
    assert "pass your function itself" in capsys.readouterr().out
    ex.hint()
    assert capsys.readouterr().out.startswith("Hint")


def test_padding_gets_zero_weight_and_the_reference_is_the_library():
    """The reference is what sfs.unet.CrossAttention computes inside, and padded tokens get weight 0."""
    torch.manual_seed(0)
    layer = CrossAttention(16, context_dim=8, num_heads=4).double()
    torch.nn.init.normal_(layer.proj.weight)                        # not the zero start: see the output
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    states = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False], [True, True, False, False, False]])
    layer.store_attention = True
    out = layer(x, TextContext(states, mask))
    assert torch.all(layer.attention[~mask[:, None, :].expand(-1, 9, -1)] == 0)
    assert torch.allclose(layer.attention.sum(-1), torch.ones(2, 9, dtype=torch.float64))
    B, C, H, W = x.shape
    tokens = layer.norm(x).view(B, C, H * W).transpose(1, 2)
    q = layer.q(tokens).view(B, H * W, 4, 4).transpose(1, 2)
    k, v = layer.kv(states).view(B, 5, 2, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
    mine = tc.masked_cross_attention_solution(q, k, v, mask)
    assert torch.allclose(mine, tc.masked_cross_attention.reference(q, k, v, mask))
    by_hand = x + layer.proj(mine.transpose(1, 2).reshape(B, H * W, C)).transpose(1, 2).reshape(B, C, H, W)
    assert torch.allclose(out, by_hand)
    states2 = states.clone()
    states2[~mask] = 1e3                                            # what sits at the padding is ignored
    layer.store_attention = False
    assert torch.allclose(layer(x, TextContext(states2, mask)), out)


def test_toy_model_is_batch_independent_and_prompt_dependent():
    case = tc.cfg_on_prompts.cases(torch.Generator().manual_seed(0))[0]
    model, z, t, ids, null, w = case.args
    both = model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([ids, null]))
    assert torch.equal(both[: len(z)], model(z, t, ids)) and torch.equal(both[len(z):], model(z, t, null))
    assert (model(z, t, ids) - model(z, t, null)).abs().min() > 0      # the prompt moves every value


def test_the_chapters_first_attempts_get_the_hints_the_text_expects():
    """Book ch. 11 shows a first attempt before each solution: no mask, and cond/uncond swapped."""
    def first_attention(q, k, v, mask):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return scores.softmax(dim=-1) @ v

    def first_cfg(model, z_t, t, ids, null_ids, w):
        eps_cond, eps_uncond = model(z_t, t, ids), model(z_t, t, null_ids)
        return eps_cond + w * (eps_uncond - eps_cond)

    assert "forgot the padding mask" in tc.masked_cross_attention.grade(first_attention).message
    assert "w and 1 - w are swapped" in tc.cfg_on_prompts.grade(first_cfg).message
