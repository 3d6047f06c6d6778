"""Exercises for the tiny Stable Diffusion chapter: the whole pipeline, and diversity in bits.

    from sfs.exercises import tiny_sd as check
    check.pipeline(my_pipeline)          # my_pipeline(prompts, model, autoencoder, guidance_scale, steps, seed)
                                         #   -> images (B, 3, H, W) in [-1, 1], eqs. (12.1)-(12.4)
    check.entropy_bits(my_entropy)       # my_entropy(values: list of ints) -> bits, eq. (12.8)

The pipeline is checked on a tiny random text-to-image model and a tiny random autoencoder (built
here in a fraction of a second), against ``sfs.text2image.generate`` with the same seed.
"""

from __future__ import annotations

import math

import torch

from sfs.autoencoder import Autoencoder, AutoencoderConfig
from sfs.canvas_eval import entropy_bits as _entropy_bits
from sfs.exercises.core import Case, Exercise, Mistake
from sfs.guidance import CFGModel
from sfs.samplers import dpm_solver_2m_sample
from sfs.schedules import cosine_schedule
from sfs.text import TextEncoderConfig
from sfs.text2image import TextToImage, TextToImageConfig, generate
from sfs.unet import UNetConfig


# -- 1. the pipeline, book eqs. (12.1)-(12.4) ----------------------------------------------------

def pipeline_solution(prompts, model, autoencoder, guidance_scale, steps, seed):
    """prompts (list of B strings) -> images (B, 3, H, W) in [-1, 1]: what ``generate`` does."""
    from sfs.guidance import CFGModel
    from sfs.samplers import dpm_solver_2m_sample
    from sfs.schedules import cosine_schedule
    ids = model.tokenizer.encode(prompts)                               # (B, L), eq. (12.1)'s tokens
    c = model.config.unet
    g = torch.Generator().manual_seed(seed)
    z_T = torch.randn(len(ids), c.in_channels, c.image_size, c.image_size, generator=g)
    guided = CFGModel(model, guidance_scale)                            # eq. (12.2)
    z0 = dpm_solver_2m_sample(guided, z_T, cosine_schedule(1000), steps=steps, cond=ids)  # (12.3)
    return autoencoder.decode(z0).clamp(-1, 1)                          # eq. (12.4)


def _sample(prompts, model, autoencoder, scale, steps, seed, z_T=None, clamp=True, decode=True,
            cond_none=False):
    """The pipeline with one part changed: the known mistakes."""
    ids = model.tokenizer.encode(prompts)
    c = model.config.unet
    if z_T is None:
        z_T = torch.randn(len(ids), c.in_channels, c.image_size, c.image_size,
                          generator=torch.Generator().manual_seed(seed))
    guided = model if cond_none else CFGModel(model, scale)
    z0 = dpm_solver_2m_sample(guided, z_T, cosine_schedule(1000), steps=steps,
                              cond=None if cond_none else ids)
    if not decode:
        return z0
    x = autoencoder.decode(z0)
    return x.clamp(-1, 1) if clamp else x


def _one_noise(prompts, model, ae, scale, steps, seed):
    c = model.config.unet
    z1 = torch.randn(1, c.in_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))
    return _sample(prompts, model, ae, scale, steps, seed, z_T=z1.expand(len(prompts), -1, -1, -1).clone())


_MODELS: dict = {}


def _tiny_models():
    """A tiny text-to-image model whose every weight is random (the cross-attention too, so the
    prompt and the guidance scale matter) and a tiny autoencoder whose decoder reaches past [-1, 1]."""
    if not _MODELS:
        with torch.random.fork_rng():
            torch.manual_seed(12)
            model = TextToImage(TextToImageConfig(
                unet=UNetConfig(in_channels=4, image_size=12, base_channels=8, channel_mults=(1, 2),
                                num_res_blocks=1, attn_resolutions=(6,), cross_attn_resolutions=(12, 6),
                                context_dim=16, num_heads=2, dropout=0.0),
                text=TextEncoderConfig(dim=16, num_layers=1, num_heads=2)))
            ae = Autoencoder(AutoencoderConfig(base_channels=8, channel_mults=(1, 2, 2), scale_factor=1.7))
            with torch.no_grad():
                for p in list(model.parameters()) + list(ae.parameters()):
                    p.add_(0.2 * torch.randn_like(p))
        _MODELS["models"] = (model.eval(), ae.eval())
    return _MODELS["models"]


def _pipeline_cases(gen):
    model, ae = _tiny_models()
    return [Case((["a red 3 left of a blue 7", "two green sneakers", "a small yellow 5 at the top"],
                  model, ae, 3.0, 4, 0), "three prompts, guidance scale 3, 4 steps, seed 0"),
            Case((["a blue 3 left of a red 7", "a white dress above an orange 1"], model, ae, 7.5, 3, 11),
                 "two prompts, guidance scale 7.5, 3 steps, seed 11"),
            Case((["a cyan 8 below a green 2"], model, ae, 2.0, 1, 3), "one prompt and a single step",
                 boundary=True)]


pipeline = Exercise(
    "pipeline",
    reference=lambda prompts, model, ae, w, steps, seed: generate(prompts, model, ae, w, steps, seed),
    cases=_pipeline_cases,
    solution=pipeline_solution,
    hint="Tokenise the prompts (model.tokenizer.encode), draw z_T of shape (B, 4, 12, 12) from "
         "torch.Generator().manual_seed(seed), wrap the model in CFGModel(model, guidance_scale), run "
         "dpm_solver_2m_sample(guided, z_T, cosine_schedule(1000), steps=steps, cond=ids), and decode "
         "the result with autoencoder.decode, clamped to [-1, 1].",
    broadcast_hint=None, rtol=1e-3, atol=1e-4,
    mistakes=[
        Mistake(lambda p, m, a, w, st, sd: _sample(p, m, a, 1.0, st, sd),
                "your images ignore the guidance scale: they are the plain conditional model's (scale 1). "
                "Wrap the model in CFGModel(model, guidance_scale)."),
        Mistake(lambda p, m, a, w, st, sd: _sample(p, m, a, 0.0, st, sd),
                "these are the unconditional model's images (scale 0): the prompt never reached the model."),
        Mistake(lambda p, m, a, w, st, sd: _sample(p, m, a, w, st, sd, cond_none=True),
                "the prompt ids never reached the sampler: pass cond=ids, or every image is drawn from "
                "the empty prompt."),
        Mistake(lambda p, m, a, w, st, sd: _sample(p, m, a, 1.0 - w, st, sd),
                "guidance in the wrong direction: eps_uncond + w (eps_cond - eps_uncond), not "
                "eps_cond + w (eps_uncond - eps_cond)."),
        Mistake(lambda p, m, a, w, st, sd: _sample(p, m, a, w, st, sd, clamp=False),
                "right up to the decoder: clamp the decoded images to [-1, 1], as an image must be."),
        Mistake(lambda p, m, a, w, st, sd: _sample(p, m, a, w, st, sd, decode=False),
                "you returned the latents z_0 (B, 4, 12, 12): decode them to pixels with autoencoder.decode."),
        Mistake(_one_noise,
                "every image starts from the same noise: draw z_T for the whole batch, shape "
                "(B, 4, 12, 12), not (1, 4, 12, 12) repeated."),
    ],
)


# -- 2. diversity in bits, book eq. (12.8) --------------------------------------------------------

def entropy_bits_solution(values):
    """The Shannon entropy in bits of the empirical distribution of a list of ints >= 0."""
    counts = torch.bincount(torch.tensor(values))
    p = counts[counts > 0].double() / len(values)      # only the values that occur: 0 log 0 = 0
    return float(-(p * torch.log2(p)).sum())


def _h(values, log=math.log2, normalise=True):
    n = len(values)
    counts = [values.count(v) for v in sorted(set(values))]
    ps = [c / n for c in counts] if normalise else counts
    return -sum(p * log(p) for p in ps)


def _entropy_cases(gen):
    skewed = torch.multinomial(torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.05]), 200, True, generator=gen)
    return [Case(([3, 3, 4, 4, 4, 8, 0, 0],), "eight cells with repeats"),
            Case((list(range(9)) * 4,), "every cell of a 3 x 3 grid equally often: log2 9 bits"),
            Case((skewed.tolist(),), "200 draws of a skewed distribution over 6 values"),
            Case(([1, 0, 1, 1],), "two sizes, one three times as often as the other"),
            Case(([5] * 12,), "one value only: 0 bits", boundary=True)]


entropy_bits = Exercise(
    "entropy_bits",
    reference=_entropy_bits,
    cases=_entropy_cases,
    solution=entropy_bits_solution,
    hint="Count how often each value occurs, divide by the number of values to get p_j, and return "
         "- sum_j p_j log2 p_j over the values that occur (eq. (12.8)); log2, so the answer is in bits.",
    output="number", broadcast_hint=None, rtol=1e-6, atol=1e-9,
    mistakes=[
        Mistake(lambda v: _h(v, log=math.log), "that is the entropy in nats (natural log); bits need log2: "
                "divide by ln 2, or use torch.log2."),
        Mistake(lambda v: _h(v, log=math.log10), "log10 gives the entropy in hartleys; bits need log2."),
        Mistake(lambda v: -_h(v), "wrong sign: an entropy is never negative; it is MINUS sum p log2 p."),
        Mistake(lambda v: _h(v, normalise=False), "you used the counts; divide them by the number of values "
                "to get probabilities p_j first."),
        Mistake(lambda v: math.log2(len(set(v))), "that is log2 of the number of distinct values, the "
                "entropy only when every value occurs equally often; weight each by its probability."),
        Mistake(lambda v: math.log2(len(v)), "log2 of the number of values is the entropy only when every "
                "value is different; count repeats."),
    ],
)

__all__ = ["pipeline", "entropy_bits"]
