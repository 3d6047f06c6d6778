"""The autoencoder whose latent space the tiny Stable Diffusion works in.

Book ch. 10, sec. "The autoencoder". A convolutional KL-regularised autoencoder in the style of
Rombach et al. 2022 (their "KL-f4"), small enough to train on a CPU:

    x (B, 3, 48, 48) -> encoder -> mean, log-variance (B, 4, 12, 12) each
    z = mean + exp(logvar / 2) * eps                     (the reparameterisation, book eq. (10.2))
    x_hat = decoder(z) (B, 3, 48, 48)
    loss = |x - x_hat| (mean over pixels) + beta * KL(q(z|x) || N(0, I)) / (3 * 48 * 48)   (10.3)

The KL of a diagonal Gaussian against N(0, I) is book eq. (10.1). No perceptual (LPIPS) or
adversarial loss: their pretrained weights cannot be had offline. The latent scale factor
(1 / std of the latents over the training set; 0.18215 for Stable Diffusion's autoencoder) is
measured after training, stored in the model card and applied in one place: ``encode`` returns
scaled latents and ``decode`` takes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sfs.unet import Downsample, Upsample, group_norm


@dataclass
class AutoencoderConfig:
    """Architecture of the autoencoder. The defaults: 48x48x3 -> 12x12x4 (factor 4, 4 channels)."""

    in_channels: int = 3  # RGB
    image_size: int = 48  # must be divisible by 2 ** (len(channel_mults) - 1)
    latent_channels: int = 4  # channels of z
    base_channels: int = 16  # channels at full resolution
    channel_mults: tuple[int, ...] = (1, 2, 4)  # per resolution: 48, 24, 12 (16, 32, 64 channels)
    num_res_blocks: int = 1  # residual blocks per resolution
    norm_groups: int = 8  # GroupNorm groups
    scale_factor: float = 1.0  # 1 / std of the latents, measured after training (``measure_scale``)

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        for name in ("in_channels", "image_size", "latent_channels", "base_channels",
                     "num_res_blocks", "norm_groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not self.channel_mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                         for m in self.channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of ints >= 1, "
                             f"got {self.channel_mults!r}")
        if self.image_size % 2 ** (len(self.channel_mults) - 1):
            raise ValueError(f"image_size={self.image_size} cannot be halved "
                             f"{len(self.channel_mults) - 1} times (channel_mults={self.channel_mults})")
        if not (isinstance(self.scale_factor, (int, float)) and 0 < self.scale_factor < float("inf")):
            raise ValueError(f"scale_factor must be a finite number > 0, got {self.scale_factor!r}")

    @property
    def latent_size(self) -> int:
        """Side of z: image_size / 2 ** (levels - 1)."""
        return self.image_size // 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        d = asdict(self)
        d["channel_mults"] = list(self.channel_mults)
        return d


class Block(nn.Module):
    """Residual block without a time embedding: x + conv(SiLU(GN(conv(SiLU(GN(x)))))), (B, C_in, H, W)
    -> (B, C_out, H, W). The residual block of book ch. 5 with the embedding taken out."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_ch, groups), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2, self.conv2 = group_norm(out_ch, groups), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def kl_diagonal_gaussian(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, summed over the latent dimensions.

    (B, C, H, W), (B, C, H, W) -> (B,). Book eq. (10.1): 1/2 sum(mean^2 + var - 1 - log var).
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class Autoencoder(nn.Module):
    """x (B, 3, H, W) in [-1, 1] <-> z (B, latent_channels, H/f, W/f), f = 2 ** (levels - 1).

    ``encode(x)`` returns scaled latents ``scale_factor * z`` (the mean, or a sample with
    ``sample=True``); ``decode(z)`` takes scaled latents. ``forward(x)`` returns
    (x_hat, mean, logvar) for training (unscaled). Book ch. 10, sec. "The autoencoder".
    """

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, AutoencoderConfig):
            raise TypeError(f"config must be an AutoencoderConfig, got {type(config).__name__}")
        self.config = cfg = config or AutoencoderConfig()
        g, chs = cfg.norm_groups, [m * cfg.base_channels for m in cfg.channel_mults]
        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)]
        ch = chs[0]
        for level, out_ch in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                enc.append(Block(ch, out_ch, g))
                ch = out_ch
            if level < len(chs) - 1:
                enc.append(Downsample(ch))
        enc += [group_norm(ch, g), nn.SiLU(), nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)]
        for level, out_ch in reversed(list(enumerate(chs))):
            for _ in range(cfg.num_res_blocks):
                dec.append(Block(ch, out_ch, g))
                ch = out_ch
            if level > 0:
                dec.append(Upsample(ch))
        dec += [group_norm(ch, g), nn.SiLU(), nn.Conv2d(ch, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check_x(self, x: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got "
                            f"{x.dtype if torch.is_tensor(x) else type(x).__name__}")
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"x must have shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mean, logvar of q(z | x): (B, 3, H, W) -> two (B, latent_channels, h, w), unscaled."""
        self._check_x(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> x_hat, mean, logvar: the sampled reconstruction and q(z|x), unscaled.

        eps (B, latent_channels, h, w): the noise of the sample, drawn from ``generator`` if None.
        """
        mean, logvar = self.moments(x)
        if eps is None:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        eps = eps.to(mean.dtype)
        z = mean + (0.5 * logvar).exp() * eps  # book eq. (10.2)
        return self.decoder(z), mean, logvar

    def encode(self, x: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents scale_factor * z: (B, 3, H, W) -> (B, latent_channels, h, w).

        z is the mean of q(z | x), or a sample from it with ``sample=True``.
        """
        mean, logvar = self.moments(x)
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + (0.5 * logvar).exp() * eps
        return self.config.scale_factor * z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, latent_channels, h, w) -> images (B, 3, H, W), about [-1, 1]."""
        c, s = self.config.latent_channels, self.config.latent_size
        if not torch.is_tensor(z) or not z.is_floating_point():
            raise TypeError("z must be a floating-point tensor")
        if z.ndim != 4 or z.shape[1:] != (c, s, s):
            raise ValueError(f"z must have shape (B, {c}, {s}, {s}), got {tuple(z.shape)}")
        return self.decoder(z / self.config.scale_factor)


def autoencoder_loss(model: Autoencoder, x: torch.Tensor, beta: float,
                     generator: torch.Generator | None = None, eps: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict]:
    """The training loss of book eq. (10.3) on a batch x (B, 3, H, W): scalar, and its two parts.

    rec = mean |x - x_hat| (a Laplace decoder's negative log-likelihood up to constants);
    kl = mean over the batch of eq. (10.1), divided by the number of pixel values, so that beta
    weighs it per pixel value like rec. eps: the latent noise (see ``Autoencoder.forward``).
    """
    x_hat, mean, logvar = model(x, generator, eps)
    rec = (x - x_hat.float()).abs().mean()
    kl = kl_diagonal_gaussian(mean.float(), logvar.float()).mean() / x[0].numel()
    return rec + beta * kl, {"rec": rec.detach(), "kl": kl.detach()}


@torch.no_grad()
def measure_scale(model: Autoencoder, images: torch.Tensor, batch_size: int = 500,
                  generator: torch.Generator | None = None) -> float:
    """1 / std of the sampled, unscaled latents over ``images`` (N, 3, H, W): the scale factor.

    Rombach et al. 2022, sec. 4.3 and appendix G: scale so that the latents have unit variance.
    """
    model.eval()
    zs = []
    for i in range(0, len(images), batch_size):
        mean, logvar = model.moments(images[i:i + batch_size].float())
        eps = torch.randn(mean.shape, generator=generator)
        zs.append(mean + (0.5 * logvar).exp() * eps)
    return float(1.0 / torch.cat(zs).float().std())
