"""Sinusoidal timestep embedding: how a network is told which noise level it is looking at.

Book chapter on the denoising network. The same embedding serves the toy MLP (``sfs.mlp``) and the
U-Net. It is the Transformer's positional encoding (Vaswani et al. 2017, sec. 3.5) applied to t, in
the variant of Nichol & Dhariwal's improved-diffusion and guided-diffusion code (cosines first,
w_k = P^(-k/h)). DDPM's own code (Ho et al. 2020, ``get_timestep_embedding``) puts the sines first
and uses w_k = P^(-k/(h-1)), so its lowest frequency is exactly 1/P. Book eq. (5.1).
"""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed timesteps t (B,) as (B, dim) features [cos(t w_k), sin(t w_k)], k = 0..dim/2 - 1.

    Frequencies w_k = max_period^(-k / (dim/2)) run geometrically from 1 down to
    max_period^(-(h-1)/h) with h = dim/2, just above 1 / max_period (1.78e-4 for dim 32), so nearby
    t get similar embeddings and every t in [0, max_period) gets a distinct one. Book eq. (5.1).
    t may be integer or float (continuous time). An odd ``dim`` gets one zero column at the end.
    Returns float32 (B, dim) on t's device.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    if not max_period > 0:
        raise ValueError(f"max_period must be > 0, got {max_period!r}")
    if not isinstance(t, torch.Tensor) or t.ndim != 1:
        raise ValueError(f"t must be a tensor of shape (B,), got {getattr(t, 'shape', t)!r}")
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))  # (half,)
    args = t.float()[:, None] * freqs[None, :]                   # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)   # (B, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)  # (B, dim)
    return emb
