"""Data-parallel training on several GPUs (or CPU processes) with PyTorch's own engine.

    torchrun --nproc_per_node N -m sfs train ...

torchrun starts N copies of the program and tells each its ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; ``init_from_env`` joins them into one process group (NCCL for CUDA tensors, gloo
for CPU ones). Every rank holds the whole model; ``wrap`` hands it to
``torch.nn.parallel.DistributedDataParallel``, which averages the gradients of all ranks inside
``backward()``, so every rank takes the same optimizer step and the weights stay identical.

The rules that make N ranks train the same model as one process (``sfs.loop`` follows them):

- The global batch is ``cfg.batch_size`` for every N: the batch of step s is the same
  ``batch_indices(n, batch_size, seed, s)`` on every rank, so the data order does not depend on N.
- Every rank draws the random numbers of the whole global batch (t, eps, label dropout) from the
  same generator, seeded with ``cfg.seed`` on every rank (not per rank), and keeps its rows with
  ``shard`` just before the network. One rank at batch 2B
  and two ranks at batch B each then see exactly the same images and noise, and the results agree
  up to the order of the floating-point sum of the gradients. The generators of all ranks stay
  in the same state, so rank 0's copy in the training state is everyone's.
- Dropout, the one draw made inside the network on a rank's own rows, comes from torch's global
  RNG, which ``seed_dropout`` reseeds at every step from (seed, step, rank) when N > 1: the result
  for a given N is deterministic and a resumed run draws what an uninterrupted one would.
- Only rank 0 writes (training states, loss log, sample grids, exports); the others wait at a
  ``barrier`` where they must not run ahead. The logged loss is the mean over the ranks (the
  global batch's loss), and a time limit (``cfg.minutes``) stops every rank at the same step. The training state holds the unwrapped model, so a
  run resumes from any checkpoint with any number of ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn


def init_from_env() -> bool:
    """Join the process group that torchrun describes (``WORLD_SIZE`` > 1); otherwise nothing.
    True if it joined one now (and the caller should ``close`` it).

    CUDA tensors go through NCCL and CPU tensors through gloo; each rank uses GPU ``LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank < torch.cuda.device_count():  # else: more ranks than GPUs, for --device cpu
            torch.cuda.set_device(local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    return True


def rank() -> int:
    """This process's rank: 0 .. world_size() - 1 (0 when not distributed)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing when not distributed)."""
    if dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` as DistributedDataParallel when distributed (its gradients are then averaged over
    the ranks in ``backward()``), else ``model`` itself. The optimizer, EMA and checkpoints keep
    using the unwrapped ``model``."""
    if not dist.is_initialized():
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
    """This rank's rows of global-batch tensors (B, ...): rows [r B / N, (r + 1) B / N).

    One tensor in, one out; several in, a tuple out. On one process it returns them unchanged.
    """
    r, n = rank(), world_size()
    out = tuple(x if n == 1 or x is None else x.chunk(n)[r] for x in tensors)
    return out[0] if len(out) == 1 else out


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the ranks (for the loss log: the global batch's loss)."""
    if not dist.is_initialized():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on some rank (a time limit all ranks obey)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)])  # a CPU tensor: gloo carries it
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def seed_dropout(seed: int, step: int) -> None:
    """When distributed, seed torch's global RNG (dropout) from (seed, step, rank): the ranks draw
    different masks, and step s draws the same ones however the run got there. On one process
    nothing changes: its RNG state travels in the training state as before."""
    if dist.is_initialized():
        torch.manual_seed((seed * 1_000_003 + step) * 1024 + rank())


def close() -> None:
    """Wait for every rank (rank 0 may still be exporting), then leave the process group, if any."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
