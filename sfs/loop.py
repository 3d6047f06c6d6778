"""The plumbing of every training loop in sfs: batches, optimizer, EMA, logging, checkpoints, resume.

Book ch. 6, sec. "The training loop" and sec. "Checkpoints and resuming". What is trained (a
diffusion U-Net in ``sfs.train``, the autoencoder in ``sfs.train_autoencoder``) differs only in
its loss; everything else is here, once:

    for step in range(start, cfg.steps):
        idx   <- batch_indices(n, batch_size, seed, step)   (a function of (seed, step) alone)
        loss  <- loss_fn(forward, idx, generator)           (the caller's loss on that batch)
        AdamW step with linear warmup (then constant or cosine decay) and gradient clipping, then the EMA of the weights
        every log_every steps: loss.jsonl and the progress bar; every ckpt_every: a training state

Everything random is drawn from ``generator`` (and torch's global RNG for dropout), whose states go
into the checkpoint, so a run that is killed and resumed ends with the same weights as one that
never stopped. Under ``torchrun`` the same loop trains data-parallel (``sfs.distributed`` states
the rules: the global batch and its noise are the same for any number of ranks; rank 0 writes).

On a CPU, ``sfs.cpu_probe.settle`` first chooses bf16 autocast and the thread count, where the
config leaves them to it, by timing a few steps of each (and a resumed run keeps its choice).

``cfg`` is any dataclass with the fields of ``LOOP_FIELDS`` and a ``to_dict()``; the run folder
``cfg.out`` holds ``config.json``, ``loss.jsonl`` (one line per step) and the last two states.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from sfs import cpu_probe, distributed
from sfs.checkpoints import (latest_training_state, load_training_state, save_training_state,
                             write_json)

# The fields a training config needs for this loop (see sfs.train.TrainConfig for their meaning).
LOOP_FIELDS = ("steps", "minutes", "batch_size", "lr", "warmup_steps", "lr_decay", "weight_decay", "grad_clip",
               "ema_decay", "seed", "bf16", "compile", "out", "ckpt_every", "sample_every",
               "log_every")
# Settings a resumed run may change: where and how fast it runs, and what it writes. Any other
# change (model, data, lr, seed, ...) would make the result differ from an uninterrupted run;
# another device or precision changes it only by floating-point rounding.
RESUMABLE_CHANGES = {"steps", "minutes", "data_dir", "device", "bf16", "channels_last", "compile",
                     "threads", "out", "ckpt_every", "sample_every", "sample_n", "sample_steps",
                     "guidance_scale", "log_every", "export", "models_dir", "command", "probe",
                     "cpu_settings"}


LR_DECAYS = ("constant", "cosine")
# Fields added to LOOP_FIELDS after runs were saved, with the value those runs trained with, so
# that an older run folder still resumes.
ADDED_FIELDS = {"lr_decay": "constant"}


def check_lr_decay(decay: str, steps: int | None, warmup_steps: int) -> None:
    """ValueError unless ``decay`` is one of LR_DECAYS and a cosine decay has steps after its warmup."""
    if decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {decay!r}")
    if decay == "cosine" and (steps is None or steps <= warmup_steps):
        raise ValueError(f"lr_decay='cosine' needs steps > warmup_steps ({warmup_steps}), got steps={steps!r}")


def lr_at(step: int, lr: float, warmup_steps: int, decay: str = "constant",
          steps: int | None = None) -> float:
    """The learning rate of step ``step`` (counted from 0). Book ch. 6, sec. "The recipe".

    Linear warmup from 0 to ``lr`` over ``warmup_steps``; then constant (``decay="constant"``) or,
    with ``decay="cosine"``, lr * (1 + cos(pi * s)) / 2 where s = (step - warmup_steps) /
    (steps - warmup_steps) runs from 0 after the warmup to 1 at ``steps``, the run's last step
    (Loshchilov & Hutter 2017, without restarts): the rate anneals to 0 as the run ends.
    """
    check_lr_decay(decay, steps, warmup_steps)
    rate = lr * min(1.0, (step + 1) / max(1, warmup_steps))
    if decay == "cosine" and step >= warmup_steps:
        s = min(1.0, (step - warmup_steps) / (steps - warmup_steps))
        rate = lr * 0.5 * (1.0 + math.cos(math.pi * s))
    return rate


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model with d = min(decay, (1 + step) / (10 + step)).

    The warm-up of d keeps early, random weights from lingering. Book ch. 6, sec. "EMA of the weights".
    """
    d = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1.0 - d)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def batch_indices(n: int, batch_size: int, seed: int, step: int,
                  cache: dict | None = None) -> torch.Tensor:
    """Indices (batch_size,) of the batch for ``step``: a slice of a permutation of range(n) seeded
    by (seed, epoch). A function of (seed, step) alone, so a resumed run sees the same batches.

    Book ch. 6, sec. "Checkpoints and resuming". The last incomplete batch of an epoch is dropped.
    """
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} is larger than the data set ({n} images)")
    epoch, i = divmod(step, per_epoch)
    if cache is None or cache.get("epoch") != epoch:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        if cache is None:
            return perm[i * batch_size:(i + 1) * batch_size]
        cache.update(epoch=epoch, perm=perm)
    return cache["perm"][i * batch_size:(i + 1) * batch_size]


def resolve_device(name: str) -> torch.device:
    """"auto": cuda if available, else cpu; otherwise the named device. Under torchrun, "auto"
    and "cuda" mean this rank's GPU, cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def machine_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' or the CPU model with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """The repository's HEAD commit, with '-dirty' when sfs/ has uncommitted changes.

    Where the code runs without its .git (a copy on a GPU machine), $SFS_GIT_COMMIT, set by
    whoever copied it, is used; else "unknown".
    """
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sfs"], cwd=repo,
                               capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SFS_GIT_COMMIT", "unknown")


def read_log(log_path: str | Path, upto: int | None = None) -> list[dict]:
    """The rows of a ``loss.jsonl`` (up to step ``upto``). A torn last line, left by a crash or a
    full disk in the middle of a write, is dropped; a damaged line elsewhere is an error."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return []
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a log row")
        except ValueError:
            if i == len(lines) - 1:
                break  # torn last line
            raise ValueError(f"{log_path}: line {i + 1} is damaged: {line[:80]!r}") from None
        rows.append(row)
    return [r for r in rows if upto is None or r["step"] <= upto]


def _remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files of writes that a kill interrupted (``atomic_write`` names them .X.tmp)."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def run(cfg, model: nn.Module, loss_fn: Callable, n_data: int, device: torch.device,
        generator: torch.Generator, desc: str = "train", progress: bool = True,
        on_step: Callable[[int], None] | None = None,
        on_sample: Callable[[int, nn.Module], None] | None = None) -> tuple[nn.Module, int, float]:
    """Train ``model`` (already on ``device``) for ``cfg.steps``, resuming from ``cfg.out``.

    loss_fn(forward, idx, generator) -> (loss, extras): the scalar loss of the batch at indices
    idx (batch_size,) and a dict of scalar tensors to log beside it (or None); ``forward`` is the
    model (compiled with ``cfg.compile``) to call. on_sample(step, ema) runs every
    ``cfg.sample_every`` steps; on_step(step) after every step. Returns (ema in eval mode, steps
    done, wall time in seconds). Book ch. 6, sec. "The training loop".
    """
    if cfg.batch_size % distributed.world_size():
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the number of ranks "
                         f"({distributed.world_size()}): each rank takes an equal share of it")
    check_lr_decay(cfg.lr_decay, cfg.steps, cfg.warmup_steps)
    main = distributed.is_main()  # rank 0 (or the only process) writes; the other ranks only read
    run_dir = Path(cfg.out)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(run_dir)
    log_path = run_dir / "loss.jsonl"
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    forward = distributed.wrap(model, device)  # DDP under torchrun: gradients averaged over ranks
    forward = torch.compile(forward) if cfg.compile else forward

    step, wall_time = 0, 0.0
    state = latest_training_state(run_dir)
    saved = json.loads((run_dir / "config.json").read_text()) if state is not None else None
    cpu_probe.settle(cfg, model, loss_fn, n_data, device, saved)  # bf16 and threads, see there
    if state is not None:
        now = cfg.to_dict()
        # a cosine decay's rate at each step depends on the run's length, so its steps are fixed
        free = RESUMABLE_CHANGES - ({"steps"} if cfg.lr_decay != "constant" else set())
        differ = sorted(k for k in now if k not in free and saved.get(k, ADDED_FIELDS.get(k)) != now[k])
        if differ:
            changes = ", ".join(f"{k}={saved.get(k, ADDED_FIELDS.get(k))!r} there, {now[k]!r} now" for k in differ)
            raise ValueError(f"{run_dir} holds a run with other settings, so it cannot be resumed "
                             f"with these: {changes}. Use another --out, or the same settings.")
        sidecar = load_training_state(state, model, ema, optimizer, generator)
        step, wall_time = sidecar["step"], sidecar.get("wall_time_s", 0.0)
        if main:
            kept = read_log(log_path, upto=step)  # drop lines logged after the checkpoint
            log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    elif main:
        write_json(run_dir / "config.json", cfg.to_dict())
        log_path.write_text("")
    distributed.barrier()  # every rank has read the state before rank 0 writes the next one

    from tqdm.auto import tqdm
    progress = progress and main
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, dynamic_ncols=True, desc=desc)
    if progress:
        n_params = sum(p.numel() for p in model.parameters())
        bar.write(f"{n_params:,} parameters on {machine_name(device)}; "
                  f"{f'resuming at step {step}' if step else 'starting'} in {run_dir}")
        if getattr(cfg, "cpu_settings", None):
            bar.write(f"CPU settings: {cpu_probe.label((cfg.bf16, cfg.threads))}, chosen by "
                      f"timing images/s: {cfg.cpu_settings['probe_img_s']}")
    pending: list[tuple[int, float, dict]] = []  # (step, lr, tensors) kept until a flush
    perm_cache: dict = {}
    t_start, t_flush, imgs_since = time.perf_counter(), time.perf_counter(), 0
    model.train()

    def flush() -> None:
        nonlocal t_flush, imgs_since
        if not pending:
            return
        keys = list(pending[0][2])
        values = torch.stack([torch.stack([v[k].float() for k in keys]) for _, _, v in pending])
        values = distributed.mean_over_ranks(values).tolist()  # the global batch's mean
        if not main:
            pending.clear()
            return
        with open(log_path, "a") as f:  # one sync for the whole flush
            for (s, lr, _), row in zip(pending, values):
                f.write(json.dumps({"step": s, **{k: round(x, 6) for k, x in zip(keys, row)},
                                    "lr": lr}) + "\n")
        rate = imgs_since / max(time.perf_counter() - t_flush, 1e-9)
        bar.set_postfix(loss=f"{sum(r[0] for r in values) / len(values):.4f}", img_s=f"{rate:.0f}")
        bar.update(pending[-1][0] - bar.n)
        pending.clear()
        t_flush, imgs_since = time.perf_counter(), 0

    def checkpoint() -> None:
        flush()
        if main:
            save_training_state(run_dir, step, model, ema, optimizer, generator,
                                extra={"wall_time_s": wall_time + time.perf_counter() - t_start})

    deadline = None if cfg.minutes is None else t_start + 60 * cfg.minutes
    while step < cfg.steps:
        idx = batch_indices(n_data, cfg.batch_size, cfg.seed, step, perm_cache)
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.lr_decay, cfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        distributed.seed_dropout(cfg.seed, step)  # under torchrun only: see sfs.distributed
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, extras = loss_fn(forward, idx, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        ema_update(ema, model, cfg.ema_decay, step)  # under torchrun: the same weights on every rank
        step += 1
        imgs_since += len(idx)
        pending.append((step, lr, {"loss": loss.detach(), **(extras or {})}))

        if step % cfg.log_every == 0:
            flush()
        if main and on_sample is not None and cfg.sample_every and step % cfg.sample_every == 0:
            on_sample(step, ema)
        out_of_time = deadline is not None and distributed.any_rank(time.perf_counter() > deadline)
        if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
            checkpoint()
        if on_step is not None:
            on_step(step)
        if out_of_time:
            break
    flush()
    bar.close()
    distributed.barrier()  # rank 0's last training state is written
    wall_time += time.perf_counter() - t_start
    return ema, step, wall_time
