"""Exercises for the training chapter: the EMA update and the warmup learning rate.

    from sfs.exercises import training as check
    check.ema_update(my_ema)     # my_ema(ema, param, decay) -> the new EMA tensor
    check.lr_at(my_lr_at)        # my_lr_at(step, lr, warmup_steps) -> a number
"""

from __future__ import annotations

import torch

from sfs.exercises.core import Case, Exercise, Mistake


def _lr_at_lib(step, lr, warmup_steps):
    from sfs.train import lr_at  # imported when a check runs
    return lr_at(step, lr, warmup_steps)


# -- 1. one EMA step -------------------------------------------------------------------------------

def ema_update_solution(ema, param, decay):
    """ema <- decay * ema + (1 - decay) * param: keep most of the average, move a little to param."""
    return decay * ema + (1 - decay) * param


def _ema_cases(gen):
    out = []
    for shape, d, label in [((64,), 0.999, "a (64,) weight vector, decay 0.999"),
                            ((8, 3, 3), 0.9, "an (8, 3, 3) conv kernel, decay 0.9"),
                            ((5,), 0.5, "decay 0.5"),
                            ((2, 3), 0.0, "decay 0: the average becomes param"),
                            ((4,), 1.0, "decay 1: the average stays where it is")]:
        out.append(Case((torch.randn(shape, generator=gen, dtype=torch.float64),
                         torch.randn(shape, generator=gen, dtype=torch.float64), d), label,
                        boundary=d in (0.0, 1.0)))
    return out


ema_update = Exercise(
    "ema_update",
    reference=lambda e, p, d: d * e + (1 - d) * p,
    cases=_ema_cases,
    solution=ema_update_solution,
    hint="The average keeps a fraction `decay` of itself and takes (1 - decay) of the new weights; "
         "with decay 0.999 it moves 0.1% of the way towards param.",
    broadcast_hint=None, rtol=1e-5, atol=1e-7, may_modify=(0,),  # ema.lerp_(param, 1 - decay) is fine
    mistakes=[
        Mistake(lambda e, p, d: (1 - d) * e + d * p,
                "decay and 1 - decay are swapped: with decay 0.999 the average must keep 99.9% of "
                "itself, not of the new weights."),
        Mistake(lambda e, p, d: d * e + p,
                "the new weights enter with weight (1 - decay), not 1: otherwise the average grows "
                "without bound."),
        Mistake(lambda e, p, d: d * e + (1 - d) * e,
                "your output is ema unchanged (as if averaged with itself); the second term is "
                "(1 - decay) * param."),
        Mistake(lambda e, p, d: (e + p) / 2, "a plain mean of the two ignores the decay; use "
                "decay * ema + (1 - decay) * param."),
    ],
)


# -- 2. the warmup learning rate ---------------------------------------------------------------------

def lr_at_solution(step, lr, warmup_steps):
    """Linear warmup: lr * (step + 1) / warmup_steps for the first steps, then lr (step counts from 0)."""
    return lr * min(1.0, (step + 1) / max(1, warmup_steps))


def _lr_cases(gen):
    return [Case((0, 1e-3, 200), "step 0 of a 200-step warmup (must not be 0)", boundary=True),
            Case((99, 1e-3, 200), "step 99, halfway"),
            Case((198, 2e-4, 200), "step 198, one before the last warmup step"),
            Case((199, 2e-4, 200), "step 199, the last warmup step: lr exactly", boundary=True),
            Case((200, 2e-4, 200), "step 200, the first step after warmup", boundary=True),
            Case((5000, 1e-3, 200), "step 5000, long after warmup"),
            Case((0, 3e-4, 10), "step 0 of a 10-step warmup", boundary=True),
            Case((4, 3e-4, 10), "step 4 of a 10-step warmup"),
            Case((9, 5e-4, 10), "step 9, the last of a 10-step warmup", boundary=True),
            Case((250, 1e-3, 500), "step 250 of the shipped models' 500-step warmup"),
            Case((0, 2e-3, 1), "warmup_steps = 1: step 0 already has the full rate", boundary=True),
            Case((3, 2e-3, 1), "warmup_steps = 1, step 3")]


lr_at = Exercise(
    "lr_at",
    reference=_lr_at_lib,
    cases=_lr_cases,
    solution=lr_at_solution,
    hint="Steps count from 0. During warmup the rate grows linearly, lr * (step + 1) / warmup_steps, "
         "so the first step already moves the weights; after warmup it stays at lr.",
    output="number", broadcast_hint=None, rtol=1e-6, atol=1e-12,
    mistakes=[
        Mistake(lambda s, lr, w: lr * min(1.0, s / w),
                "off by one: at step 0 your rate is 0, so the first optimizer step does nothing; use "
                "(step + 1) / warmup_steps."),
        Mistake(lambda s, lr, w: lr * (s + 1) / w,
                "the warmup never stops: cap the factor at 1 (min(1, (step + 1) / warmup_steps))."),
        Mistake(lambda s, lr, w: lr * max(0.0, 1 - s / w) if s < w else lr,
                "your rate falls during warmup; it must rise linearly from near 0 to lr."),
    ],
)


__all__ = ["ema_update", "lr_at"]
