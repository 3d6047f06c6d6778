"""The tiny Stable Diffusion: a text encoder and a U-Net that cross-attends to it, in latent space.

Book ch. 12, "A tiny Stable Diffusion". The model keeps the contract of every sfs model,
``eps_hat = model(z_t, t, ids)``, where ``ids`` (B, L) are the tokenised prompts; the text
encoder runs inside, so every sampler and the guidance wrapper work unchanged. Its "no prompt" is
the empty prompt ``null_cond`` (for classifier-free guidance, Book eqs. (8.2) and (11.5)). ``generate`` is the
whole pipeline:

    prompt -> Tokenizer -> ids -> [TextEncoder -> U-Net] eps_hat, with CFG -> DPM-Solver++(2M)
           -> latents z_0 (B, 4, 12, 12) -> Autoencoder.decode -> images (B, 3, 48, 48)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from sfs.text import TextEncoder, TextEncoderConfig, Tokenizer
from sfs.unet import UNet, UNetConfig

T = 1000  # the cosine schedule's number of steps: training (sfs.train_text2image) and generate() share it


@dataclass
class TextToImageConfig:
    """The text encoder's and the U-Net's configs, and the tokenizer's vocabulary."""

    unet: UNetConfig = field(default_factory=lambda: UNetConfig(
        in_channels=4, image_size=12, base_channels=64, channel_mults=(1, 2), num_res_blocks=2,
        attn_resolutions=(6,), cross_attn_resolutions=(12, 6), context_dim=64, dropout=0.0))
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    vocab: tuple[str, ...] = ()  # the tokenizer's words (specials first); () means canvas_vocabulary()

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = UNetConfig(**self.unet)
        if isinstance(self.text, dict):
            self.text = TextEncoderConfig(**self.text)
        if not isinstance(self.unet, UNetConfig) or not isinstance(self.text, TextEncoderConfig):
            raise TypeError("unet must be a UNetConfig and text a TextEncoderConfig")
        if not self.vocab:
            from sfs.text import canvas_vocabulary
            self.vocab = canvas_vocabulary()
        self.vocab = tuple(self.vocab)
        self.text.vocab_size = len(self.vocab)
        if self.unet.context_dim != self.text.dim:
            raise ValueError(f"unet.context_dim ({self.unet.context_dim}) must equal text.dim "
                             f"({self.text.dim}): the U-Net reads the encoder's states")

    @property
    def in_channels(self) -> int:  # what samplers read to check x_T
        return self.unet.in_channels

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    def to_dict(self) -> dict:
        """JSON-able dict."""
        return {"unet": self.unet.to_dict(), "text": self.text.to_dict(), "vocab": list(self.vocab)}


class TextToImage(nn.Module):
    """eps_hat = model(z_t, t, ids): (B, 4, h, w), (B,) int64, (B, L) int64 -> (B, 4, h, w).

    ``ids=None`` means the empty prompt for every image.
    """

    def __init__(self, config: TextToImageConfig | None = None):
        super().__init__()
        self.config = config or TextToImageConfig()
        self.tokenizer = Tokenizer(self.config.vocab, self.config.text.max_length)
        self.text_encoder = TextEncoder(self.config.text)
        self.unet = UNet(self.config.unet)

    def null_cond(self, batch: int, device=None) -> torch.Tensor:
        """The empty prompt's ids, (batch, L): the "no prompt" of classifier-free guidance, Book eq. (11.5)."""
        return self.tokenizer.encode([""] * batch).to(device)

    def check_cond(self, cond: torch.Tensor | None, batch: int) -> None:
        """Raise unless cond is None or prompt ids (batch, L) from this model's tokenizer."""
        if cond is not None:
            self.text_encoder.check_ids(cond, batch)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        if cond is None:
            cond = self.null_cond(x_t.shape[0], x_t.device)
        return self.unet(x_t, t, self.text_encoder(cond))

    def cross_attention_layers(self) -> list[nn.Module]:
        """The U-Net's cross-attention blocks, in forward order (for attention maps, book ch. 11,
        sec. "Where the words look")."""
        from sfs.unet import CrossAttention
        return [m for m in self.unet.modules() if isinstance(m, CrossAttention)]


@torch.no_grad()
def generate(prompts: str | list[str], model: TextToImage, autoencoder: nn.Module,
             guidance_scale: float = 3.0, steps: int = 20, seed: int = 0, n_per_prompt: int = 1,
             callback=None) -> torch.Tensor:
    """Draw images for prompts: (len(prompts) * n_per_prompt, 3, H, W) in [-1, 1].

    Book eqs. (12.1)-(12.4), the pipeline of Rombach et al. 2022, fig. 3: tokens and the text
    encoder (12.1), the guided model ``CFGModel`` on prompts (12.2), DPM-Solver++(2M) from Gaussian
    latents (12.3), then the autoencoder's decoder (12.4). callback(dict(i=i, t=t, x_t=z_t,
    x0_hat=z0_hat)) once per model evaluation, as the samplers', with latents (B, 4, h, w) (book
    ch. 11, sec. "Where the words look", collects attention maps with it).
    """
    from sfs.guidance import CFGModel
    from sfs.samplers import dpm_solver_2m_sample
    from sfs.schedules import cosine_schedule

    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, int) or n_per_prompt < 1:
        raise ValueError(f"n_per_prompt must be an int >= 1, got {n_per_prompt!r}")
    ids = model.tokenizer.encode(list(prompts)).repeat_interleave(n_per_prompt, 0)  # (B, L)
    c = model.config.unet
    g = torch.Generator().manual_seed(seed)
    z_T = torch.randn(len(ids), c.in_channels, c.image_size, c.image_size, generator=g)
    guided = CFGModel(model, guidance_scale)
    z0 = dpm_solver_2m_sample(guided, z_T, cosine_schedule(T), steps=steps, cond=ids,
                              callback=callback)
    return autoencoder.decode(z0).clamp(-1, 1)
