"""The checkers of the tiny Stable Diffusion chapter (book ch. 12): right answers pass, however they
are computed; plausible wrong ones get the hint written for them; a crash or a hang is reported.
Same standard as tests/test_exercises.py: at least two correct and three wrong answers per exercise.
"""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from sfs.canvas_eval import entropy_bits as library_entropy
from sfs.exercises import all_exercises
from sfs.exercises import tiny_sd as ex
from sfs.guidance import CFGModel
from sfs.samplers import dpm_solver_2m_sample
from sfs.schedules import cosine_schedule
from sfs.text2image import generate


def pipeline_by_hand(prompts, model, autoencoder, guidance_scale, steps, seed):
    """The guidance written out: two passes of the model instead of CFGModel's doubled batch."""
    ids = model.tokenizer.encode(prompts)
    null = model.null_cond(len(prompts))

    def guided(z, t, cond):
        e_c, e_u = model(z, t, cond), model(z, t, null)
        return e_u + guidance_scale * (e_c - e_u)
    guided.check_cond = model.check_cond
    u = model.config.unet
    z = torch.randn(len(prompts), u.in_channels, u.image_size, u.image_size,
                    generator=torch.Generator().manual_seed(seed))
    z0 = dpm_solver_2m_sample(guided, z, cosine_schedule(1000), steps=steps, cond=ids)
    return torch.clamp(autoencoder.decode(z0), min=-1.0, max=1.0)


def pipeline_one_at_a_time(prompts, model, autoencoder, guidance_scale, steps, seed):
    """Same noise, drawn once for the batch, then each prompt sampled on its own."""
    u = model.config.unet
    z = torch.randn(len(prompts), u.in_channels, u.image_size, u.image_size,
                    generator=torch.Generator().manual_seed(seed))
    out = []
    for k, p in enumerate(prompts):
        z0 = dpm_solver_2m_sample(CFGModel(model, guidance_scale), z[k:k + 1], cosine_schedule(1000),
                                  steps=steps, cond=model.tokenizer.encode([p]))
        out.append(autoencoder.decode(z0).clamp(-1, 1))
    return torch.cat(out)


def entropy_counter(values):
    n = len(values)
    return -sum(c / n * math.log2(c / n) for c in Counter(values).values())


def entropy_numpy(values):
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(2))       # nats converted to bits


CORRECT = [
    (ex.pipeline, ex.pipeline_solution),
    (ex.pipeline, lambda p, m, a, w, s, sd: generate(p, m, a, w, s, sd)),
    (ex.pipeline, pipeline_by_hand),
    (ex.pipeline, pipeline_one_at_a_time),
    (ex.entropy_bits, ex.entropy_bits_solution),
    (ex.entropy_bits, library_entropy),
    (ex.entropy_bits, entropy_counter),
    (ex.entropy_bits, entropy_numpy),
    (ex.entropy_bits, lambda v: torch.tensor(entropy_counter(v))),   # a 0-d tensor is a number too
]


@pytest.mark.parametrize("e, fn", CORRECT, ids=[f"{e.name}-{i}" for i, (e, _) in enumerate(CORRECT)])
def test_correct_implementations_pass(e, fn):
    r = e.grade(fn)
    assert r.correct, r.message


def no_guidance(p, m, a, w, s, sd):
    return pipeline_by_hand(p, m, a, 1.0, s, sd)


def no_clamp(p, m, a, w, s, sd):
    ids = m.tokenizer.encode(p)
    u = m.config.unet
    z = torch.randn(len(p), u.in_channels, u.image_size, u.image_size, generator=torch.Generator().manual_seed(sd))
    return a.decode(dpm_solver_2m_sample(CFGModel(m, w), z, cosine_schedule(1000), steps=s, cond=ids))


def latents_only(p, m, a, w, s, sd):
    ids = m.tokenizer.encode(p)
    u = m.config.unet
    z = torch.randn(len(p), u.in_channels, u.image_size, u.image_size, generator=torch.Generator().manual_seed(sd))
    return dpm_solver_2m_sample(CFGModel(m, w), z, cosine_schedule(1000), steps=s, cond=ids)


def one_noise(p, m, a, w, s, sd):
    u = m.config.unet
    z = torch.randn(1, u.in_channels, u.image_size, u.image_size, generator=torch.Generator().manual_seed(sd))
    z0 = dpm_solver_2m_sample(CFGModel(m, w), z.repeat(len(p), 1, 1, 1), cosine_schedule(1000), steps=s,
                              cond=m.tokenizer.encode(p))
    return a.decode(z0).clamp(-1, 1)


def forever(*args):
    while True:
        pass


WRONG = [
    (ex.pipeline, no_guidance, "ignore the guidance scale"),
    (ex.pipeline, lambda p, m, a, w, s, sd: ex.pipeline_solution(p, m, a, 1 - w, s, sd), "wrong direction"),
    (ex.pipeline, lambda p, m, a, w, s, sd: pipeline_by_hand(p, m, a, 0.0, s, sd), "unconditional"),
    (ex.pipeline, no_clamp, "clamp"),
    (ex.pipeline, latents_only, "decode them"),
    (ex.pipeline, one_noise, "same noise"),
    (ex.pipeline, lambda *args: args[1].no_such_method(), "AttributeError"),
    (ex.entropy_bits, lambda v: entropy_numpy(v) * math.log(2), "nats"),
    (ex.entropy_bits, lambda v: entropy_counter(v) * math.log10(2), "hartleys"),
    (ex.entropy_bits, lambda v: -entropy_counter(v), "wrong sign"),
    (ex.entropy_bits, lambda v: -sum(c * math.log2(c) for c in Counter(v).values()), "counts"),
    (ex.entropy_bits, lambda v: math.log2(len(set(v))), "distinct values"),
    (ex.entropy_bits, lambda v: None, "None"),
    (ex.entropy_bits, forever, "did not return"),
]


@pytest.mark.parametrize("e, fn, phrase", WRONG, ids=[f"{e.name}-{i}" for i, (e, _, _) in enumerate(WRONG)])
def test_wrong_implementations_get_the_intended_hint(e, fn, phrase):
    r = e.grade(fn)
    assert not r.correct
    assert phrase in r.message, r.message


def test_counts_and_registration():
    mine = [e for ch, e in all_exercises() if ch == "tiny_sd"]
    assert [e.name for e in mine] == ["pipeline", "entropy_bits"]


def test_the_tiny_models_make_the_scale_and_the_prompt_matter():
    """Otherwise the guidance mistakes could not be told apart from the answer."""
    model, ae = ex._tiny_models()
    a = generate(["a red 3"], model, ae, 3.0, 4, 0)
    assert not torch.allclose(a, generate(["a red 3"], model, ae, 1.0, 4, 0), atol=1e-4)
    assert not torch.allclose(a, generate(["two bags"], model, ae, 3.0, 4, 0), atol=1e-4)
    assert (ae.decode(torch.randn(2, 4, 12, 12)).abs() > 1).any()  # so a missing clamp shows
