"""A small MLP denoiser for 2-D toy data, and a helper that trains it in seconds on a CPU.

Book chapters 1-4 use it before the U-Net: same contract, ``model(x_t, t, cond=None) -> eps_hat``,
so every sampler and loss works with either. The time step enters through the sinusoidal embedding
of ``sfs.embeddings``; an optional class label ``cond`` (B,) int64 enters through a learned
embedding, with one extra "no label" entry used when cond is None (for classifier-free guidance).
"""

from __future__ import annotations

import torch
from torch import nn

from sfs.embeddings import timestep_embedding
from sfs.forward import q_sample
from sfs.losses import simple_loss
from sfs.schedules import Schedule


class MLPDenoiser(nn.Module):
    """eps_hat = MLP([x_t, emb(t)]) with residual SiLU-Linear blocks; x_t (B, dim), t (B,) -> (B, dim)."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 16,
                 num_classes: int | None = None):
        super().__init__()
        self.time_dim = time_dim
        self.num_classes = num_classes
        self.inp = nn.Linear(dim + time_dim, hidden)
        # Index num_classes is the "no label" class used when cond is None.
        self.label = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.out[-1].weight)  # start by predicting eps_hat = 0
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: (B, dim); t: (B,) int64 code timesteps; cond: (B,) int64 labels or None -> eps_hat (B, dim)."""
        emb = timestep_embedding(t, self.time_dim).to(x_t.dtype)  # (B, time_dim)
        h = self.inp(torch.cat([x_t, emb], dim=1))                  # (B, hidden)
        if self.label is not None:
            if cond is None:
                cond = torch.full_like(t, self.num_classes, dtype=torch.long)
            h = h + self.label(cond)
        elif cond is not None:
            raise ValueError("cond was given but the model was built with num_classes=None")
        for block in self.blocks:
            h = h + block(h)                                        # residual: (B, hidden)
        return self.out(h)


def train_toy(model: nn.Module, data: torch.Tensor, schedule: Schedule, steps: int = 3000,
              batch_size: int = 256, lr: float = 2e-3, labels: torch.Tensor | None = None,
              p_uncond: float = 0.0, generator: torch.Generator | None = None) -> list[float]:
    """Train ``model`` on points data (N, dim) with the simple loss; return the loss of every step.

    Book eq. (3.7); Ho et al. 2020, alg. 1: draw x0 from the data, t uniform, eps ~ N(0, I), take a
    gradient step on |eps - eps_hat(x_t, t)|^2. With ``labels`` (N,), the model sees cond = label,
    dropped to None for the whole batch with probability ``p_uncond`` (Ho & Salimans 2021). Adam with a cosine
    learning-rate decay; reproducible for a given CPU ``generator`` and initial model, on any device.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if data.ndim != 2:
        raise ValueError(f"data must have shape (N, dim), got {tuple(data.shape)}")
    if labels is not None and labels.shape != (data.shape[0],):
        raise ValueError(f"labels must have shape (N,)=({data.shape[0]},), got {tuple(labels.shape)}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    device = next(model.parameters()).device
    schedule = schedule.to(device)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(data.shape[0], (batch_size,), generator=generator)
        x0 = data[idx].to(device)                                     # (B, dim)
        t = torch.randint(schedule.T, (batch_size,), generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        cond = None
        if labels is not None and torch.rand((), generator=generator) >= p_uncond:
            cond = labels[idx].to(device)
        loss = simple_loss(model(q_sample(schedule, x0, t, eps), t, cond), x0, eps, t, schedule)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses
