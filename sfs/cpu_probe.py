"""Choosing CPU training settings by measuring them: bf16 autocast or not, one thread or all.

Book ch. 6, sec. "The training loop". Which settings train fastest on a CPU depends on the CPU
(bf16 matmuls run several times faster than fp32 where there are AVX512-BF16 or AMX units, and
are emulated, slower, where there are none) and on what else the machine is doing (two threads
spin-wait on each other when another job holds a core). So instead of a rule, the loop times a
few training steps of each candidate at start-up and keeps the fastest:

    candidates = {fp32, bf16 autocast} x {1 thread, all usable CPUs}   (minus what the user set)
    rate[c]    = images per second of c, over a few steps after one warm-up step (about 1-2 s
                 for each c; a warm-up step slower than 2 s is the measurement by itself)
    choice     = the first candidate in that order (fp32 before bf16, fewer threads before more)
                 whose rate is within ``margin`` (5 %) of the best rate

The margin keeps timing noise from flipping the choice to the less plain setting. A candidate
whose step raises (bf16 autocast unsupported) gets no rate and is never chosen. The probe times
the model as built (not compiled, in the run's memory layout) at the run's batch size.

The choice and the measured rates are recorded in the run's ``config.json`` as ``cpu_settings``
(and from there in the model card). A resumed run never probes again: settings left unset take
the values recorded when the run started, so a resume stays bit-exact (bf16 and the thread count
both change the rounding). Settings the user sets (``--bf16``/``--no-bf16``, ``--threads``) are
never probed, and are honoured on resume too.
"""

from __future__ import annotations

import copy
import os
from time import perf_counter
from typing import Callable

import torch
import torch.nn as nn

from sfs import distributed
from sfs.validate import check_float, check_int, check_type

Candidate = tuple[bool, int]  # (bf16, threads)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def candidates(cpu_count: int, bf16: bool | None = None, threads: int | None = None
               ) -> list[Candidate]:
    """The settings to try, in order of preference: what the user set is fixed, the rest varies
    (bf16: False then True; threads: 1 then ``cpu_count``)."""
    bf16s = [False, True] if bf16 is None else [bf16]
    thread_counts = sorted({1, max(1, cpu_count)}) if threads is None else [threads]
    return [(b, t) for b in bf16s for t in thread_counts]


def choose(rates: dict[Candidate, float | None], margin: float = 0.05) -> Candidate:
    """The candidate to train with, from measured images/s (None: the candidate failed).

    ``rates`` lists the candidates in order of preference (as ``candidates`` makes them); the
    first whose rate is at least best / (1 + margin) wins, so ties and near-ties go to the plainer
    setting. Raises ValueError when no candidate has a rate.
    """
    check_float("margin", margin, 0)
    ok = {c: r for c, r in rates.items() if r is not None}
    if not ok:
        raise ValueError(f"no CPU setting could be measured: {sorted(rates)}")
    best = max(ok.values())
    return next(c for c, r in ok.items() if r >= best / (1 + margin))


def label(c: Candidate) -> str:
    """'fp32, 1 thread' / 'bf16, 2 threads': the candidate as config.json and cards name it."""
    return f"{'bf16' if c[0] else 'fp32'}, {c[1]} thread{'s' * (c[1] > 1)}"


def measure_rate(step: Callable[[], int], min_s: float = 0.5, max_steps: int = 3,
                 max_warmup_s: float = 2.0, clock: Callable[[], float] | None = None) -> float:
    """Images per second of ``step()`` (which trains one batch and returns its size): one
    warm-up step, then timed steps until ``min_s`` seconds or ``max_steps`` steps.

    A warm-up step that takes ``max_warmup_s`` or more gives the rate by itself: on a machine
    where, say, two threads fight over one free core, such a step can take seconds, and timing
    more of them would make the start-up long for a setting that will not be chosen.
    """
    clock = clock or perf_counter
    t0 = clock()
    n = step()  # warm-up: allocations, oneDNN kernels picked for this dtype and thread count
    warmup_s = clock() - t0
    if warmup_s >= max_warmup_s:
        return n / warmup_s
    images, t0 = 0, clock()
    for _ in range(max(1, max_steps)):
        images += step()
        elapsed = clock() - t0
        if elapsed >= min_s:
            break
    return images / max(elapsed, 1e-9)


def probe(cands: list[Candidate], rate_of: Callable[[Candidate], float]
          ) -> tuple[Candidate, dict[Candidate, float | None], dict[Candidate, str]]:
    """Measure each candidate with ``rate_of`` (images/s) and choose. Returns (choice, rates,
    errors): a candidate whose measurement raises gets rate None and its error message."""
    rates, errors = {}, {}
    for c in cands:
        try:
            rates[c] = float(rate_of(c))
        except Exception as e:  # bf16 autocast unsupported, or an op without a bf16 kernel
            rates[c], errors[c] = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return choose(rates), rates, errors


def training_step_rate(cfg, model: nn.Module, loss_fn: Callable, n_data: int,
                       device: torch.device) -> Callable[[Candidate], float]:
    """``rate_of`` for ``probe``: trains a copy of ``model`` (its own AdamW and generator) on the
    run's first batch; the model, its generator and torch's global RNG are left untouched."""
    from sfs.loop import batch_indices
    copy_ = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(copy_.parameters(), lr=cfg.lr)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    idx = batch_indices(n_data, cfg.batch_size, cfg.seed, 0)

    def rate_of(c: Candidate) -> float:
        bf16, threads = c
        torch.set_num_threads(threads)

        def step() -> int:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = loss_fn(copy_, idx, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return len(idx)
        return measure_rate(step)
    return rate_of


def settle(cfg, model: nn.Module, loss_fn: Callable, n_data: int, device: torch.device,
           saved: dict | None = None) -> None:
    """Fill in the CPU settings of ``cfg`` that are None, then apply ``cfg.threads``.

    ``cfg.bf16`` None and ``cfg.threads`` None mean "not set by the user". ``saved`` is the
    config.json of the run being resumed (None for a new run): its recorded values are used and
    nothing is probed. A new run with ``cfg.probe`` on a CPU probes the unset ones; otherwise
    bf16 defaults to False and threads to torch's current setting. Records ``cfg.cpu_settings``.
    Configs without a ``probe`` field only get bf16 filled in. Under ``torchrun`` nothing is probed.
    """
    has_probe = hasattr(cfg, "probe")  # with it come threads and cpu_settings
    if cfg.bf16 is not None:
        check_type("bf16", cfg.bf16, bool, "True, False or None")
    if has_probe:
        if cfg.threads is not None:
            check_int("threads", cfg.threads, 1)
        check_type("probe", cfg.probe, bool)
    if saved is not None:  # resuming: the settings the run started with, never a new probe
        if cfg.bf16 is None:
            cfg.bf16 = bool(saved.get("bf16", False))
        if has_probe:
            if cfg.threads is None:
                cfg.threads = saved.get("threads")
            cfg.cpu_settings = saved.get("cpu_settings")
    elif (has_probe and cfg.probe and device.type == "cpu" and (cfg.bf16 is None or cfg.threads is None)
          and distributed.world_size() == 1):  # under torchrun the ranks could choose differently
        cands = candidates(usable_cpus(), cfg.bf16, cfg.threads)
        before = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG
            try:
                choice, rates, errors = probe(cands, training_step_rate(cfg, model, loss_fn,
                                                                          n_data, device))
            finally:
                torch.set_num_threads(before)
        cfg.bf16, cfg.threads = choice
        cfg.cpu_settings = {"bf16": choice[0], "threads": choice[1],
                            "probe_img_s": {label(c): None if r is None else round(r, 1)
                                            for c, r in rates.items()},
                            "probe_errors": {label(c): e for c, e in errors.items()}}
    if cfg.bf16 is None:
        cfg.bf16 = False
    if has_probe and cfg.threads is not None:
        torch.set_num_threads(cfg.threads)


def add_args(group) -> None:
    """The speed options every training command shares (``train``, ``train-autoencoder``,
    ``train-text2image``): ``--bf16/--no-bf16``, ``--threads`` and ``--no-probe``. On the command
    line bf16 and threads default to None, so a CPU run probes them; the library's configs default
    to no probe (``probe=False``), so a call from Python trains as told."""
    import argparse
    from sfs.validate import positive_int
    group.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                       help="bfloat16 autocast (default: off, or on a CPU what the probe measures faster)")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads (torch.set_num_threads); default: on a CPU the faster of 1 and "
                            "all cores, as the probe measures")
    group.set_defaults(probe=True)  # (SUPPRESS below: no "(default: True)" under --no-probe)
    group.add_argument("--no-probe", dest="probe", action="store_false", default=argparse.SUPPRESS,
                       help="on a CPU, do not time a few steps of fp32/bf16 and 1/all threads at "
                            "start-up to choose --bf16 and --threads; leave them at fp32 and torch's default")
