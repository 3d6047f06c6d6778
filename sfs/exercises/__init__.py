"""Exercises with checked answers, one module per chapter, in the style of Kaggle's learntools.

In a chapter the reader writes a function, then checks it:

    from sfs.exercises import forward_process as check

    def forward_sample(schedule, x0, t, eps):
        ...                                   # the reader's attempt

    check.forward_sample(forward_sample)      # prints "Correct: ..." or "Not yet: <what is wrong>"
    check.forward_sample.hint()               # a nudge
    check.forward_sample.solution()           # the source of a reference solution

A checker runs the reader's function on a few random inputs (fixed seed), including boundary cases
(t = 0 and T - 1, eta = 0, T = 1, ...), compares with the ``sfs`` implementation, and names the
mistake only when the output matches a known wrong variant (a missing square root, alpha_t for
alpha_bar_t, no broadcast over the batch, a swapped sign, ...) on every case; otherwise it says how
far off the output is and where. Each call gets its own copies of the arguments (an in-place edit
is reported) and a time limit of a few seconds (an endless loop is stopped). It never raises: an
exception in the reader's code is reported with its type and message.

Exercises by chapter (module: exercises):
- ``forward_process``: forward_sample, alpha_bar
- ``schedules``: cosine_alpha_bar, betas, snr
- ``elbo``: posterior_mean, gaussian_kl
- ``parameterizations``: x0_from_eps, v_target
- ``unet``: timestep_embedding, attention
- ``training``: ema_update, lr_at
- ``sampling``: ddim_step, ddim_sigma
- ``guidance``: cfg, classifier_guided_eps
- ``evaluation``: gaussian_stats, frechet_distance
- ``latent_space``: gaussian_kl_to_standard, latent_scale_factor
- ``text_conditioning``: masked_cross_attention, cfg_on_prompts
- ``tiny_sd``: pipeline, entropy_bits

``all_exercises()`` lists every exercise with its chapter; the grading core is ``sfs.exercises.core``.
"""

from __future__ import annotations

from importlib import import_module

from sfs.exercises.core import Exercise, Result

CHAPTERS = ("forward_process", "schedules", "elbo", "parameterizations", "unet", "training",
            "sampling", "guidance", "evaluation", "latent_space", "text_conditioning", "tiny_sd")


def all_exercises() -> list[tuple[str, Exercise]]:
    """(chapter module, exercise) for every exercise, in book order."""
    out = []
    for name in CHAPTERS:
        mod = import_module(f"sfs.exercises.{name}")
        out += [(name, getattr(mod, e)) for e in mod.__all__]
    return out


__all__ = ["Exercise", "Result", "CHAPTERS", "all_exercises"]
